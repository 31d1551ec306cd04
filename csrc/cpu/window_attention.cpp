// CPU kernels of flexops::window_attention and its backward (Swin window attention, SwinIR numerics).
//
// One task per (active window, head). Its q, k and v rows are gathered by index arithmetic (the
// forward first copies its window's token rows, whole, once for all heads), so the cyclic shift and
// the window partition never materialise in the map's layout; the N x N
// logits live in a per-thread buffer that stays in cache. The products run through a small
// register-blocked matmul (ATen does not export its BLAS to extensions, and a dispatched op per
// 64 x 64 product would cost more than the product) and the softmax through a vector exp, both
// built for the baseline ISA and cloned for AVX2 + FMA, picked at load time. Pairs of different
// shift regions get mask_value added to their logits (-inf by default: excluded outright; SwinIR's
// -100 on request): only the windows on the wrap-around seam mix regions, and only they pay for the
// label test. The backward recomputes each window's probabilities instead of storing them;
// the relative-position-bias gradient is summed per fixed block of windows and then over blocks in
// order, so results do not depend on the thread count. The bias is [heads, N, N] for the batch or
// [B, heads, N, N] per image; a per-image bias's blocks each hold windows of one image.
// bfloat16 and float16: the forward widens each window as it copies it and rounds the output as it
// scatters it, computing in float32; the backward widens its arguments whole (cpu/in_float32.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu/in_float32.h"
#include "cpu/kept_memory.h"

namespace flexops {
namespace {

using at::Tensor;

// Blocks of windows whose bias-gradient partials are summed separately (fixed, not the thread
// count, because it sets the summation order); a per-image bias splits them among the images.
constexpr int64_t kBiasBlocks = 32;

struct Geometry {
  int64_t batch, height, width, heads, head_dim, window, shift;
  int64_t rows, cols, tokens;
  bool bias_per_image = false;  // rel_pos_bias is [B, heads, N, N], not [heads, N, N]
  int64_t channels() const { return heads * head_dim; }
  int64_t windows() const { return batch * rows * cols; }
  // Offset of the [N, N] bias of head h for the windows of image `image`.
  int64_t bias_offset(int64_t image, int64_t h) const {
    return ((bias_per_image ? image * heads : 0) + h) * tokens * tokens;
  }
};

Geometry geometry(const Tensor& qkv, int64_t heads, int64_t window, int64_t shift,
                  const std::optional<Tensor>& bias, const std::optional<Tensor>& active) {
  TORCH_CHECK(qkv.dim() == 4, "window_attention: qkv must be [B, H, W, 3C], got ", qkv.sizes());
  TORCH_CHECK(heads > 0 && qkv.size(3) % (3 * heads) == 0, "window_attention: qkv's last dim ",
              qkv.size(3), " must be 3 * num_heads * head_dim with num_heads = ", heads);
  TORCH_CHECK(window > 0 && qkv.size(1) % window == 0 && qkv.size(2) % window == 0,
              "window_attention: H and W must be multiples of window_size ", window, ", got ",
              qkv.sizes());
  TORCH_CHECK(shift >= 0 && shift < window, "window_attention: shift_size must be in [0, ",
              window, "), got ", shift);
  Geometry g{qkv.size(0), qkv.size(1), qkv.size(2), heads, qkv.size(3) / (3 * heads), window,
             shift, qkv.size(1) / window, qkv.size(2) / window, window * window};
  if (bias) {
    g.bias_per_image = bias->dim() == 4;
    TORCH_CHECK(bias->sizes() == at::IntArrayRef({heads, g.tokens, g.tokens}) ||
                    bias->sizes() == at::IntArrayRef({g.batch, heads, g.tokens, g.tokens}),
                "window_attention: rel_pos_bias must be [heads, N, N] = [", heads, ", ", g.tokens,
                ", ", g.tokens, "] or [B, heads, N, N] = [", g.batch, ", ", heads, ", ", g.tokens,
                ", ", g.tokens, "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == qkv.scalar_type() && bias->device() == qkv.device(),
                "window_attention: rel_pos_bias must have qkv's dtype and device");
  }
  if (active) {
    TORCH_CHECK(active->scalar_type() == at::kBool && active->device() == qkv.device() &&
                    active->sizes() == at::IntArrayRef({g.batch, g.rows, g.cols}),
                "window_attention: active must be bool [B, H/ws, W/ws] = [", g.batch, ", ", g.rows,
                ", ", g.cols, "], got ", active->sizes());
  }
  return g;
}

// Indices (batch * rows * cols order) of the windows to compute and of those to zero.
std::pair<std::vector<int64_t>, std::vector<int64_t>> split_windows(
    const Geometry& g, const std::optional<Tensor>& active) {
  std::vector<int64_t> on, off;
  if (!active) {
    on.resize(g.windows());
    for (int64_t w = 0; w < g.windows(); ++w) on[w] = w;
    return {on, off};
  }
  const Tensor flags = active->contiguous();
  const bool* flag = flags.data_ptr<bool>();
  for (int64_t w = 0; w < g.windows(); ++w) (flag[w] ? on : off).push_back(w);
  return {on, off};
}

// The backward's blocks of windows: ranges [first, last) of the computed windows `on`, at most
// kBiasBlocks of them, each within one image when the bias is per image. Blocks first[i] to
// first[i + 1] make up bias i (the only one when it is shared, image i when per image).
struct BiasBlocks {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  std::vector<int64_t> first;

