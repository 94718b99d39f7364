// Fused-op kernels for the CPU: row loops the compiler vectorises, rows spread over OpenMP threads.
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MIX_WINT8_AVX2 1  // the wint8 product's AVX2 + FMA path, chosen at run time
#endif

#ifdef MIX_WITH_MKL
// MKL's CBLAS (Paddle's bundled libmklml, linked by the build): row-major, LP64 ints, enums as ints.
extern "C" void cblas_sgemm(int layout, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                            int lda, const float* b, int ldb, float beta, float* c, int ldc);
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MIX_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MIX_CLONES
#endif

namespace mix {
namespace {

// Below this much work (values x a cost factor per op) a call runs on the calling thread: waking the
// sleeping pool (KMP_BLOCKTIME=0) costs 10-30 us here, more than a decode step's op of 1-18k values.
constexpr int64_t kParallelWork = 1 << 18;

int threads_for(int64_t work) {
#ifdef _OPENMP
  return work >= kParallelWork ? omp_get_max_threads() : 1;
#else
  (void)work;
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// exp(x) for float, branch-free so that loops calling it vectorise (Cephes expf: a degree-6 polynomial
// on the reduced argument, about 1 ulp); inputs are clamped to the finite range of float. The clamps
// vectorise only under -fno-trapping-math, which the build passes.
inline float vexp(float x) {
  x = x < -87.33f ? -87.33f : x;
  x = x > 88.72f ? 88.72f : x;
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return y * __builtin_bit_cast(float, bits);
}

// exp(x) for x <= 0 (scores less their row maximum), about 1 ulp like vexp with fewer instructions: one clamp,
// 2^n taken from the bits of the rounding sum (its low bits hold n + 127 with this bias), and the polynomial
// in Estrin's form (shorter dependency chains).
inline float vexp_nonpositive(float x) {
  constexpr float kRound = 12583039.0f;  // 1.5 * 2^23 + 127
  x = std::max(x, -87.33f);
  float t = x * 1.44269504088896341f + kRound;
  float n = t - kRound;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float r2 = r * r, r4 = r2 * r2;
  float p = (5.0000001201e-1f + r * 1.6666665459e-1f) + r2 * (4.1665795894e-2f + r * 8.3334519073e-3f) +
            r4 * (1.3981999507e-3f + r * 1.9875691500e-4f);
  uint32_t scale = __builtin_bit_cast(uint32_t, t) << 23;
  return (p * r2 + r + 1.0f) * __builtin_bit_cast(float, scale);
}

MIX_CLONES float sum_squares(const float* __restrict x, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * x[i];
  return acc;
}

MIX_CLONES float add_sum_squares(const float* __restrict x, const float* __restrict r, float* __restrict s,
                                 int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] + r[i];
    s[i] = v;
    acc += v * v;
  }
  return acc;
}

MIX_CLONES void scale_row(const float* __restrict x, const float* __restrict w, float* __restrict y, float r,
                          int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = w[i] * (x[i] * r);
}

MIX_CLONES void rms_bwd_row(const float* __restrict x, const float* __restrict w, float r,
                            const float* __restrict dy, float* __restrict dx, float* __restrict dw, int64_t n) {
  // y = w x r, r = (mean(x^2) + eps)^-1/2  =>  dx = r g - x r^3 mean(g x), g = dy w.
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += dy[i] * w[i] * x[i];
  float c = r * r * r * dot / static_cast<float>(n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = r * dy[i] * w[i] - c * x[i];
    dw[i] += dy[i] * x[i] * r;
  }
}

MIX_CLONES void layer_norm_row(const float* __restrict x, const float* __restrict w, const float* __restrict b,
                               float* __restrict y, float* mean_out, float* rstd_out, int64_t n, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  float mean = sum / static_cast<float>(n);
  float var = 0.f;  // two passes: E[(x - mean)^2] keeps precision when |mean| >> std
#pragma omp simd reduction(+ : var)
  for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
  float r = 1.0f / std::sqrt(var / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * r * w[i] + b[i];
  *mean_out = mean;
  *rstd_out = r;
}

MIX_CLONES void layer_norm_bwd_row(const float* __restrict x, const float* __restrict w, float mean, float r,
                                   const float* __restrict dy, float* __restrict dx, float* __restrict dw,
                                   float* __restrict db, int64_t n) {
  // xhat = (x - mean) r, g = dy w  =>  dx = r (g - mean(g) - xhat mean(g xhat)).
  float sg = 0.f, sgx = 0.f;
#pragma omp simd reduction(+ : sg, sgx)
  for (int64_t i = 0; i < n; ++i) {
    float g = dy[i] * w[i];
    sg += g;
    sgx += g * (x[i] - mean) * r;
  }
  float inv_n = 1.0f / static_cast<float>(n);
  sg *= inv_n;
  sgx *= inv_n;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float xhat = (x[i] - mean) * r;
    dx[i] = r * (dy[i] * w[i] - sg - xhat * sgx);
    dw[i] += dy[i] * xhat;
    db[i] += dy[i];
  }
}

MIX_CLONES void rotate_row(const float* __restrict x, const float* __restrict c, const float* __restrict s,
                           float* __restrict y, int64_t half) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) y[i] = x[i] * c[i] - x[i + half] * s[i];
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
}

