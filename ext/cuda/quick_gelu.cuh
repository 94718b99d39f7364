// QuickGELU (x * sigmoid(1.702 x), CLIP's and Qwen2-VL's vision activation) and its backward on the GPU.
#pragma once

#include "swiglu.cuh"

namespace mixk {

template <typename T>
__global__ void quick_gelu_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t count) {
  constexpr int N = Pack<T>::N;
  const int64_t packs = count / N, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t k = first; k < packs; k += stride) {  // the caller checked 16-byte alignment
    Pack<T> v = load_pack(x + k * N), o;
#pragma unroll
    for (int e = 0; e < N; ++e) o.v[e] = from_f<T>(to_f(v.v[e]) * sigmoid(1.702f * to_f(v.v[e])));
    store_pack(out + k * N, o);
  }
  for (int64_t k = packs * N + first; k < count; k += stride) out[k] = from_f<T>(to_f(x[k]) * sigmoid(1.702f * to_f(x[k])));
}

template <typename T>
__global__ void quick_gelu_scalar_kernel(const T* __restrict__ x, T* __restrict__ out, int64_t count) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[k] = from_f<T>(to_f(x[k]) * sigmoid(1.702f * to_f(x[k])));
}

// dx = dout (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x).
template <typename T>
__global__ void quick_gelu_bwd_kernel(const T* __restrict__ x, const T* __restrict__ dout, T* __restrict__ dx,
                                      int64_t count) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_f(x[k]), s = sigmoid(1.702f * v);
    dx[k] = from_f<T>(to_f(dout[k]) * (s + 1.702f * v * s * (1.0f - s)));
  }
}

template <typename T>
void quick_gelu(const T* x, T* out, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  if (aligned16(x) && aligned16(out)) {
    quick_gelu_kernel<T><<<grid_for(count / Pack<T>::N + 1, 256), 256, 0, stream>>>(x, out, count);
  } else {
    quick_gelu_scalar_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(x, out, count);
  }
}

template <typename T>
void quick_gelu_bwd(const T* x, const T* dout, T* dx, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  quick_gelu_bwd_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(x, dout, dx, count);
}

}  // namespace mixk