  BiasBlocks(const std::vector<int64_t>& on, const Geometry& g) {
    const int64_t count = static_cast<int64_t>(on.size());
    const int64_t biases = g.bias_per_image ? g.batch : 1;
    const int64_t per_image = g.rows * g.cols;
    const int64_t blocks_per_bias = std::max<int64_t>(1, kBiasBlocks / biases);
    int64_t begin = 0;
    for (int64_t image = 0; image < biases; ++image) {
      first.push_back(static_cast<int64_t>(ranges.size()));
      // `on` is sorted, so the windows of one image are contiguous in it.
      const int64_t end = g.bias_per_image
          ? std::lower_bound(on.begin(), on.end(), (image + 1) * per_image) - on.begin()
          : count;
      const int64_t size = end - begin, blocks = std::min(blocks_per_bias, size);
      const int64_t step = blocks ? (size + blocks - 1) / blocks : 0;
      for (int64_t start = begin; start < end; start += step) ranges.emplace_back(start, std::min(end, start + step));
      begin = end;
    }
    first.push_back(static_cast<int64_t>(ranges.size()));
  }
};

// Element strides of a [B, H, W, channels] map whose channels are contiguous (the kernels' maps are:
// see unit_channel_stride).
struct Strides {
  int64_t b, h, w;
  explicit Strides(const Tensor& t) : b(t.stride(0)), h(t.stride(1)), w(t.stride(2)) {}
};

// Where the tokens of one window sit in the token map, and their shift-region labels.
struct Window {
  int64_t batch = 0;
  std::vector<int64_t> y, x;
  std::vector<int8_t> region;
  bool mixed = false;  // tokens of several regions: the softmax must test labels

  explicit Window(const Geometry& g) : y(g.tokens), x(g.tokens), region(g.tokens) {}

  void locate(const Geometry& g, int64_t index) {
    batch = index / (g.rows * g.cols);
    const int64_t wy = index / g.cols % g.rows, wx = index % g.cols;
    mixed = false;
    for (int64_t r = 0; r < g.window; ++r) {
      for (int64_t c = 0; c < g.window; ++c) {
        // Coordinates on the rolled grid; the token itself comes from `shift` further on.
        const int64_t ys = wy * g.window + r, xs = wx * g.window + c, t = r * g.window + c;
        y[t] = (ys + g.shift) % g.height;
        x[t] = (xs + g.shift) % g.width;
        region[t] = g.shift == 0 ? 0 : 3 * label(ys, g.height, g) + label(xs, g.width, g);
        mixed |= region[t] != region[0];
      }
    }
  }

  // SwinIR's slices (0, -ws), (-ws, -shift), (-shift, None) of the rolled axis.
  static int8_t label(int64_t coordinate, int64_t size, const Geometry& g) {
    return (coordinate >= size - g.window) + (coordinate >= size - g.shift);
  }

