// GPU implementations of the Paddle custom ops declared in ops.h: output allocation, dtype dispatch and
// the stream of the input; the kernels are the headers beside this file (shared with launcher.cu).
#include "layer_norm.cuh"
#include "ops.h"
#include "paddle/common/exception.h"
#include "quick_gelu.cuh"
#include "rms_norm.cuh"
#include "rotary.cuh"
#include "swiglu.cuh"

namespace mix_cuda {
namespace {

using Shape = std::vector<int64_t>;
constexpr auto kF32 = paddle::DataType::FLOAT32;

// Calls f(T{}) with T the CUDA type of a float32 / float16 / bfloat16 tensor.
template <typename F>
void dispatch(paddle::DataType dtype, F f) {
  switch (dtype) {
    case paddle::DataType::FLOAT32:
      f(float{});
      break;
    case paddle::DataType::FLOAT16:
      f(__half{});
      break;
    case paddle::DataType::BFLOAT16:
      f(__nv_bfloat16{});
      break;
    default:
      PD_THROW("mix ext ops: float32, float16 or bfloat16 only on the GPU");
  }
}

template <typename T>
const T* in(const Tensor& t) {
  return static_cast<const T*>(t.data());
}
template <typename T>
T* out(Tensor& t) {
  return static_cast<T*>(t.data());
}

int64_t last_dim(const Tensor& x) { return x.shape().empty() ? 1 : x.shape().back(); }
int64_t rows_of(const Tensor& x) { return x.numel() / last_dim(x); }
Shape row_shape(const Shape& s) { return Shape(s.begin(), s.end() - (s.empty() ? 0 : 1)); }
Tensor like(const Tensor& x, const Shape& shape) { return paddle::empty(shape, x.dtype(), x.place()); }
Tensor f32(const Tensor& x, const Shape& shape) { return paddle::empty(shape, kF32, x.place()); }

void check(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    PD_CHECK(t->is_gpu(), "mix ext ops: all inputs must be on the same GPU");
    PD_CHECK(t->dtype() == (*tensors.begin())->dtype(), "mix ext ops: inputs must share one dtype");
  }
}

Tensors norm(const Tensor& x, const Tensor* residual, const Tensor& w, float eps) {
  check({&x, &w});
  Tensor y = like(x, x.shape()), rstd = f32(x, row_shape(x.shape()));
  Tensor sum = residual ? like(x, x.shape()) : Tensor();
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::rms_norm_fwd<T>(in<T>(x), residual ? in<T>(*residual) : nullptr, in<T>(w), out<T>(y),
                          residual ? out<T>(sum) : nullptr, out<float>(rstd), rows_of(x), last_dim(x), eps, x.stream());
  });
  return residual ? Tensors{y, sum, rstd} : Tensors{y, rstd};
}

}  // namespace

Tensors rms_norm(const Tensor& x, const Tensor& w, float eps) { return norm(x, nullptr, w, eps); }

Tensors add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& w, float eps) {
  check({&x, &residual});
  return norm(x, &residual, w, eps);
}

Tensors rms_norm_grad(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy) {
  check({&x, &w, &dy});
  Tensor dx = like(x, x.shape()), dw = like(w, w.shape()), workspace = f32(x, {last_dim(x)});
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::rms_norm_bwd<T>(in<T>(x), in<T>(w), in<float>(rstd), in<T>(dy), out<T>(dx), out<T>(dw), out<float>(workspace),
                          rows_of(x), last_dim(x), x.stream());
  });
  return {dx, dw};
}

Tensors layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps) {
  check({&x, &w, &b});
  Shape rows = row_shape(x.shape());
  Tensor y = like(x, x.shape()), mean = f32(x, rows), rstd = f32(x, rows);
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::layer_norm_fwd<T>(in<T>(x), in<T>(w), in<T>(b), out<T>(y), out<float>(mean), out<float>(rstd), rows_of(x),
                            last_dim(x), eps, x.stream());
  });
  return {y, mean, rstd};
}

