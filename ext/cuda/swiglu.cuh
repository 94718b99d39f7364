// SwiGLU (silu(gate) * up) and its backward on the GPU; gate and up are rows of n with their own strides,
// so a packed (rows, 2n) gate_up tensor needs no split. Contiguous inputs go through 16-byte packs.
#pragma once

#include "common.cuh"

namespace mixk {

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + __expf(-v)); }

template <typename T>
__global__ void swiglu_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out, int64_t rows,
                              int64_t n, int64_t gate_stride, int64_t up_stride) {
  const int64_t count = rows * n;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / n, j = k % n;
    const float g = to_f(gate[r * gate_stride + j]);
    out[k] = from_f<T>(g * sigmoid(g) * to_f(up[r * up_stride + j]));
  }
}

// The same over packs, for gate, up and out with row lengths and strides that are multiples of a pack.
template <typename T>
__global__ void swiglu_pack_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                   int64_t rows, int64_t n, int64_t gate_stride, int64_t up_stride) {
  constexpr int N = Pack<T>::N;
  const int64_t per_row = n / N, count = rows * per_row;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / per_row, j = (k % per_row) * N;
    Pack<T> g = load_pack(gate + r * gate_stride + j), u = load_pack(up + r * up_stride + j), o;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      float gv = to_f(g.v[e]);
      o.v[e] = from_f<T>(gv * sigmoid(gv) * to_f(u.v[e]));
    }
    store_pack(out + r * n + j, o);
  }
}

// d gate = dout up s (1 + g (1 - s)), d up = dout g s, s = sigmoid(g); dgate/dup rows have gate/up's strides.
template <typename T>
__global__ void swiglu_bwd_kernel(const T* __restrict__ gate, const T* __restrict__ up, const T* __restrict__ dout,
                                  T* __restrict__ dgate, T* __restrict__ dup, int64_t rows, int64_t n,
                                  int64_t gate_stride, int64_t up_stride) {
  const int64_t count = rows * n;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / n, j = k % n;
    const float g = to_f(gate[r * gate_stride + j]), u = to_f(up[r * up_stride + j]), dy = to_f(dout[k]);
    const float sg = sigmoid(g);
    dgate[r * gate_stride + j] = from_f<T>(dy * u * sg * (1.0f + g * (1.0f - sg)));
    dup[r * up_stride + j] = from_f<T>(dy * g * sg);
  }
}

template <typename T>
void swiglu(const T* gate, const T* up, T* out, int64_t rows, int64_t n, int64_t gate_stride, int64_t up_stride,
            cudaStream_t stream) {
  if (rows * n == 0) return;
  constexpr int N = Pack<T>::N;
  if (n % N == 0 && gate_stride % N == 0 && up_stride % N == 0 && aligned16(gate) && aligned16(up) && aligned16(out)) {
    swiglu_pack_kernel<T><<<grid_for(rows * n / N, 256), 256, 0, stream>>>(gate, up, out, rows, n, gate_stride,
                                                                           up_stride);
  } else {
    swiglu_kernel<T><<<grid_for(rows * n, 256), 256, 0, stream>>>(gate, up, out, rows, n, gate_stride, up_stride);
  }
}

template <typename T>
void swiglu_bwd(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t rows, int64_t n,
                int64_t gate_stride, int64_t up_stride, cudaStream_t stream) {
  if (rows * n == 0) return;
  swiglu_bwd_kernel<T><<<grid_for(rows * n, 256), 256, 0, stream>>>(gate, up, dout, dgate, dup, rows, n, gate_stride,
                                                                    up_stride);
}

}  // namespace mixk