  int64_t offset(const Strides& s, int64_t t) const { return batch * s.b + y[t] * s.h + x[t] * s.w; }
};

// 32-byte SIMD vectors through GCC's vector extension: one AVX register, or two SSE ones on the
// baseline ISA. GCC notes that passing them by value has another ABI with AVX than without; every
// function here that does is internal to this file, so no caller can see the difference.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// C[m, n] = alpha * A[m, 0:k] B[0:k, n], all row-major; m a multiple of 4, n of 2 * kLanes<T>.
// A 4 x (2 vectors) block of C stays in registers while k runs: 8 accumulators, 2 loads of B and 4
// broadcasts of A per step, which fits the 16 AVX registers.
template <typename T>
[[gnu::always_inline]] inline void matmul_body(int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                                               int64_t lda, const T* b, int64_t ldb, T* c,
                                               int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t i = 0; i < m; i += 4) {
    for (int64_t j = 0; j < n; j += 2 * L) {
      Vec<T> acc[4][2] = {};
      for (int64_t p = 0; p < k; ++p) {
        const Vec<T> b0 = load(b + p * ldb + j), b1 = load(b + p * ldb + j + L);
        for (int64_t r = 0; r < 4; ++r) {
          const T a_rp = a[(i + r) * lda + p];
          acc[r][0] += a_rp * b0;
          acc[r][1] += a_rp * b1;
        }
      }
      for (int64_t r = 0; r < 4; ++r) {
        store(c + (i + r) * ldc + j, alpha * acc[r][0]);
        store(c + (i + r) * ldc + j + L, alpha * acc[r][1]);
      }
    }
  }
}

// The build targets the baseline x86-64 ISA; these clones add an AVX2 + FMA version picked at load
// time on CPUs that have it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FLEXOPS_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FLEXOPS_SIMD_CLONES
#endif

FLEXOPS_SIMD_CLONES void matmul(int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                                int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  matmul_body(m, n, k, alpha, a, lda, b, ldb, c, ldc);
}

FLEXOPS_SIMD_CLONES void matmul(int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                                int64_t lda, const double* b, int64_t ldb, double* c, int64_t ldc) {
  matmul_body(m, n, k, alpha, a, lda, b, ldb, c, ldc);
}

// token[t] = where token t of the window starts in the map.
template <typename T>
void locate_tokens(const T* map, const Strides& s, const Window& win, int64_t tokens, const T** token) {
  for (int64_t t = 0; t < tokens; ++t) token[t] = map + win.offset(s, t);
}

// The window's tokens, all `channels` of each, copied to rows[t, 0:channels], and token[t] pointed
// at them. Whole token rows stream from memory far faster than the few cache lines of one head that
// each gather reads; the heads then gather from cache. A bfloat16 or float16 map (S) is widened to
// float32 (T) here, one window at a time.
template <typename S, typename T>
void copy_window(const S* map, const Strides& s, const Window& win, int64_t channels, int64_t tokens,
                 T* rows, const T** token) {
  for (int64_t t = 0; t < tokens; ++t) {
    token[t] = std::copy_n(map + win.offset(s, t), channels, rows + t * channels) - channels;
  }
}

// rows[t, 0:head_dim] = token[t][channel0 : channel0 + head_dim] (row stride ld).
template <typename T>
void gather(const T* const* token, int64_t channel0, int64_t head_dim, int64_t tokens, T* rows, int64_t ld) {
  for (int64_t t = 0; t < tokens; ++t) std::copy_n(token[t] + channel0, head_dim, rows + t * ld);
}

// columns[0:head_dim, t] = token[t][channel0 : channel0 + head_dim] (row stride ld).
template <typename T>
void gather_transposed(const T* const* token, int64_t channel0, int64_t head_dim, int64_t tokens,
                       T* columns, int64_t ld) {
  for (int64_t t = 0; t < tokens; ++t) {
    const T* src = token[t] + channel0;
    for (int64_t d = 0; d < head_dim; ++d) columns[d * ld + t] = src[d];
  }
}

// The rows back into the map's tokens at channel0 (rounded to the map's type S where it is narrower).
template <typename T, typename S>
void scatter(const T* rows, int64_t ld, const Window& win, int64_t channel0, int64_t head_dim,
             int64_t tokens, const Strides& s, S* map) {
  for (int64_t t = 0; t < tokens; ++t) {
    std::copy(rows + t * ld, rows + t * ld + head_dim, map + win.offset(s, t) + channel0);
  }
}

// Zeros all `channels` of the tokens of the windows `indices` (the ones not computed).
template <typename T>
void zero_windows(const std::vector<int64_t>& indices, const Geometry& g, int64_t channels,
                  const Strides& s, T* map) {
  at::parallel_for(0, static_cast<int64_t>(indices.size()), 16, [&](int64_t begin, int64_t end) {
    Window win(g);
    for (int64_t i = begin; i < end; ++i) {
      win.locate(g, indices[i]);
      for (int64_t t = 0; t < g.tokens; ++t) std::fill_n(map + win.offset(s, t), channels, T(0));
    }
  });
}

// dst[j, i] = src[i, j] for i, j < n (both row stride ld).
template <typename T>
void transpose(const T* src, int64_t n, int64_t ld, T* dst) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) dst[j * ld + i] = src[i * ld + j];
  }
}

