// RMSNorm, residual add + RMSNorm, and their backward on the GPU: one block per row; rows whose length
// is a multiple of a 16-byte pack stay in registers between the statistics and the output (one read, one
// write of HBM per element), others take a scalar path that re-reads the row from cache.
#pragma once

#include "common.cuh"

namespace mixk {

constexpr int kRowPacks = 4;  // packs of a row each thread keeps in registers

// y = w * T(x * rstd), rstd = 1 / sqrt(mean(x^2) + eps), the statistics in float. With a residual,
// x + residual (rounded to T, as adding two T tensors gives) is normalised and stored in sum_out.
template <typename T, bool kVec>
__global__ void rms_norm_fwd_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                    const T* __restrict__ w, T* __restrict__ y, T* __restrict__ sum_out,
                                    float* __restrict__ rstd, int64_t n, float eps) {
  __shared__ float scratch[32];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  const T* xr = x + offset;
  const T* rr = residual ? residual + offset : nullptr;
  T* sr = sum_out ? sum_out + offset : nullptr;
  T* yr = y + offset;
  float ss = 0.f;
  if constexpr (kVec) {
    constexpr int N = Pack<T>::N;
    const int64_t packs = n / N;
    Pack<T> cache[kRowPacks];
#pragma unroll
    for (int k = 0; k < kRowPacks; ++k) {
      int64_t p = static_cast<int64_t>(k) * blockDim.x + threadIdx.x;
      if (p < packs) {
        cache[k] = load_pack(xr + p * N);
        if (rr) {
          Pack<T> r = load_pack(rr + p * N);
#pragma unroll
          for (int j = 0; j < N; ++j) cache[k].v[j] = from_f<T>(to_f(cache[k].v[j]) + to_f(r.v[j]));
          store_pack(sr + p * N, cache[k]);
        }
#pragma unroll
        for (int j = 0; j < N; ++j) ss += to_f(cache[k].v[j]) * to_f(cache[k].v[j]);
      }
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(n) + eps);
#pragma unroll
    for (int k = 0; k < kRowPacks; ++k) {
      int64_t p = static_cast<int64_t>(k) * blockDim.x + threadIdx.x;
      if (p < packs) {
        Pack<T> wp = load_pack(w + p * N), out;
#pragma unroll
        for (int j = 0; j < N; ++j) out.v[j] = from_f<T>(to_f(wp.v[j]) * round_to<T>(to_f(cache[k].v[j]) * inv));
        store_pack(yr + p * N, out);
      }
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = inv;
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      float v = to_f(xr[i]);
      if (rr) {
        v = round_to<T>(v + to_f(rr[i]));
        sr[i] = from_f<T>(v);
      }
      ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / static_cast<float>(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      float v = rr ? to_f(sr[i]) : to_f(xr[i]);
      yr[i] = from_f<T>(to_f(w[i]) * round_to<T>(v * inv));
    }
    if (threadIdx.x == 0) rstd[blockIdx.x] = inv;
  }
}

// dx = r g - x r^3 mean(g x), g = dy w (one block per row).
template <typename T>
__global__ void rms_norm_bwd_dx_kernel(const T* __restrict__ x, const T* __restrict__ w, const float* __restrict__ rstd,
                                       const T* __restrict__ dy, T* __restrict__ dx, int64_t n) {
  __shared__ float scratch[32];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * n;
  const float r = rstd[blockIdx.x];
  float dot = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dot += to_f(dy[offset + i]) * to_f(w[i]) * to_f(x[offset + i]);
  const float c = r * r * r * block_sum(dot, scratch) / static_cast<float>(n);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    dx[offset + i] = from_f<T>(r * to_f(dy[offset + i]) * to_f(w[i]) - c * to_f(x[offset + i]));
}

// Column sums over a slice of rows, added into float accumulators: acc[j] += sum_r dy[r, j] * f(r, j).
// kLayerNorm: f = (x - mean) * rstd, and acc2[j] += sum_r dy[r, j]; else f = x * rstd.
template <typename T, bool kLayerNorm>
__global__ void norm_bwd_columns_kernel(const T* __restrict__ x, const float* __restrict__ mean,
                                        const float* __restrict__ rstd, const T* __restrict__ dy,
                                        float* __restrict__ acc, float* __restrict__ acc2, int64_t rows, int64_t n,
                                        int64_t rows_per_slice) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t start = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t stop = start + rows_per_slice < rows ? start + rows_per_slice : rows;
  float a = 0.f, b = 0.f;
  for (int64_t r = start; r < stop; ++r) {
    float g = to_f(dy[r * n + j]), v = to_f(x[r * n + j]);
    a += g * (kLayerNorm ? (v - mean[r]) * rstd[r] : v * rstd[r]);
    if (kLayerNorm) b += g;
  }
  atomicAdd(acc + j, a);
  if (kLayerNorm) atomicAdd(acc2 + j, b);
}

template <typename T>
__global__ void cast_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    dst[i] = from_f<T>(src[i]);
}

template <typename T>
void rms_norm_fwd(const T* x, const T* residual, const T* w, T* y, T* sum_out, float* rstd, int64_t rows, int64_t n,
                  float eps, cudaStream_t stream) {
  if (rows == 0 || n == 0) return;
  constexpr int N = Pack<T>::N;
  bool vec = n % N == 0 && n / N <= static_cast<int64_t>(kRowPacks) * 1024 && aligned16(x) && aligned16(residual) &&
             aligned16(w) && aligned16(y) && aligned16(sum_out);
  if (vec) {
    rms_norm_fwd_kernel<T, true><<<rows, row_threads(n, N, kRowPacks), 0, stream>>>(x, residual, w, y, sum_out, rstd,
                                                                                      n, eps);
  } else {
    rms_norm_fwd_kernel<T, false><<<rows, row_threads(n, 1, 4), 0, stream>>>(x, residual, w, y, sum_out, rstd, n, eps);
  }
}

// Slices of rows for the column sums: enough blocks to fill the GPU, each summing at least 32 rows.
inline void column_grid(int64_t rows, int64_t n, dim3* grid, int64_t* rows_per_slice) {
  int64_t slices = rows / 32 < 1 ? 1 : (rows / 32 > 256 ? 256 : rows / 32);
  *rows_per_slice = (rows + slices - 1) / slices;
  *grid = dim3(ceil_div(n, 256), static_cast<unsigned>(ceil_div(rows, *rows_per_slice)));
}

// workspace: n floats (zeroed here).
template <typename T>
void rms_norm_bwd(const T* x, const T* w, const float* rstd, const T* dy, T* dx, T* dw, float* workspace, int64_t rows,
                  int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  cudaMemsetAsync(workspace, 0, n * sizeof(float), stream);
  if (rows > 0) {
    rms_norm_bwd_dx_kernel<T><<<rows, row_threads(n, 1, 4), 0, stream>>>(x, w, rstd, dy, dx, n);
    dim3 grid;
    int64_t per_slice;
    column_grid(rows, n, &grid, &per_slice);
    norm_bwd_columns_kernel<T, false><<<grid, 256, 0, stream>>>(x, nullptr, rstd, dy, workspace, nullptr, rows, n,
                                                                 per_slice);
  }
  cast_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(workspace, dw, n);
}

}  // namespace mixk