Tensors layer_norm_grad(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy) {
  check({&x, &w, &dy});
  Tensor dx = like(x, x.shape()), dw = like(w, w.shape()), db = like(w, w.shape());
  Tensor workspace = f32(x, {2 * last_dim(x)});
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::layer_norm_bwd<T>(in<T>(x), in<T>(w), in<float>(mean), in<float>(rstd), in<T>(dy), out<T>(dx), out<T>(dw),
                            out<T>(db), out<float>(workspace), rows_of(x), last_dim(x), x.stream());
  });
  return {dx, dw, db};
}

Tensors rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool token_major) {
  check({&x, &cos, &sin});
  const Shape& s = x.shape();
  PD_CHECK(s.size() == 4 && s[3] % 2 == 0, "mix ext ops: rotary takes (B, S, T, D) or (B, T, S, D), even D");
  Tensor y = like(x, token_major ? Shape{s[0], s[2], s[1], s[3]} : s);
  int64_t heads = token_major ? s[2] : s[1], t = token_major ? s[1] : s[2];
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::rotary<T>(in<T>(x), in<T>(cos), in<T>(sin), out<T>(y), s[0], heads, t, s[3], token_major, x.stream());
  });
  return {y};
}

Tensors rotary_grad(const Tensor& cos, const Tensor& sin, const Tensor& dout, bool token_major) {
  check({&dout, &cos, &sin});
  const Shape& s = dout.shape();  // (B, S, T, D)
  Tensor dx = like(dout, token_major ? Shape{s[0], s[2], s[1], s[3]} : s);
  dispatch(dout.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::rotary_bwd<T>(in<T>(dout), in<T>(cos), in<T>(sin), out<T>(dx), s[0], s[1], s[2], s[3], token_major,
                        dout.stream());
  });
  return {dx};
}

Tensors swiglu(const Tensor& gate, const Tensor& up) {
  check({&gate, &up});
  int64_t n = last_dim(gate);
  Tensor y = like(gate, gate.shape());
  dispatch(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::swiglu<T>(in<T>(gate), in<T>(up), out<T>(y), rows_of(gate), n, n, n, gate.stream());
  });
  return {y};
}

Tensors swiglu_grad(const Tensor& gate, const Tensor& up, const Tensor& dout) {
  check({&gate, &up, &dout});
  int64_t n = last_dim(gate);
  Tensor dgate = like(gate, gate.shape()), dup = like(up, up.shape());
  dispatch(gate.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::swiglu_bwd<T>(in<T>(gate), in<T>(up), in<T>(dout), out<T>(dgate), out<T>(dup), rows_of(gate), n, n, n,
                        gate.stream());
  });
  return {dgate, dup};
}

Tensors swiglu_packed(const Tensor& x) {
  check({&x});
  int64_t n = last_dim(x) / 2;
  Shape shape = x.shape();
  shape.back() = n;
  Tensor y = like(x, shape);
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::swiglu<T>(in<T>(x), in<T>(x) + n, out<T>(y), rows_of(x), n, 2 * n, 2 * n, x.stream());
  });
  return {y};
}

Tensors swiglu_packed_grad(const Tensor& x, const Tensor& dout) {
  check({&x, &dout});
  int64_t n = last_dim(x) / 2;
  Tensor dx = like(x, x.shape());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::swiglu_bwd<T>(in<T>(x), in<T>(x) + n, in<T>(dout), out<T>(dx), out<T>(dx) + n, rows_of(x), n, 2 * n, 2 * n,
                        x.stream());
  });
  return {dx};
}

Tensors quick_gelu(const Tensor& x) {
  check({&x});
  Tensor y = like(x, x.shape());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::quick_gelu<T>(in<T>(x), out<T>(y), x.numel(), x.stream());
  });
  return {y};
}

Tensors quick_gelu_grad(const Tensor& x, const Tensor& dout) {
  check({&x, &dout});
  Tensor dx = like(x, x.shape());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    mixk::quick_gelu_bwd<T>(in<T>(x), in<T>(dout), out<T>(dx), x.numel(), x.stream());
  });
  return {dx};
}

}  // namespace mix_cuda