// e^x lane by lane, x <= 0 (softmax arguments): Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2,
// a degree-6 polynomial for e^r (Cephes' expf coefficients, about 1 ulp), 2^k through the exponent
// bits. Below -87.3 (where e^x leaves the normal floats) and for -inf it gives 0.
inline Vec<float> exp_nonpositive(Vec<float> x) {
  using Int = VecOf<int32_t>::type;
  const Vec<float> clamped = x < -87.3f ? Vec<float>{} - 87.3f : x;
  const Vec<float> t = clamped * 1.44269504f;
  const Int k = __builtin_convertvector(t - 0.5f, Int);  // round to nearest (t <= 0 truncates up)
  const Vec<float> kf = __builtin_convertvector(k, Vec<float>);
  const Vec<float> r = clamped - kf * 0.693359375f + kf * 2.12194440e-4f;
  Vec<float> p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  Vec<float> scale;
  const Int bits = (k + 127) << 23;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? Vec<float>{} : p * scale;
}

// The double kernels serve gradcheck, not speed: libm, lane by lane.
inline Vec<double> exp_nonpositive(Vec<double> x) {
  for (int64_t lane = 0; lane < kLanes<double>; ++lane) x[lane] = std::exp(x[lane]);
  return x;
}

// logits[0:n, 0:n] (row stride ld, a multiple of the vector width) += bias, pairs of different
// shift regions += mask_value (-inf: probability 0), then each row becomes its softmax. Every row
// keeps its own token, so no row is empty. Columns from n to the next vector boundary are
// overwritten (with 0).
template <typename T>
[[gnu::always_inline]] inline void softmax_body(T* logits, int64_t ld, const T* bias,
                                                const int8_t* region, T mask_value, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  const int64_t padded = round_up(n, L);
  constexpr T kExcluded = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    T* row = logits + i * ld;
    if (bias) {
      const T* bias_row = bias + i * n;
      for (int64_t j = 0; j < n; ++j) row[j] += bias_row[j];
    }
    if (region) {
      for (int64_t j = 0; j < n; ++j) row[j] += region[j] == region[i] ? T(0) : mask_value;
    }
    std::fill(row + n, row + padded, kExcluded);
    Vec<T> max = load(row);
    for (int64_t j = L; j < padded; j += L) {
      const Vec<T> x = load(row + j);
      max = x > max ? x : max;
    }
    T row_max = max[0];
    for (int64_t lane = 1; lane < L; ++lane) row_max = std::max(row_max, max[lane]);
    Vec<T> sum{};
    for (int64_t j = 0; j < padded; j += L) {
      const Vec<T> e = exp_nonpositive(load(row + j) - row_max);
      store(row + j, e);
      sum += e;
    }
    T total = 0;
    for (int64_t lane = 0; lane < L; ++lane) total += sum[lane];
    const T inverse = T(1) / total;
    for (int64_t j = 0; j < padded; j += L) store(row + j, load(row + j) * inverse);
  }
}