MIX_CLONES void rotate_row_bwd(const float* __restrict g, const float* __restrict c, const float* __restrict s,
                               float* __restrict dx, int64_t half) {
  // The transpose of y1 = x1 c1 - x2 s1, y2 = x2 c2 + x1 s2.
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) dx[i] = g[i] * c[i] + g[i + half] * s[i + half];
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) dx[i + half] = g[i + half] * c[i + half] - g[i] * s[i];
}

MIX_CLONES void swiglu_row(const float* __restrict g, const float* __restrict u, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1.0f + vexp(-g[i])) * u[i];
}

MIX_CLONES void swiglu_bwd_row(const float* __restrict g, const float* __restrict u, const float* __restrict dy,
                               float* __restrict dg, float* __restrict du, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float sig = 1.0f / (1.0f + vexp(-g[i]));
    du[i] = dy[i] * g[i] * sig;
    dg[i] = dy[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
  }
}

MIX_CLONES void quick_gelu_span(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + vexp(-1.702f * x[i]));
}

MIX_CLONES void quick_gelu_bwd_span(const float* __restrict x, const float* __restrict dy, float* __restrict dx,
                                    int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float sig = 1.0f / (1.0f + vexp(-1.702f * x[i]));
    dx[i] = dy[i] * (sig + 1.702f * x[i] * sig * (1.0f - sig));
  }
}

MIX_CLONES void bias_quick_gelu_row(const float* __restrict x, const float* __restrict b, float* __restrict y,
                                    int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] + b[i];
    y[i] = v / (1.0f + vexp(-1.702f * v));
  }
}

// exp(x - max) over the first `len` of a row's n scores, zeros after them (keys a causal query does not see);
// returns the sum. The row is in cache, so the passes over it are cheap.
MIX_CLONES float exp_row(float* __restrict x, int64_t len, int64_t n) {
  float top = x[0];
#pragma omp simd reduction(max : top)
  for (int64_t i = 0; i < len; ++i) {
    float v = x[i];
    top = v > top ? v : top;  // std::max (by reference) keeps GCC from vectorising: 13x slower here
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < len; ++i) {
    float e = vexp_nonpositive(x[i] - top);
    x[i] = e;
    sum += e;
  }
  for (int64_t i = len; i < n; ++i) x[i] = 0.f;
  return sum;
}

MIX_CLONES void scale_in_place(float* __restrict x, float r, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] *= r;
}

// Runs f(start, length) over count values in spans of whole cache lines, spread over the threads.
template <typename F>
void over_spans(int64_t count, int64_t cost, F f) {
  constexpr int64_t kSpan = 4096;
  int64_t spans = (count + kSpan - 1) / kSpan;
#pragma omp parallel for schedule(static) num_threads(threads_for(count * cost))
  for (int64_t i = 0; i < spans; ++i) f(i * kSpan, std::min(kSpan, count - i * kSpan));
}

// Sums per-thread partial gradients (threads x n) into out (n).
void reduce_partials(const std::vector<float>& partial, int threads, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = 0.f;
  for (int t = 0; t < threads; ++t) {
    const float* p = partial.data() + static_cast<size_t>(t) * n;
    for (int64_t i = 0; i < n; ++i) out[i] += p[i];
  }
}

}  // namespace

void rms_norm_fwd(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t n, float eps) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * n))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float inv = 1.0f / std::sqrt(sum_squares(xr, n) / static_cast<float>(n) + eps);
    scale_row(xr, w, y + r * n, inv, n);
    rstd[r] = inv;
  }
}

