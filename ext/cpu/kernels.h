// Fused-op kernels for the CPU in plain C++ (no Paddle): the Paddle wrappers in ops.cc call these.
//
// Portability: the build uses -O3 and no -march flag, because the compiled library lands in a cache
// that may be shared between machines. On x86-64 with GCC each hot function is cloned for AVX-512
// (x86-64-v4), AVX2+FMA (x86-64-v3) and the baseline, and the loader picks the clone for the CPU it
// runs on (GCC target_clones / ifunc). Loops are written so that the compiler vectorises them.
// Work is split over rows with OpenMP when a call is large enough to pay for waking the threads.
#pragma once

#include <cstdint>
#include <vector>

namespace mix {

// RMSNorm over the last axis: y = w * x * rstd, rstd = 1 / sqrt(mean(x^2) + eps) (kept for backward).
void rms_norm_fwd(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t n, float eps);

// Residual add, then RMSNorm: sum = x + residual; y = rms_norm(sum).
void add_rms_norm_fwd(const float* x, const float* residual, const float* w, float* y, float* sum, float* rstd,
                      int64_t rows, int64_t n, float eps);

// Gradients of rms_norm_fwd: dx (rows, n) and dw (n), from x, w, the saved rstd and dy.
void rms_norm_bwd(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw,
                  int64_t rows, int64_t n);

// LayerNorm over the last axis: y = (x - mean) * rstd * w + b; mean and rstd kept for backward.
void layer_norm_fwd(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                    int64_t rows, int64_t n, float eps);

// Gradients of layer_norm_fwd: dx, dw, db.
void layer_norm_bwd(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                    float* dx, float* dw, float* db, int64_t rows, int64_t n);

// Rotate-half rotary embedding. x is (B, S, T, D) with `token_major` false, or (B, T, S, D) with it true
// (S = heads); out is always (B, S, T, D); cos/sin are (T, D).
void rotary(const float* x, const float* cos, const float* sin, float* out, int64_t b, int64_t s, int64_t t,
            int64_t d, bool token_major);

// Gradient of rotary with respect to x: dout is (B, S, T, D), dx has x's layout.
void rotary_bwd(const float* dout, const float* cos, const float* sin, float* dx, int64_t b, int64_t s, int64_t t,
                int64_t d, bool token_major);

// cos/sin tables (T, D) for positions (P, T): frequency j takes its angle from position component
// c(j) = (index of the section that holds j) % P, and columns j and j + D/2 share it (rotate-half).
// P = 1 with one section is the standard table; P = 3 is Qwen2-VL's M-RoPE.
void rotary_tables(const float* positions, const float* inv_freq, const std::vector<int>& section, float* cos,
                   float* sin, int64_t p, int64_t t, int64_t d);

// SwiGLU: out = silu(gate) * up for `rows` rows of n; gate/up rows start every gate_stride/up_stride floats
// (so one packed (rows, 2n) gate_up tensor needs no split).
void swiglu(const float* gate, const float* up, float* out, int64_t rows, int64_t n, int64_t gate_stride,
            int64_t up_stride);

// Gradients of swiglu; dgate/dup rows have the strides of gate/up.
void swiglu_bwd(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t rows,
                int64_t n, int64_t gate_stride, int64_t up_stride);

// QuickGELU: out = x * sigmoid(1.702 x), elementwise over count values.
void quick_gelu(const float* x, float* out, int64_t count);

// Gradient of quick_gelu: dx = dout * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x).
void quick_gelu_bwd(const float* x, const float* dout, float* dx, int64_t count);

// QuickGELU of x + bias, x (rows, n) and bias (n): a linear layer's bias and activation in one pass.
void bias_quick_gelu(const float* x, const float* bias, float* out, int64_t rows, int64_t n);

// Weight-only int8 product (PaddleMIX's weight_only_int8): y (m, n) = x (m, k) @ (w (n, k) * scale (n))^T, the
// int8 weights in the torch layout (one output channel a row) converted to float in registers, so that a
// decode step streams a quarter of the fp32 bytes. Output channels are spread over the threads; each x row is
// reused from cache for every weight row (m is a decode batch: 1 to a few rows).
void wint8_matmul(const float* x, const int8_t* w, const float* scale, float* y, int64_t m, int64_t k, int64_t n);

// The float weights (n, k) = w * scale per row, for a prefill's fp32 product.
void wint8_dequant(const int8_t* w, const float* scale, float* out, int64_t n, int64_t k);

#ifdef MIX_WITH_MKL
// Where a (batch, head)'s rows of length D start: strides in floats; the D values of a row are contiguous.
struct HeadLayout {
  int64_t batch, head, row;
};

// Inference attention, float32: out = softmax(q k^T * scale) v for every batch and query head; query head
// h reads key/value head h / (h_q / h_kv) (grouped queries). t queries against s keys; with `causal`,
// query i sees keys 0 .. i + s - t (s >= t). Query rows go in tiles whose scores stay in the core's cache,
// spread over the threads; the two products are MKL's sgemm, each on its calling thread.
void attention(const float* q, const float* k, const float* v, float* out, int64_t b, int64_t h_q, int64_t h_kv,
               int64_t t, int64_t s, int64_t d, HeadLayout ql, HeadLayout kvl, HeadLayout ol, float scale,
               bool causal);
#endif

}  // namespace mix