FLEXOPS_SIMD_CLONES void softmax_rows(float* logits, int64_t ld, const float* bias,
                                      const int8_t* region, float mask_value, int64_t n) {
  softmax_body(logits, ld, bias, region, mask_value, n);
}

FLEXOPS_SIMD_CLONES void softmax_rows(double* logits, int64_t ld, const double* bias,
                                      const int8_t* region, double mask_value, int64_t n) {
  softmax_body(logits, ld, bias, region, mask_value, n);
}

// Per-thread buffers of one (window, head) task, row-major and zero-padded for matmul: token rows
// to a multiple of 4, head-dim and token columns to whole vector pairs. Products only ever reduce
// over the real tokens or head dims, so padding never reaches a stored result.
template <typename T>
struct Task {
  int64_t n, d, rows, dim_ld, token_ld;
  std::vector<T> q, k, kt, v, vt, out, probs, probs_t, grad_out, grad_probs, grad_logits_t, grad_q,
      grad_k, grad_v;

  Task(const Geometry& g, bool backward)
      : n(g.tokens), d(g.head_dim), rows(round_up(g.tokens, 4)),
        dim_ld(round_up(g.head_dim, 2 * kLanes<T>)), token_ld(round_up(g.tokens, 2 * kLanes<T>)) {
    const int64_t token_rows = rows * dim_ld, square = rows * token_ld, dim_rows = d * token_ld;
    q.resize(token_rows);
    kt.resize(dim_rows);
    v.resize(token_rows);
    out.resize(token_rows);
    probs.resize(square);
    if (backward) {
      for (auto* b : {&k, &grad_out, &grad_q, &grad_k, &grad_v}) b->resize(token_rows);
      for (auto* b : {&probs_t, &grad_probs, &grad_logits_t}) b->resize(square);
      vt.resize(dim_rows);
    }
  }

  // probs = softmax(scale q k^T + bias + shift mask) from the gathered q and kt.
  void attention_probs(const T* bias, const Window& win, T scale, T mask_value) {
    matmul(rows, token_ld, d, scale, q.data(), dim_ld, kt.data(), token_ld, probs.data(), token_ld);
    softmax_rows(probs.data(), token_ld, bias, win.mixed ? win.region.data() : nullptr, mask_value, n);
  }
};

// Maps of S, in float32 for bfloat16 and float16 (T, which the bias is in): each window is widened
// as it is copied and its output rounded as it is scattered, so no float32 copy of the map or the
// output is made (SwinIR-M's qkv map at 64x64 is 8.8 MB in float32).
template <typename S, typename T = at::opmath_type<S>>
void forward_kernel(const Tensor& qkv, const Tensor* bias, const std::optional<Tensor>& active,
                    const Geometry& g, double scale, double mask_value, Tensor& out) {
  const auto [on, off] = split_windows(g, active);
  const Strides in(qkv), os(out);
  const S* map = qkv.const_data_ptr<S>();
  const T* bias_data = bias ? bias->const_data_ptr<T>() : nullptr;
  S* out_data = out.mutable_data_ptr<S>();
  const int64_t n = g.tokens, d = g.head_dim, c = g.channels();

  at::parallel_for(0, static_cast<int64_t>(on.size()) * g.heads, 1, [&](int64_t begin, int64_t end) {
    Task<T> task(g, false);
    Window win(g);
    std::vector<T> window_rows(n * 3 * c);
    std::vector<const T*> token(n);
    int64_t located = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t w = on[i / g.heads], h = i % g.heads;
      if (w != located) {
        win.locate(g, located = w);
        copy_window(map, in, win, 3 * c, n, window_rows.data(), token.data());
      }
      gather(token.data(), h * d, d, n, task.q.data(), task.dim_ld);
      gather_transposed(token.data(), c + h * d, d, n, task.kt.data(), task.token_ld);
      gather(token.data(), 2 * c + h * d, d, n, task.v.data(), task.dim_ld);
      task.attention_probs(bias_data ? bias_data + g.bias_offset(win.batch, h) : nullptr, win, T(scale),
                           T(mask_value));
      matmul(task.rows, task.dim_ld, n, T(1), task.probs.data(), task.token_ld, task.v.data(),
             task.dim_ld, task.out.data(), task.dim_ld);
      scatter(task.out.data(), task.dim_ld, win, h * d, d, n, os, out_data);
    }
  });
  zero_windows(off, g, c, os, out_data);
}