void add_rms_norm_fwd(const float* x, const float* residual, const float* w, float* y, float* sum, float* rstd,
                      int64_t rows, int64_t n, float eps) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * n))
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = sum + r * n;
    float inv = 1.0f / std::sqrt(add_sum_squares(x + r * n, residual + r * n, sr, n) / static_cast<float>(n) + eps);
    scale_row(sr, w, y + r * n, inv, n);
    rstd[r] = inv;
  }
}

void rms_norm_bwd(const float* x, const float* w, const float* rstd, const float* dy, float* dx, float* dw,
                  int64_t rows, int64_t n) {
  int threads = threads_for(rows * n);
  std::vector<float> partial(static_cast<size_t>(threads) * n, 0.f);
#pragma omp parallel num_threads(threads)
  {
    float* mine = partial.data() + static_cast<size_t>(thread_id()) * n;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) rms_bwd_row(x + r * n, w, rstd[r], dy + r * n, dx + r * n, mine, n);
  }
  reduce_partials(partial, threads, n, dw);
}

void layer_norm_fwd(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                    int64_t rows, int64_t n, float eps) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * n))
  for (int64_t r = 0; r < rows; ++r) layer_norm_row(x + r * n, w, b, y + r * n, mean + r, rstd + r, n, eps);
}

void layer_norm_bwd(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                    float* dx, float* dw, float* db, int64_t rows, int64_t n) {
  int threads = threads_for(rows * n);
  std::vector<float> pw(static_cast<size_t>(threads) * n, 0.f), pb(static_cast<size_t>(threads) * n, 0.f);
#pragma omp parallel num_threads(threads)
  {
    size_t offset = static_cast<size_t>(thread_id()) * n;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      layer_norm_bwd_row(x + r * n, w, mean[r], rstd[r], dy + r * n, dx + r * n, pw.data() + offset,
                         pb.data() + offset, n);
  }
  reduce_partials(pw, threads, n, dw);
  reduce_partials(pb, threads, n, db);
}

// Calls f(row of x's layout, row of the (B, S, T) layout, t) for every row, in x's order (contiguous reads).
template <typename F>
void over_rotary_rows(int64_t b, int64_t s, int64_t t, int64_t d, bool token_major, F f) {
  int64_t rows = b * s * t;
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * d))
  for (int64_t r = 0; r < rows; ++r) {
    int64_t bi = r / (s * t), ti, si;
    if (token_major) {
      ti = (r / s) % t;
      si = r % s;
    } else {
      si = (r / t) % s;
      ti = r % t;
    }
    f(r, (bi * s + si) * t + ti, ti);
  }
}

void rotary(const float* x, const float* cos, const float* sin, float* out, int64_t b, int64_t s, int64_t t,
            int64_t d, bool token_major) {
  over_rotary_rows(b, s, t, d, token_major, [=](int64_t src, int64_t dst, int64_t ti) {
    rotate_row(x + src * d, cos + ti * d, sin + ti * d, out + dst * d, d / 2);
  });
}

void rotary_bwd(const float* dout, const float* cos, const float* sin, float* dx, int64_t b, int64_t s, int64_t t,
                int64_t d, bool token_major) {
  over_rotary_rows(b, s, t, d, token_major, [=](int64_t src, int64_t dst, int64_t ti) {
    rotate_row_bwd(dout + dst * d, cos + ti * d, sin + ti * d, dx + src * d, d / 2);
  });
}

void rotary_tables(const float* positions, const float* inv_freq, const std::vector<int>& section, float* cos,
                   float* sin, int64_t p, int64_t t, int64_t d) {
  int64_t half = d / 2;
  std::vector<int64_t> component(half, 0);
  int64_t j = 0;
  for (size_t k = 0; k < section.size(); ++k)
    for (int i = 0; i < section[k] && j < half; ++i) component[j++] = static_cast<int64_t>(k) % p;
#pragma omp parallel for schedule(static) num_threads(threads_for(t * d * 8))
  for (int64_t ti = 0; ti < t; ++ti) {
    for (int64_t i = 0; i < half; ++i) {
      float angle = positions[component[i] * t + ti] * inv_freq[i];
      float c = std::cos(angle), s = std::sin(angle);
      cos[ti * d + i] = cos[ti * d + i + half] = c;
      sin[ti * d + i] = sin[ti * d + i + half] = s;
    }
  }
}

void swiglu(const float* gate, const float* up, float* out, int64_t rows, int64_t n, int64_t gate_stride,
            int64_t up_stride) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * n * 4))
  for (int64_t r = 0; r < rows; ++r) swiglu_row(gate + r * gate_stride, up + r * up_stride, out + r * n, n);
}

