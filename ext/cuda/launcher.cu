// C entry points over the device kernels, for ext/bench_cuda.py (ctypes + PyTorch tensors, no Paddle):
// dtype 0 = float32, 1 = float16, 2 = bfloat16; pointers are device pointers; stream is a cudaStream_t.
// Each returns the cudaError_t of the launch (0 = success), or -1 for an unknown dtype.
#include "layer_norm.cuh"
#include "quick_gelu.cuh"
#include "rms_norm.cuh"
#include "rotary.cuh"
#include "swiglu.cuh"

#define MIX_DISPATCH(dtype, ...)     \
  switch (dtype) {                   \
    case 0: {                        \
      using T = float;               \
      __VA_ARGS__;                   \
      break;                         \
    }                                \
    case 1: {                        \
      using T = __half;              \
      __VA_ARGS__;                   \
      break;                         \
    }                                \
    case 2: {                        \
      using T = __nv_bfloat16;       \
      __VA_ARGS__;                   \
      break;                         \
    }                                \
    default:                         \
      return -1;                     \
  }                                  \
  return static_cast<int>(cudaGetLastError());

#define P(ptr) static_cast<T*>(ptr)
#define C(ptr) static_cast<const T*>(ptr)
#define S(stream) static_cast<cudaStream_t>(stream)

extern "C" {

int mix_rms_norm(int dtype, const void* x, const void* residual, const void* w, void* y, void* sum_out, float* rstd,
                 int64_t rows, int64_t n, float eps, void* stream) {
  MIX_DISPATCH(dtype, mixk::rms_norm_fwd<T>(C(x), C(residual), C(w), P(y), P(sum_out), rstd, rows, n, eps, S(stream)))
}

int mix_rms_norm_bwd(int dtype, const void* x, const void* w, const float* rstd, const void* dy, void* dx, void* dw,
                     float* workspace, int64_t rows, int64_t n, void* stream) {
  MIX_DISPATCH(dtype, mixk::rms_norm_bwd<T>(C(x), C(w), rstd, C(dy), P(dx), P(dw), workspace, rows, n, S(stream)))
}

int mix_layer_norm(int dtype, const void* x, const void* w, const void* b, void* y, float* mean, float* rstd,
                   int64_t rows, int64_t n, float eps, void* stream) {
  MIX_DISPATCH(dtype, mixk::layer_norm_fwd<T>(C(x), C(w), C(b), P(y), mean, rstd, rows, n, eps, S(stream)))
}

int mix_layer_norm_bwd(int dtype, const void* x, const void* w, const float* mean, const float* rstd, const void* dy,
                       void* dx, void* dw, void* db, float* workspace, int64_t rows, int64_t n, void* stream) {
  MIX_DISPATCH(dtype, mixk::layer_norm_bwd<T>(C(x), C(w), mean, rstd, C(dy), P(dx), P(dw), P(db), workspace, rows, n,
                                              S(stream)))
}

int mix_rotary(int dtype, const void* x, const void* cos, const void* sin, void* out, int64_t b, int64_t s, int64_t t,
               int64_t d, int token_major, void* stream) {
  MIX_DISPATCH(dtype, mixk::rotary<T>(C(x), C(cos), C(sin), P(out), b, s, t, d, token_major != 0, S(stream)))
}

int mix_rotary_bwd(int dtype, const void* dout, const void* cos, const void* sin, void* dx, int64_t b, int64_t s,
                   int64_t t, int64_t d, int token_major, void* stream) {
  MIX_DISPATCH(dtype, mixk::rotary_bwd<T>(C(dout), C(cos), C(sin), P(dx), b, s, t, d, token_major != 0, S(stream)))
}

int mix_swiglu(int dtype, const void* gate, const void* up, void* out, int64_t rows, int64_t n, int64_t gate_stride,
               int64_t up_stride, void* stream) {
  MIX_DISPATCH(dtype, mixk::swiglu<T>(C(gate), C(up), P(out), rows, n, gate_stride, up_stride, S(stream)))
}

int mix_swiglu_bwd(int dtype, const void* gate, const void* up, const void* dout, void* dgate, void* dup, int64_t rows,
                   int64_t n, int64_t gate_stride, int64_t up_stride, void* stream) {
  MIX_DISPATCH(dtype, mixk::swiglu_bwd<T>(C(gate), C(up), C(dout), P(dgate), P(dup), rows, n, gate_stride, up_stride,
                                          S(stream)))
}

int mix_quick_gelu(int dtype, const void* x, void* out, int64_t count, void* stream) {
  MIX_DISPATCH(dtype, mixk::quick_gelu<T>(C(x), P(out), count, S(stream)))
}

int mix_quick_gelu_bwd(int dtype, const void* x, const void* dout, void* dx, int64_t count, void* stream) {
  MIX_DISPATCH(dtype, mixk::quick_gelu_bwd<T>(C(x), C(dout), P(dx), count, S(stream)))
}

}  // extern "C"