template <typename T>
void backward_kernel(const Tensor& grad_output, const Tensor& qkv, const Tensor* bias,
                     const std::optional<Tensor>& active, const Geometry& g, double scale,
                     double mask_value, Tensor& grad_qkv, Tensor& grad_bias) {
  const auto [on, off] = split_windows(g, active);
  const Strides in(qkv), gs(grad_output), gq(grad_qkv);
  const T* map = qkv.const_data_ptr<T>();
  const T* grad_map = grad_output.const_data_ptr<T>();
  const T* bias_data = bias ? bias->const_data_ptr<T>() : nullptr;
  T* grad_data = grad_qkv.mutable_data_ptr<T>();
  const int64_t n = g.tokens, d = g.head_dim, c = g.channels(), square = n * n;
  const BiasBlocks bias_blocks(on, g);
  const int64_t blocks = static_cast<int64_t>(bias_blocks.ranges.size());
  // partial[block][head]: the bias gradient summed over the block's windows.
  const Tensor partial_buffer = cpu::kept_zeros({bias ? blocks * g.heads * square : 0}, qkv.options());
  T* const partial = partial_buffer.mutable_data_ptr<T>();

  at::parallel_for(0, blocks * g.heads, 1, [&](int64_t begin, int64_t end) {
    Task<T> t(g, true);
    Window win(g);
    std::vector<const T*> token(n), grad_token(n);
    const int64_t ld = t.dim_ld, tld = t.token_ld;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item % g.heads;
      const auto [first, last] = bias_blocks.ranges[item / g.heads];
      const int64_t qc = h * d, kc = c + h * d, vc = 2 * c + h * d;
      T* grad_bias_part = bias ? partial + item * square : nullptr;
      for (int64_t i = first; i < last; ++i) {
        win.locate(g, on[i]);
        locate_tokens(map, in, win, n, token.data());
        locate_tokens(grad_map, gs, win, n, grad_token.data());
        gather(token.data(), qc, d, n, t.q.data(), ld);
        gather(token.data(), kc, d, n, t.k.data(), ld);
        gather_transposed(token.data(), kc, d, n, t.kt.data(), tld);
        gather_transposed(token.data(), vc, d, n, t.vt.data(), tld);
        gather(grad_token.data(), h * d, d, n, t.grad_out.data(), ld);
        t.attention_probs(bias_data ? bias_data + g.bias_offset(win.batch, h) : nullptr, win, T(scale),
                          T(mask_value));
        transpose(t.probs.data(), n, tld, t.probs_t.data());
        // dV = P^T dO, dP = dO V^T.
        matmul(t.rows, ld, n, T(1), t.probs_t.data(), tld, t.grad_out.data(), ld, t.grad_v.data(), ld);
        matmul(t.rows, tld, d, T(1), t.grad_out.data(), ld, t.vt.data(), tld, t.grad_probs.data(), tld);
        // Softmax backward, in place: dS = P * (dP - sum_j P dP), per row.
        for (int64_t r = 0; r < n; ++r) {
          const T* p = t.probs.data() + r * tld;
          T* ds = t.grad_probs.data() + r * tld;
          T dot = 0;
          for (int64_t j = 0; j < n; ++j) dot += p[j] * ds[j];
          for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - dot);
          if (grad_bias_part) {
            for (int64_t j = 0; j < n; ++j) grad_bias_part[r * n + j] += ds[j];
          }
        }
        transpose(t.grad_probs.data(), n, tld, t.grad_logits_t.data());
        // dQ = scale dS K, dK = scale dS^T Q.
        matmul(t.rows, ld, n, T(scale), t.grad_probs.data(), tld, t.k.data(), ld, t.grad_q.data(), ld);
        matmul(t.rows, ld, n, T(scale), t.grad_logits_t.data(), tld, t.q.data(), ld, t.grad_k.data(), ld);
        scatter(t.grad_q.data(), ld, win, qc, d, n, gq, grad_data);
        scatter(t.grad_k.data(), ld, win, kc, d, n, gq, grad_data);
        scatter(t.grad_v.data(), ld, win, vc, d, n, gq, grad_data);
      }
    }
  });
  zero_windows(off, g, 3 * c, gq, grad_data);
  if (bias) {
    // grad_bias[image][h] (one image when shared) = sum of its blocks' partials, in block order.
    T* grad_bias_data = grad_bias.mutable_data_ptr<T>();
    const int64_t per_bias = g.heads * square;
    at::parallel_for(0, grad_bias.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t image = j / per_bias, e = j % per_bias;
        T sum = 0;
        for (int64_t block = bias_blocks.first[image]; block < bias_blocks.first[image + 1]; ++block) {
          sum += partial[block * per_bias + e];
        }
        grad_bias_data[j] = sum;
      }
    });
  }
}

