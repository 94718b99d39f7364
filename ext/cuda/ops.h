// The GPU halves of the Paddle custom ops in ../cpu/ops.cc (float32, float16, bfloat16), defined in ops.cu
// and called by those ops for GPU tensors when the library is built with MIX_WITH_CUDA.
#pragma once

#include <vector>

#include "paddle/phi/api/all.h"

namespace mix_cuda {

using paddle::Tensor;
using Tensors = std::vector<Tensor>;

Tensors rms_norm(const Tensor& x, const Tensor& w, float eps);
Tensors rms_norm_grad(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy);
Tensors add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& w, float eps);
Tensors layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, float eps);
Tensors layer_norm_grad(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy);
Tensors rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool token_major);
Tensors rotary_grad(const Tensor& cos, const Tensor& sin, const Tensor& dout, bool token_major);
Tensors swiglu(const Tensor& gate, const Tensor& up);
Tensors swiglu_grad(const Tensor& gate, const Tensor& up, const Tensor& dout);
Tensors swiglu_packed(const Tensor& x);
Tensors swiglu_packed_grad(const Tensor& x, const Tensor& dout);
Tensors quick_gelu(const Tensor& x);
Tensors quick_gelu_grad(const Tensor& x, const Tensor& dout);

}  // namespace mix_cuda