void swiglu_bwd(const float* gate, const float* up, const float* dout, float* dgate, float* dup, int64_t rows,
                int64_t n, int64_t gate_stride, int64_t up_stride) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * n * 4))
  for (int64_t r = 0; r < rows; ++r)
    swiglu_bwd_row(gate + r * gate_stride, up + r * up_stride, dout + r * n, dgate + r * gate_stride,
                   dup + r * up_stride, n);
}

void quick_gelu(const float* x, float* out, int64_t count) {
  over_spans(count, 4, [=](int64_t start, int64_t n) { quick_gelu_span(x + start, out + start, n); });
}

void quick_gelu_bwd(const float* x, const float* dout, float* dx, int64_t count) {
  over_spans(count, 4, [=](int64_t start, int64_t n) { quick_gelu_bwd_span(x + start, dout + start, dx + start, n); });
}

void bias_quick_gelu(const float* x, const float* bias, float* out, int64_t rows, int64_t n) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * n * 4))
  for (int64_t r = 0; r < rows; ++r) bias_quick_gelu_row(x + r * n, bias, out + r * n, n);
}

namespace {

// Output channels per task of wint8_matmul: four rows of weights read side by side (four independent sums
// keep the FMA pipes busy; one sum waits on its own latency), and the x row is read once for all four.
constexpr int64_t kWint8Rows = 4;

// GCC's `omp simd` reduction over four sums with an int8 -> float conversion keeps per-lane arrays in memory
// (15 GB/s of int8 here, half the read bandwidth), so the AVX2 path is written with intrinsics and chosen at
// run time; the portable loop below is the fallback (and what other compilers and machines get).
#ifdef MIX_WINT8_AVX2

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline __m256 widen8(const int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}

__attribute__((target("avx2,fma"))) void dot4_i8_avx2(const float* __restrict x, const int8_t* __restrict w,
                                                       int64_t k, float* out) {
  const int8_t *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 xi = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(xi, widen8(w0 + i), a0);
    a1 = _mm256_fmadd_ps(xi, widen8(w1 + i), a1);
    a2 = _mm256_fmadd_ps(xi, widen8(w2 + i), a2);
    a3 = _mm256_fmadd_ps(xi, widen8(w3 + i), a3);
  }
  float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
  for (; i < k; ++i) {
    s0 += x[i] * w0[i], s1 += x[i] * w1[i], s2 += x[i] * w2[i], s3 += x[i] * w3[i];
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

bool has_avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#endif

void dot4_i8_plain(const float* __restrict x, const int8_t* __restrict w, int64_t k, float* out) {
  for (int64_t j = 0; j < kWint8Rows; ++j) {
    const int8_t* wj = w + j * k;
    float acc = 0.f;
    for (int64_t i = 0; i < k; ++i) acc += x[i] * static_cast<float>(wj[i]);
    out[j] = acc;
  }
}

void dot4_i8(const float* x, const int8_t* w, int64_t k, float* out) {
#ifdef MIX_WINT8_AVX2
  if (has_avx2_fma()) return dot4_i8_avx2(x, w, k, out);
#endif
  dot4_i8_plain(x, w, k, out);
}

MIX_CLONES float dot_i8(const float* __restrict x, const int8_t* __restrict w, int64_t k) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < k; ++i) acc += x[i] * static_cast<float>(w[i]);
  return acc;
}

MIX_CLONES void dequant_row(const int8_t* __restrict w, float s, float* __restrict out, int64_t k) {
#pragma omp simd
  for (int64_t i = 0; i < k; ++i) out[i] = static_cast<float>(w[i]) * s;
}

// Rows [n0, n0 + count) of the output for every x row.
void wint8_block(const float* x, const int8_t* w, const float* scale, float* y, int64_t m, int64_t k, int64_t n,
                 int64_t n0, int64_t count) {
  float sums[kWint8Rows];
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    float* yr = y + r * n;
    if (count == kWint8Rows) {
      dot4_i8(xr, w + n0 * k, k, sums);
      for (int64_t j = 0; j < kWint8Rows; ++j) yr[n0 + j] = sums[j] * scale[n0 + j];
    } else {
      for (int64_t j = n0; j < n0 + count; ++j) yr[j] = dot_i8(xr, w + j * k, k) * scale[j];
    }
  }
}

}  // namespace

void wint8_matmul(const float* x, const int8_t* w, const float* scale, float* y, int64_t m, int64_t k, int64_t n) {
  int64_t blocks = (n + kWint8Rows - 1) / kWint8Rows;
#pragma omp parallel for schedule(static) num_threads(threads_for(n * k))
  for (int64_t b = 0; b < blocks; ++b) {
    int64_t n0 = b * kWint8Rows;
    wint8_block(x, w, scale, y, m, k, n, n0, std::min(kWint8Rows, n - n0));
  }
}

