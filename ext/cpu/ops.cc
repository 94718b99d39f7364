// Paddle custom ops over the kernels of kernels.h (CPU, float32), dispatching to ../cuda/ops.cu for GPU
// tensors when the library is built with MIX_WITH_CUDA. Every op but the rotary tables has a backward.
// The Python side (mixcli.ext) checks dtype, device and shape before calling, so the PD_CHECKs here
// are a last line of defence, not the fallback.
#include <vector>

#include "kernels.h"
#include "paddle/common/exception.h"
#include "paddle/phi/api/all.h"

using paddle::Tensor;
using Tensors = std::vector<Tensor>;
using Shape = std::vector<int64_t>;
using Shapes = std::vector<Shape>;
using Dtypes = std::vector<paddle::DataType>;

#ifdef MIX_WITH_CUDA
#include "../cuda/ops.h"
#define MIX_GPU_DISPATCH(x, call) \
  if ((x).is_gpu()) return call;
#else
#define MIX_GPU_DISPATCH(x, call)
#endif

namespace {

constexpr auto kF32 = paddle::DataType::FLOAT32;

int64_t last_dim(const Tensor& x) { return x.shape().empty() ? 1 : x.shape().back(); }
int64_t rows_of(const Tensor& x) { return x.numel() / last_dim(x); }

Shape row_shape(const Shape& shape) { return Shape(shape.begin(), shape.end() - (shape.empty() ? 0 : 1)); }

void check_f32(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    PD_CHECK(t->is_cpu(), "mix ext ops: CPU tensors only in this build");
    PD_CHECK(t->dtype() == kF32, "mix ext ops: float32 only on the CPU");
  }
}

void check_weight(const Tensor& x, const Tensor& w) {
  PD_CHECK(w.numel() == last_dim(x), "mix ext ops: the weight must match the last axis of x");
}

Tensor empty(const Shape& shape, const Tensor& like) { return paddle::empty(shape, kF32, like.place()); }

}  // namespace

// ---- RMSNorm -------------------------------------------------------------------------------------

Tensors RmsNorm(const Tensor& x, const Tensor& w, float eps) {
  MIX_GPU_DISPATCH(x, mix_cuda::rms_norm(x, w, eps))
  check_f32({&x, &w});
  check_weight(x, w);
  Tensor y = empty(x.shape(), x), rstd = empty(row_shape(x.shape()), x);
  mix::rms_norm_fwd(x.data<float>(), w.data<float>(), y.data<float>(), rstd.data<float>(), rows_of(x), last_dim(x),
                    eps);
  return {y, rstd};
}

Tensors RmsNormGrad(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy) {
  MIX_GPU_DISPATCH(x, mix_cuda::rms_norm_grad(x, w, rstd, dy))
  check_f32({&x, &w, &rstd, &dy});
  Tensor dx = empty(x.shape(), x), dw = empty(w.shape(), x);
  mix::rms_norm_bwd(x.data<float>(), w.data<float>(), rstd.data<float>(), dy.data<float>(), dx.data<float>(),
                    dw.data<float>(), rows_of(x), last_dim(x));
  return {dx, dw};
}

Shapes RmsNormShape(const Shape& x, const Shape& w, float eps) { return {x, row_shape(x)}; }
Dtypes NormDtype(paddle::DataType x, paddle::DataType w) { return {x, kF32}; }