// The logit offset of pairs of different shift regions: None excludes them (-inf).
double shift_mask_value(const std::optional<double>& mask_value) {
  TORCH_CHECK(!mask_value || (!std::isnan(*mask_value) && *mask_value < std::numeric_limits<double>::infinity()),
              "window_attention: mask_value must be a number below +inf or None, got ", *mask_value);
  return mask_value.value_or(-std::numeric_limits<double>::infinity());
}

// The map with unit channel stride (only a map whose channels are strided is copied).
Tensor unit_channel_stride(const Tensor& map) {
  return map.stride(3) == 1 ? map : map.contiguous();
}

Tensor window_attention_cpu(const Tensor& qkv, int64_t num_heads, int64_t window_size,
                            int64_t shift_size, const std::optional<Tensor>& rel_pos_bias,
                            double scale, const std::optional<Tensor>& active,
                            std::optional<double> mask_value) {
  const Geometry g = geometry(qkv, num_heads, window_size, shift_size, rel_pos_bias, active);
  Tensor out = cpu::kept_empty({g.batch, g.height, g.width, g.channels()}, qkv.options());
  if (out.numel() == 0) return out;
  const Tensor map = unit_channel_stride(qkv);
  const at::ScalarType compute = at::toOpMathType(qkv.scalar_type());
  const Tensor bias = rel_pos_bias ? rel_pos_bias->to(compute).contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "window_attention_cpu", [&] {
    forward_kernel<scalar_t>(map, rel_pos_bias ? &bias : nullptr, active, g, scale,
                             shift_mask_value(mask_value), out);
  });
  return out;
}

std::tuple<Tensor, Tensor> window_attention_backward_cpu(
    const Tensor& grad_output, const Tensor& qkv, int64_t num_heads, int64_t window_size,
    int64_t shift_size, const std::optional<Tensor>& rel_pos_bias, double scale,
    const std::optional<Tensor>& active, std::optional<double> mask_value) {
  const Geometry g = geometry(qkv, num_heads, window_size, shift_size, rel_pos_bias, active);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.batch, g.height, g.width, g.channels()}) &&
                  grad_output.scalar_type() == qkv.scalar_type() && grad_output.device() == qkv.device(),
              "window_attention_backward: grad_output must be [B, H, W, C] = [", g.batch, ", ", g.height, ", ",
              g.width, ", ", g.channels(), "] with qkv's dtype and device, got ", grad_output.scalar_type(), " ",
              grad_output.sizes());
  Tensor grad_qkv = cpu::kept_empty(qkv.sizes(), qkv.options());
  Tensor grad_bias = rel_pos_bias ? cpu::kept_zeros(rel_pos_bias->sizes(), qkv.options()) : qkv.new_empty({0});
  if (grad_qkv.numel() == 0) return {grad_qkv, grad_bias};
  const Tensor map = unit_channel_stride(qkv), grad_map = unit_channel_stride(grad_output);
  const Tensor bias = rel_pos_bias ? rel_pos_bias->contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "window_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_map, map, rel_pos_bias ? &bias : nullptr, active, g, scale,
                              shift_mask_value(mask_value), grad_qkv, grad_bias);
  });
  return {grad_qkv, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("window_attention", &window_attention_cpu);  // bfloat16 and float16 widened per window
  m.impl("window_attention_backward", &cpu::InFloat32<&window_attention_backward_cpu>::call);
}

}  // namespace flexops
