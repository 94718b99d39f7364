// Rotate-half rotary embedding and its backward on the GPU, optionally moving (B, T, S, D) token-major
// input to the (B, S, T, D) head-major layout attention reads, in the same pass.
#pragma once

#include "common.cuh"

namespace mixk {

// One thread per (row, i < D/2) pair. Rows are numbered in x's layout; `dst` is the row's place in the
// (B, S, T, D) layout. Forward reads x at src and writes out at dst; backward reads dout at dst and
// writes dx at src with the transposed rotation.
template <typename T, bool kBackward>
__global__ void rotary_kernel(const T* __restrict__ in, const T* __restrict__ cos, const T* __restrict__ sin,
                              T* __restrict__ out, int64_t s, int64_t t, int64_t d, bool token_major, int64_t pairs) {
  const int64_t half = d / 2;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = p / half, i = p % half, bi = row / (s * t);
    const int64_t ti = token_major ? (row / s) % t : row % t;
    const int64_t si = token_major ? row % s : (row / t) % s;
    const int64_t src = row * d, dst = ((bi * s + si) * t + ti) * d, table = ti * d;
    const float c1 = to_f(cos[table + i]), c2 = to_f(cos[table + i + half]);
    const float s1 = to_f(sin[table + i]), s2 = to_f(sin[table + i + half]);
    if constexpr (kBackward) {
      const float g1 = to_f(in[dst + i]), g2 = to_f(in[dst + i + half]);
      out[src + i] = from_f<T>(g1 * c1 + g2 * s2);
      out[src + i + half] = from_f<T>(g2 * c2 - g1 * s1);
    } else {
      const float x1 = to_f(in[src + i]), x2 = to_f(in[src + i + half]);
      out[dst + i] = from_f<T>(x1 * c1 - x2 * s1);
      out[dst + i + half] = from_f<T>(x2 * c2 + x1 * s2);
    }
  }
}

// x: (B, S, T, D), or (B, T, S, D) when token_major; out: (B, S, T, D); cos, sin: (T, D).
template <typename T>
void rotary(const T* x, const T* cos, const T* sin, T* out, int64_t b, int64_t s, int64_t t, int64_t d,
            bool token_major, cudaStream_t stream) {
  int64_t pairs = b * s * t * (d / 2);
  if (pairs == 0) return;
  rotary_kernel<T, false><<<grid_for(pairs, 256), 256, 0, stream>>>(x, cos, sin, out, s, t, d, token_major, pairs);
}

// dout: (B, S, T, D); dx in x's layout.
template <typename T>
void rotary_bwd(const T* dout, const T* cos, const T* sin, T* dx, int64_t b, int64_t s, int64_t t, int64_t d,
                bool token_major, cudaStream_t stream) {
  int64_t pairs = b * s * t * (d / 2);
  if (pairs == 0) return;
  rotary_kernel<T, true><<<grid_for(pairs, 256), 256, 0, stream>>>(dout, cos, sin, dx, s, t, d, token_major, pairs);
}

}  // namespace mixk