PD_BUILD_OP(mix_rms_norm)
    .Inputs({"X", "W"})
    .Outputs({"Out", "Rstd"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(RmsNorm))
    .SetInferShapeFn(PD_INFER_SHAPE(RmsNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(NormDtype));

PD_BUILD_GRAD_OP(mix_rms_norm)
    .Inputs({"X", "W", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .SetKernelFn(PD_KERNEL(RmsNormGrad));

// ---- residual add + RMSNorm ----------------------------------------------------------------------

Tensors AddRmsNorm(const Tensor& x, const Tensor& residual, const Tensor& w, float eps) {
  MIX_GPU_DISPATCH(x, mix_cuda::add_rms_norm(x, residual, w, eps))
  check_f32({&x, &residual, &w});
  check_weight(x, w);
  PD_CHECK(x.shape() == residual.shape(), "mix ext ops: x and residual must have the same shape");
  Tensor y = empty(x.shape(), x), sum = empty(x.shape(), x), rstd = empty(row_shape(x.shape()), x);
  mix::add_rms_norm_fwd(x.data<float>(), residual.data<float>(), w.data<float>(), y.data<float>(),
                        sum.data<float>(), rstd.data<float>(), rows_of(x), last_dim(x), eps);
  return {y, sum, rstd};
}

// d(sum) collects the gradient through the normalised output and the one flowing into `sum` directly;
// x and residual both receive it.
Tensors AddRmsNormGrad(const Tensor& sum, const Tensor& w, const Tensor& rstd, const Tensor& dy,
                       const Tensor& dsum) {
  Tensors grads = RmsNormGrad(sum, w, rstd, dy);
  Tensor dx = dsum.initialized() ? paddle::experimental::add(grads[0], dsum) : grads[0];
  return {dx, dx.copy_to(dx.place(), false), grads[1]};
}

Shapes AddRmsNormShape(const Shape& x, const Shape& r, const Shape& w, float eps) { return {x, x, row_shape(x)}; }
Dtypes AddRmsNormDtype(paddle::DataType x, paddle::DataType r, paddle::DataType w) { return {x, x, kF32}; }

PD_BUILD_OP(mix_add_rms_norm)
    .Inputs({"X", "Residual", "W"})
    .Outputs({"Out", "Sum", "Rstd"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(AddRmsNorm))
    .SetInferShapeFn(PD_INFER_SHAPE(AddRmsNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AddRmsNormDtype));

PD_BUILD_GRAD_OP(mix_add_rms_norm)
    .Inputs({"Sum", "W", "Rstd", paddle::Grad("Out"), paddle::Grad("Sum")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Residual"), paddle::Grad("W")})
    .SetKernelFn(PD_KERNEL(AddRmsNormGrad));

// ---- LayerNorm -----------------------------------------------------------------------------------

Tensors LayerNorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps) {
  MIX_GPU_DISPATCH(x, mix_cuda::layer_norm(x, w, b, eps))
  check_f32({&x, &w, &b});
  check_weight(x, w);
  check_weight(x, b);
  Shape rows = row_shape(x.shape());
  Tensor y = empty(x.shape(), x), mean = empty(rows, x), rstd = empty(rows, x);
  mix::layer_norm_fwd(x.data<float>(), w.data<float>(), b.data<float>(), y.data<float>(), mean.data<float>(),
                      rstd.data<float>(), rows_of(x), last_dim(x), eps);
  return {y, mean, rstd};
}

Tensors LayerNormGrad(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy) {
  MIX_GPU_DISPATCH(x, mix_cuda::layer_norm_grad(x, w, mean, rstd, dy))
  check_f32({&x, &w, &mean, &rstd, &dy});
  Tensor dx = empty(x.shape(), x), dw = empty(w.shape(), x), db = empty(w.shape(), x);
  mix::layer_norm_bwd(x.data<float>(), w.data<float>(), mean.data<float>(), rstd.data<float>(), dy.data<float>(),
                      dx.data<float>(), dw.data<float>(), db.data<float>(), rows_of(x), last_dim(x));
  return {dx, dw, db};
}

Shapes LayerNormShape(const Shape& x, const Shape& w, const Shape& b, float eps) {
  return {x, row_shape(x), row_shape(x)};
}
Dtypes LayerNormDtype(paddle::DataType x, paddle::DataType w, paddle::DataType b) { return {x, kF32, kF32}; }

PD_BUILD_OP(mix_layer_norm)
    .Inputs({"X", "W", "B"})
    .Outputs({"Out", "Mean", "Rstd"})
    .Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(LayerNorm))
    .SetInferShapeFn(PD_INFER_SHAPE(LayerNormShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LayerNormDtype));

PD_BUILD_GRAD_OP(mix_layer_norm)
    .Inputs({"X", "W", "Mean", "Rstd", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W"), paddle::Grad("B")})
    .SetKernelFn(PD_KERNEL(LayerNormGrad));

// ---- rotary embedding ----------------------------------------------------------------------------

Shape rotary_out_shape(const Shape& x, bool token_major) {
  return token_major ? Shape{x[0], x[2], x[1], x[3]} : x;  // (B, T, S, D) -> (B, S, T, D)
}

Tensors Rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool token_major) {
  MIX_GPU_DISPATCH(x, mix_cuda::rotary(x, cos, sin, token_major))
  check_f32({&x, &cos, &sin});
  const Shape& s = x.shape();
  PD_CHECK(s.size() == 4 && s.back() % 2 == 0, "mix ext ops: rotary takes (B, S, T, D) or (B, T, S, D), even D");
  int64_t t = token_major ? s[1] : s[2], heads = token_major ? s[2] : s[1];
  PD_CHECK(cos.numel() == t * s[3] && sin.numel() == t * s[3], "mix ext ops: cos/sin must be (T, D)");
  Tensor out = empty(rotary_out_shape(s, token_major), x);
  mix::rotary(x.data<float>(), cos.data<float>(), sin.data<float>(), out.data<float>(), s[0], heads, t, s[3],
              token_major);
  return {out};
}

// dx has x's layout: (B, T, S, D) back from dout (B, S, T, D) when token_major.
Tensors RotaryGrad(const Tensor& cos, const Tensor& sin, const Tensor& dout, bool token_major) {
  MIX_GPU_DISPATCH(dout, mix_cuda::rotary_grad(cos, sin, dout, token_major))
  check_f32({&cos, &sin, &dout});
  const Shape& s = dout.shape();  // (B, S, T, D)
  Tensor dx = empty(rotary_out_shape(s, token_major), dout);  // the same swap maps it back
  mix::rotary_bwd(dout.data<float>(), cos.data<float>(), sin.data<float>(), dx.data<float>(), s[0], s[1], s[2], s[3],
                  token_major);
  return {dx};
}

Shapes RotaryShape(const Shape& x, const Shape& c, const Shape& s, bool token_major) {
  return {rotary_out_shape(x, token_major)};
}
Dtypes SameDtype3(paddle::DataType x, paddle::DataType, paddle::DataType) { return {x}; }

PD_BUILD_OP(mix_rotary)
    .Inputs({"X", "Cos", "Sin"})
    .Outputs({"Out"})
    .Attrs({"token_major: bool"})
    .SetKernelFn(PD_KERNEL(Rotary))
    .SetInferShapeFn(PD_INFER_SHAPE(RotaryShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype3));

// cos/sin are tables of constants: they get no gradient (mixcli.ext falls back when they would need one).
PD_BUILD_GRAD_OP(mix_rotary)
    .Inputs({"Cos", "Sin", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"token_major: bool"})
    .SetKernelFn(PD_KERNEL(RotaryGrad));

// cos/sin tables (T, D) for float32 positions (P, T) and inverse frequencies (D/2): see kernels.h.
Tensors RotaryTables(const Tensor& positions, const Tensor& inv_freq, const std::vector<int>& section) {
  check_f32({&positions, &inv_freq});
  PD_CHECK(positions.shape().size() == 2, "mix ext ops: positions must be (P, T)");
  int64_t p = positions.shape()[0], t = positions.shape()[1], d = 2 * inv_freq.numel();
  Tensor cos = empty({t, d}, positions), sin = empty({t, d}, positions);
  mix::rotary_tables(positions.data<float>(), inv_freq.data<float>(), section, cos.data<float>(),
                     sin.data<float>(), p, t, d);
  return {cos, sin};
}

Shapes RotaryTablesShape(const Shape& pos, const Shape& inv_freq, const std::vector<int>&) {
  return {{pos[1], 2 * inv_freq[0]}, {pos[1], 2 * inv_freq[0]}};
}
Dtypes F32Pair(paddle::DataType, paddle::DataType) { return {kF32, kF32}; }

PD_BUILD_OP(mix_rotary_tables)
    .Inputs({"Positions", "InvFreq"})
    .Outputs({"Cos", "Sin"})
    .Attrs({"section: std::vector<int>"})
    .SetKernelFn(PD_KERNEL(RotaryTables))
    .SetInferShapeFn(PD_INFER_SHAPE(RotaryTablesShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32Pair));

// ---- SwiGLU and QuickGELU ------------------------------------------------------------------------

Tensors Swiglu(const Tensor& gate, const Tensor& up) {
  MIX_GPU_DISPATCH(gate, mix_cuda::swiglu(gate, up))
  check_f32({&gate, &up});
  PD_CHECK(gate.shape() == up.shape(), "mix ext ops: gate and up must have the same shape");
  int64_t n = last_dim(gate);
  Tensor out = empty(gate.shape(), gate);
  mix::swiglu(gate.data<float>(), up.data<float>(), out.data<float>(), rows_of(gate), n, n, n);
  return {out};
}

Tensors SwigluPacked(const Tensor& x) {
  MIX_GPU_DISPATCH(x, mix_cuda::swiglu_packed(x))
  check_f32({&x});
  PD_CHECK(last_dim(x) % 2 == 0, "mix ext ops: packed gate_up needs an even last axis");
  int64_t n = last_dim(x) / 2;
  Shape shape = x.shape();
  shape.back() = n;
  Tensor out = empty(shape, x);
  const float* data = x.data<float>();
  mix::swiglu(data, data + n, out.data<float>(), rows_of(x), n, 2 * n, 2 * n);
  return {out};
}

Tensors SwigluGrad(const Tensor& gate, const Tensor& up, const Tensor& dout) {
  MIX_GPU_DISPATCH(gate, mix_cuda::swiglu_grad(gate, up, dout))
  check_f32({&gate, &up, &dout});
  int64_t n = last_dim(gate);
  Tensor dgate = empty(gate.shape(), gate), dup = empty(up.shape(), up);
  mix::swiglu_bwd(gate.data<float>(), up.data<float>(), dout.data<float>(), dgate.data<float>(), dup.data<float>(),
                  rows_of(gate), n, n, n);
  return {dgate, dup};
}

Tensors SwigluPackedGrad(const Tensor& x, const Tensor& dout) {
  MIX_GPU_DISPATCH(x, mix_cuda::swiglu_packed_grad(x, dout))
  check_f32({&x, &dout});
  int64_t n = last_dim(x) / 2;
  Tensor dx = empty(x.shape(), x);
  const float* data = x.data<float>();
  float* grad = dx.data<float>();
  mix::swiglu_bwd(data, data + n, dout.data<float>(), grad, grad + n, rows_of(x), n, 2 * n, 2 * n);
  return {dx};
}

Tensors QuickGelu(const Tensor& x) {
  MIX_GPU_DISPATCH(x, mix_cuda::quick_gelu(x))
  check_f32({&x});
  Tensor out = empty(x.shape(), x);
  mix::quick_gelu(x.data<float>(), out.data<float>(), x.numel());
  return {out};
}

Tensors QuickGeluGrad(const Tensor& x, const Tensor& dout) {
  MIX_GPU_DISPATCH(x, mix_cuda::quick_gelu_grad(x, dout))
  check_f32({&x, &dout});
  Tensor dx = empty(x.shape(), x);
  mix::quick_gelu_bwd(x.data<float>(), dout.data<float>(), dx.data<float>(), x.numel());
  return {dx};
}

Shapes SameShape2(const Shape& a, const Shape&) { return {a}; }
Shapes SameShape(const Shape& a) { return {a}; }
Shapes HalfShape(const Shape& a) {
  Shape s = a;
  s.back() /= 2;
  return {s};
}
Dtypes SameDtype2(paddle::DataType a, paddle::DataType) { return {a}; }
Dtypes SameDtype(paddle::DataType a) { return {a}; }

PD_BUILD_OP(mix_swiglu)
    .Inputs({"Gate", "Up"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Swiglu))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape2))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype2));

PD_BUILD_GRAD_OP(mix_swiglu)
    .Inputs({"Gate", "Up", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Gate"), paddle::Grad("Up")})
    .SetKernelFn(PD_KERNEL(SwigluGrad));

PD_BUILD_OP(mix_swiglu_packed)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(SwigluPacked))
    .SetInferShapeFn(PD_INFER_SHAPE(HalfShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_GRAD_OP(mix_swiglu_packed)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(SwigluPackedGrad));

PD_BUILD_OP(mix_quick_gelu)
    .Inputs({"X"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(QuickGelu))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype));

PD_BUILD_GRAD_OP(mix_quick_gelu)
    .Inputs({"X", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X")})
    .SetKernelFn(PD_KERNEL(QuickGeluGrad));

// ---- bias + QuickGELU, attention (inference only: no backward) ------------------------------------

Tensors BiasQuickGelu(const Tensor& x, const Tensor& bias) {
  check_f32({&x, &bias});
  check_weight(x, bias);
  Tensor out = empty(x.shape(), x);
  mix::bias_quick_gelu(x.data<float>(), bias.data<float>(), out.data<float>(), rows_of(x), last_dim(x));
  return {out};
}

PD_BUILD_OP(mix_bias_quick_gelu)
    .Inputs({"X", "Bias"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(BiasQuickGelu))
    .SetInferShapeFn(PD_INFER_SHAPE(SameShape2))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype2));

// ---- weight-only int8 (inference only: no backward) -----------------------------------------------

void check_wint8(const Tensor& w, const Tensor& scale) {
  PD_CHECK(w.is_cpu() && scale.is_cpu(), "mix ext ops: CPU tensors only in this build");
  PD_CHECK(w.dtype() == paddle::DataType::INT8 && w.shape().size() == 2, "mix ext ops: wint8 weights are int8 (n, k)");
  PD_CHECK(scale.dtype() == kF32 && scale.numel() == w.shape()[0], "mix ext ops: wint8 scales are float32 (n)");
}

// x (.., k) @ (w (n, k) * scale (n))^T -> (.., n).
Tensors Wint8Matmul(const Tensor& x, const Tensor& w, const Tensor& scale) {
  check_f32({&x});
  check_wint8(w, scale);
  int64_t n = w.shape()[0], k = w.shape()[1];
  PD_CHECK(last_dim(x) == k, "mix ext ops: x's last axis must match the weights' k");
  Shape shape = x.shape();
  shape.back() = n;
  Tensor y = empty(shape, x);
  mix::wint8_matmul(x.data<float>(), w.data<int8_t>(), scale.data<float>(), y.data<float>(), rows_of(x), k, n);
  return {y};
}

Tensors Wint8Dequant(const Tensor& w, const Tensor& scale) {
  check_wint8(w, scale);
  Tensor out = empty(w.shape(), w);
  mix::wint8_dequant(w.data<int8_t>(), scale.data<float>(), out.data<float>(), w.shape()[0], w.shape()[1]);
  return {out};
}

Shapes Wint8MatmulShape(const Shape& x, const Shape& w, const Shape&) {
  Shape s = x;
  s.back() = w[0];
  return {s};
}
Shapes Wint8DequantShape(const Shape& w, const Shape&) { return {w}; }
Dtypes F32Of2(paddle::DataType, paddle::DataType) { return {kF32}; }
Dtypes F32Of3(paddle::DataType, paddle::DataType, paddle::DataType) { return {kF32}; }

PD_BUILD_OP(mix_wint8_matmul)
    .Inputs({"X", "W", "Scale"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Wint8Matmul))
    .SetInferShapeFn(PD_INFER_SHAPE(Wint8MatmulShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32Of3));

PD_BUILD_OP(mix_wint8_dequant)
    .Inputs({"W", "Scale"})
    .Outputs({"Out"})
    .SetKernelFn(PD_KERNEL(Wint8Dequant))
    .SetInferShapeFn(PD_INFER_SHAPE(Wint8DequantShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32Of2));

#ifdef MIX_WITH_MKL
namespace {

// Strides of a contiguous (B, H, T, D) tensor, or of (B, T, H, D) when token_major.
mix::HeadLayout layout_of(const Shape& shape, bool token_major) {
  int64_t rows = token_major ? shape[1] : shape[2], heads = token_major ? shape[2] : shape[1], d = shape[3];
  if (token_major) return {rows * heads * d, d, heads * d};
  return {heads * rows * d, rows * d, d};
}

}  // namespace

Tensors Attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal, bool token_major) {
  check_f32({&q, &k, &v});
  const Shape &qs = q.shape(), &ks = k.shape();
  PD_CHECK(qs.size() == 4 && ks.size() == 4 && k.shape() == v.shape(), "mix ext ops: attention takes 4-D q, k, v");
  int64_t b = qs[0], t = token_major ? qs[1] : qs[2], h_q = token_major ? qs[2] : qs[1], d = qs[3];
  int64_t s = token_major ? ks[1] : ks[2], h_kv = token_major ? ks[2] : ks[1];
  PD_CHECK(ks[0] == b && ks[3] == d && h_kv > 0 && h_q % h_kv == 0 && (!causal || s >= t),
           "mix ext ops: attention shapes do not match");
  Tensor out = empty(qs, q);
  mix::HeadLayout ql = layout_of(qs, token_major);
  mix::attention(q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(), b, h_q, h_kv, t, s, d, ql,
                 layout_of(ks, token_major), ql, scale, causal);
  return {out};
}

Shapes AttentionShape(const Shape& q, const Shape& k, const Shape& v, float, bool, bool) { return {q}; }

PD_BUILD_OP(mix_attention)
    .Inputs({"Q", "K", "V"})
    .Outputs({"Out"})
    .Attrs({"scale: float", "causal: bool", "token_major: bool"})
    .SetKernelFn(PD_KERNEL(Attention))
    .SetInferShapeFn(PD_INFER_SHAPE(AttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SameDtype3));
#endif
