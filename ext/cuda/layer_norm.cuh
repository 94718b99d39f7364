// LayerNorm and its backward on the GPU: one block per row, the row in registers when it packs into
// 16-byte loads (mean, then the variance of x - mean, then the output, from one read of HBM).
#pragma once

#include "rms_norm.cuh"

namespace mixk {

template <typename T, bool kVec>
__global__ void layer_norm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                                      T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                                      int64_t n, float eps) {
  __shared__ float scratch[32];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  const T* xr = x + offset;
  T* yr = y + offset;
  const float inv_n = 1.0f / static_cast<float>(n);
  float sum = 0.f, var = 0.f, mean, inv;
  if constexpr (kVec) {
    constexpr int N = Pack<T>::N;
    const int64_t packs = n / N;
    Pack<T> cache[kRowPacks];
#pragma unroll
    for (int k = 0; k < kRowPacks; ++k) {
      int64_t p = static_cast<int64_t>(k) * blockDim.x + threadIdx.x;
      if (p < packs) {
        cache[k] = load_pack(xr + p * N);
#pragma unroll
        for (int j = 0; j < N; ++j) sum += to_f(cache[k].v[j]);
      }
    }
    mean = block_sum(sum, scratch) * inv_n;
#pragma unroll
    for (int k = 0; k < kRowPacks; ++k) {
      int64_t p = static_cast<int64_t>(k) * blockDim.x + threadIdx.x;
      if (p < packs) {
#pragma unroll
        for (int j = 0; j < N; ++j) var += (to_f(cache[k].v[j]) - mean) * (to_f(cache[k].v[j]) - mean);
      }
    }
    inv = rsqrtf(block_sum(var, scratch) * inv_n + eps);
#pragma unroll
    for (int k = 0; k < kRowPacks; ++k) {
      int64_t p = static_cast<int64_t>(k) * blockDim.x + threadIdx.x;
      if (p < packs) {
        Pack<T> wp = load_pack(w + p * N), bp = load_pack(b + p * N), out;
#pragma unroll
        for (int j = 0; j < N; ++j)
          out.v[j] = from_f<T>((to_f(cache[k].v[j]) - mean) * inv * to_f(wp.v[j]) + to_f(bp.v[j]));
        store_pack(yr + p * N, out);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += to_f(xr[i]);
    mean = block_sum(sum, scratch) * inv_n;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) var += (to_f(xr[i]) - mean) * (to_f(xr[i]) - mean);
    inv = rsqrtf(block_sum(var, scratch) * inv_n + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      yr[i] = from_f<T>((to_f(xr[i]) - mean) * inv * to_f(w[i]) + to_f(b[i]));
  }
  if (threadIdx.x == 0) {
    mean_out[blockIdx.x] = mean;
    rstd_out[blockIdx.x] = inv;
  }
}

// dx = r (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mean) r (one block per row).
template <typename T>
__global__ void layer_norm_bwd_dx_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ mean,
                                         const float* __restrict__ rstd, const T* __restrict__ dy, T* __restrict__ dx,
                                         int64_t n) {
  __shared__ float scratch[32];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  const float mu = mean[blockIdx.x], r = rstd[blockIdx.x], inv_n = 1.0f / static_cast<float>(n);
  float sg = 0.f, sgx = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float g = to_f(dy[offset + i]) * to_f(w[i]);
    sg += g;
    sgx += g * (to_f(x[offset + i]) - mu) * r;
  }
  sg = block_sum(sg, scratch) * inv_n;
  sgx = block_sum(sgx, scratch) * inv_n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float xhat = (to_f(x[offset + i]) - mu) * r;
    dx[offset + i] = from_f<T>(r * (to_f(dy[offset + i]) * to_f(w[i]) - sg - xhat * sgx));
  }
}

template <typename T>
void layer_norm_fwd(const T* x, const T* w, const T* b, T* y, float* mean, float* rstd, int64_t rows, int64_t n,
                    float eps, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  constexpr int N = Pack<T>::N;
  bool vec = n % N == 0 && n / N <= static_cast<int64_t>(kRowPacks) * 1024 && aligned16(x) && aligned16(w) &&
             aligned16(b) && aligned16(y);
  if (vec) {
    layer_norm_fwd_kernel<T, true><<<rows, row_threads(n, N, kRowPacks), 0, stream>>>(x, w, b, y, mean, rstd, n, eps);
  } else {
    layer_norm_fwd_kernel<T, false><<<rows, row_threads(n, 1, 4), 0, stream>>>(x, w, b, y, mean, rstd, n, eps);
  }
}

// workspace: 2 n floats (zeroed here).
template <typename T>
void layer_norm_bwd(const T* x, const T* w, const float* mean, const float* rstd, const T* dy, T* dx, T* dw, T* db,
                    float* workspace, int64_t rows, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  cudaMemsetAsync(workspace, 0, 2 * n * sizeof(float), stream);
  if (rows > 0) {
    layer_norm_bwd_dx_kernel<T><<<rows, row_threads(n, 1, 4), 0, stream>>>(x, w, mean, rstd, dy, dx, n);
    dim3 grid;
    int64_t per_slice;
    column_grid(rows, n, &grid, &per_slice);
    norm_bwd_columns_kernel<T, true><<<grid, 256, 0, stream>>>(x, mean, rstd, dy, workspace, workspace + n, rows, n,
                                                                per_slice);
  }
  cast_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(workspace, dw, n);
  cast_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(workspace + n, db, n);
}

}  // namespace mixk