void wint8_dequant(const int8_t* w, const float* scale, float* out, int64_t n, int64_t k) {
#pragma omp parallel for schedule(static) num_threads(threads_for(n * k))
  for (int64_t r = 0; r < n; ++r) dequant_row(w + r * k, scale[r], out + r * k, k);
}

#ifdef MIX_WITH_MKL
namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
// Query rows per tile: as many as keep 64k scores (256 KB) in a core's L2, 64 to 256 of them (64-256 measured
// alike for the sgemms; for 4096 keys, tiles of 16 rows took 427 ms and tiles of 64 rows 349 ms).
constexpr int64_t kTileScores = 1 << 16, kMinTile = 64, kMaxTile = 256;

// One tile: rows [r0, r0 + rows) of one (batch, query head) against its key/value head.
void attention_tile(const float* q, const float* k, const float* v, float* out, int64_t rows, int64_t r0, int64_t t,
                    int64_t s, int64_t d, const HeadLayout& ql, const HeadLayout& kvl, const HeadLayout& ol,
                    float scale, bool causal, float* scores, float* sums) {
  int64_t keys = causal ? std::min(s, r0 + rows + s - t) : s;  // the last row's causal limit
  cblas_sgemm(kRowMajor, kNoTrans, kTrans, rows, keys, d, scale, q, ql.row, k, kvl.row, 0.f, scores, keys);
  for (int64_t i = 0; i < rows; ++i) {
    int64_t seen = causal ? std::min(keys, r0 + i + s - t + 1) : keys;
    sums[i] = exp_row(scores + i * keys, seen, keys);
  }
  cblas_sgemm(kRowMajor, kNoTrans, kNoTrans, rows, d, keys, 1.f, scores, keys, v, kvl.row, 0.f, out, ol.row);
  for (int64_t i = 0; i < rows; ++i) scale_in_place(out + i * ol.row, 1.0f / sums[i], d);
}

}  // namespace

void attention(const float* q, const float* k, const float* v, float* out, int64_t b, int64_t h_q, int64_t h_kv,
               int64_t t, int64_t s, int64_t d, HeadLayout ql, HeadLayout kvl, HeadLayout ol, float scale,
               bool causal) {
  int64_t tile = std::min(t, std::max(kMinTile, std::min(kMaxTile, kTileScores / s)));
  int64_t tiles = (t + tile - 1) / tile, group = h_q / h_kv, items = b * h_q * tiles;
  // Inside a parallel region MKL runs each sgemm on the calling thread; tiles interleave over threads
  // (static, 1) so that causal tiles, which grow with the row, spread evenly.
#pragma omp parallel num_threads(threads_for(b * h_q * t * s * d))
  {
    // 64-byte aligned: MKL's results may depend on its operands' alignment, and a tile's must not vary.
    size_t bytes = (static_cast<size_t>(tile) * s * sizeof(float) + 63) / 64 * 64;
    std::unique_ptr<float, decltype(&std::free)> scores(static_cast<float*>(std::aligned_alloc(64, bytes)), &std::free);
    std::vector<float> sums(tile);
#pragma omp for schedule(static, 1)
    for (int64_t item = 0; item < items; ++item) {
      int64_t bh = item / tiles, r0 = (item % tiles) * tile, bi = bh / h_q, hi = bh % h_q, kv = hi / group;
      const float* qt = q + bi * ql.batch + hi * ql.head + r0 * ql.row;
      const float* kt = k + bi * kvl.batch + kv * kvl.head;
      const float* vt = v + bi * kvl.batch + kv * kvl.head;
      float* ot = out + bi * ol.batch + hi * ol.head + r0 * ol.row;
      attention_tile(qt, kt, vt, ot, std::min(tile, t - r0), r0, t, s, d, ql, kvl, ol, scale, causal, scores.get(),
                     sums.data());
    }
  }
}
#endif

}  // namespace mix

// The wint8 product for callers without Paddle tensors (the NumPy decode path, through ctypes): a few
// microseconds per call where a Paddle op costs ~20.
extern "C" void mix_host_wint8_matmul(const float* x, const int8_t* w, const float* scale, float* y, int64_t m,
                                      int64_t k, int64_t n) {
  mix::wint8_matmul(x, w, scale, y, m, k, n);
}
