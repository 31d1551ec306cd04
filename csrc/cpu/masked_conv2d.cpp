// Channel-masked convolution on CPU. Work is proportional to active inputs x active outputs per
// task.
//
// Forward with a contiguous output (float, double, bfloat16, float16): a direct kernel. One work
// item is one output sample's band of output rows. It gathers the band's input rows of the task's
// active input channels into a per-thread buffer, zero-padded and with each kernel column's offset
// (and the stride) applied, so that the inner loop is plain vector loads; packs the task's weights
// of its active channels into a per-thread buffer; and writes the active output channels straight
// into the output, clearing the inactive ones. Both buffers are kept blocks (cpu/kept_memory.h).
// The gather + oneDNN path it replaces allocated 128 KB-32 MB intermediates per task and call,
// which glibc maps and faults in afresh until its mmap threshold adapts: a fresh process paid
// ~85 ms per call for what a warmed one did in 26 ms (27 tasks, 25% of 64 -> 64 channels, 128x128). The direct kernel was faster in
// every case measured, all channels on included (64 -> 64, 160x240, one thread: 108-116 ms for 4
// maps, oneDNN 180-208 ms); channels-last outputs keep the gather + oneDNN path.
//
// The output and the backward's gradients come from kept blocks (cpu/kept_memory.h): with many tasks
// the output is many maps large, and a fresh mapping of it cost more than the convolutions.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "common/layout.h"
#include "common/masked_conv2d.h"
#include "cpu/in_float32.h"
#include "cpu/kept_memory.h"

namespace flexops {
namespace {

// One task's slice of the problem: the input samples and output rows it covers, and its channels.
struct Task {
  int64_t input_start, output_start, length;  // rows [start, start + length) of input and output
  at::Tensor in_channels, out_channels;       // int64 indices of the active channels
};

std::vector<Task> tasks(const at::Tensor& input, const at::Tensor& in_mask,
                        const at::Tensor& out_mask) {
  const int64_t count = masked::output_rows(input, in_mask, out_mask);
  const bool whole_batch = std::max(in_mask.size(0), out_mask.size(0)) == 1;
  std::vector<Task> result;
  for (int64_t t = 0; t < (whole_batch ? 1 : count); ++t) {
    Task task;
    task.input_start = input.size(0) == 1 ? 0 : t;
    task.output_start = t;
    task.length = whole_batch ? count : 1;
    task.in_channels = in_mask[in_mask.size(0) == 1 ? 0 : t].nonzero().view(-1);
    task.out_channels = out_mask[out_mask.size(0) == 1 ? 0 : t].nonzero().view(-1);
    result.push_back(std::move(task));
  }
  return result;
}

// Slices of `t` along `dim` at the sorted `index`; `t` itself when index holds all of them, so
// full masks (every channel on) cost no copies.
at::Tensor select_channels(const at::Tensor& t, int64_t dim, const at::Tensor& index) {
  return index.numel() == t.size(dim) ? t : t.index_select(dim, index);
}

// --- The gather + oneDNN path: channels-last outputs (half types widened to float32 before it). ---

void forward_onednn(const at::Tensor& input, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                    const at::Tensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation, at::Tensor& output) {
  const bool has_bias = bias.has_value() && bias->defined();
  const std::vector<Task> all = tasks(input, in_mask, out_mask);

  auto run = [&](const Task& task) {
    if (task.length == 0) {
      return;
    }
    at::Tensor out = output.narrow(0, task.output_start, task.length);
    const bool all_out = task.out_channels.numel() == out.size(1);
    const bool no_in = task.in_channels.numel() == 0;
    // Each task clears its own rows, in parallel, and only when some channel stays 0. (Clearing all
    // and then writing the active channels measured some 7x faster than filling the inactive ones.)
    if (!all_out || (no_in && !has_bias)) {
      out.zero_();
    }
    if (task.out_channels.numel() == 0 || (no_in && !has_bias)) {
      return;
    }
    const std::optional<at::Tensor> task_bias =
        has_bias ? std::optional<at::Tensor>(select_channels(*bias, 0, task.out_channels)) : std::nullopt;
    if (no_in) {  // no input reaches the output: only the bias does
      out.index_copy_(1, task.out_channels,
                      task_bias->view({1, -1, 1, 1}).expand({task.length, -1, out.size(2),
                                                             out.size(3)}));
      return;
    }
    const at::Tensor x =
        select_channels(input.narrow(0, task.input_start, task.length), 1, task.in_channels);
    const at::Tensor w =
        select_channels(select_channels(weight, 0, task.out_channels), 1, task.in_channels);
    const at::Tensor y = at::convolution(x, w, task_bias, stride, padding, dilation, false, {0, 0}, 1);
    if (all_out) {
      out.copy_(y);
    } else {
      out.index_copy_(1, task.out_channels, y);
    }
  };

  // Tasks run in parallel, each convolution on one thread: a compact TASNet-sized problem (16 -> 16
  // channels, 128x128) is too small to split over cores. Measured side by side on the shared 2-core
  // machine, 27 tasks of 25% in x 25% out channels of a 64 -> 64 3x3 conv: 120-160 ms this way,
  // ~1.2 s with the tasks one after another and each convolution on both threads.
  if (all.size() > 1) {
    // Worker threads do not inherit the caller's dispatch state: without it they would dispatch
    // the compact convolutions through autograd again.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, static_cast<int64_t>(all.size()), 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(caller_state);
      for (int64_t i = begin; i < end; ++i) {
        run(all[i]);
      }
    });
  } else {  // one task: its convolution may use every thread
    for (const Task& task : all) {
      run(task);
    }
  }
}

// --- The direct kernel. ---

// Output rows per work item. A band of 8 rows reads 8 + kh - 1 input rows, so gathering them
// costs about (kh + 7) / (8 * kh * active outputs) of the multiply-adds (~2% at 18 active
// outputs). 8 rows measured ~5% faster than 4 and ~10% faster than 2 on one thread (TASNet layer,
// 160x240).
constexpr int64_t kBandRows = 8;

// The active channels of each mask row.
std::vector<std::vector<int64_t>> active_channels(const at::Tensor& mask) {
  const at::Tensor rows = mask.contiguous();
  const bool* flag = rows.data_ptr<bool>();
  std::vector<std::vector<int64_t>> result(rows.size(0));
  for (int64_t r = 0; r < rows.size(0); ++r) {
    for (int64_t c = 0; c < rows.size(1); ++c) {
      if (flag[r * rows.size(1) + c]) {
        result[r].push_back(c);
      }
    }
  }
  return result;
}

struct Geometry {
  int64_t out_channels, height, width, out_height, out_width;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t pitch;  // of a gathered input row: out_width rounded up to whole vectors of any kernel
  int64_t band_input_rows() const { return (kBandRows - 1) * sh + (kh - 1) * dh + 1; }
};

// What the vector code needs for one band: rows [y0, y1) of one output sample, whose elements are S.
// The kernel computes in T (float for bfloat16 and float16: the band's inputs and weights are
// widened as they are gathered and packed, and each output rounded once as it is stored, so a half
// type costs no float32 copy of the input or the output).
template <typename S, typename T = at::opmath_type<S>>
struct Band {
  const Geometry* g;
  const T* rows;     // gathered input, [active in][band_input_rows][kw][pitch]: entry x of
                     // (c, r, kx) is what output column x reads at tap kx from the band's row r
  const T* weights;  // per block of R active outputs: [in][kh][kw][R], blocks one after another
  const T* bias;     // per active output, or null
  const int64_t* out_channels;
  int64_t in_count, out_count;
  S* output;  // the sample's [Cout, Ho, Wo]
  int64_t y0, y1;
};

// Vectors of B bytes through GCC's vector extension (as in window_attention.cpp); every function
// passing them by value is internal to this file, so GCC's ABI note does not concern any caller.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <typename T, int B>
struct VecOf {
  typedef T type __attribute__((vector_size(B)));
};

// Stores an aligned vector past the cache, where the ISA has such a store: the output is far larger
// than the caches, and the next layer reads it back from memory anyway. The active outputs of a
// TASNet layer (27 tasks, 18 of 64 channels, 160x240) took 73-75 ms instead of 85 ms on one thread
// this way. The caller fences (fence_streams) before other threads may read.
template <typename T, typename Vec>
[[gnu::always_inline]] inline void stream(T* dst, const Vec& v) {  // by reference: no -Wpsabi ABI note
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if constexpr (sizeof(Vec) == 64 && sizeof(T) == 4) {
    return __builtin_ia32_movntps512(dst, v);
  } else if constexpr (sizeof(Vec) == 64) {
    return __builtin_ia32_movntpd512(dst, v);
  } else if constexpr (sizeof(Vec) == 32 && sizeof(T) == 4) {
    return __builtin_ia32_movntps256(dst, v);
  } else if constexpr (sizeof(Vec) == 32) {
    return __builtin_ia32_movntpd256(dst, v);
  }
#endif
  __builtin_memcpy(dst, &v, sizeof(Vec));
}

// R active outputs x V vectors of output row y from column x0 (valid of them inside the row): the
// R * V accumulators stay in registers while the active inputs and taps run, each step loading V
// vectors of gathered input and broadcasting R weights.
template <typename S, int B, int R, int V, typename T = at::opmath_type<S>>
[[gnu::always_inline]] inline void block(const Band<S>& band, const T* w, int64_t first, int64_t y,
                                         int64_t x0, int64_t valid) {
  using Vec = typename VecOf<T, B>::type;
  constexpr int64_t L = B / sizeof(T);
  const Geometry& g = *band.g;
  Vec acc[R][V];
  for (int r = 0; r < R; ++r) {
    const T b = band.bias ? band.bias[first + r] : T(0);
    for (int v = 0; v < V; ++v) {
      acc[r][v] = Vec{} + b;
    }
  }
  const int64_t plane = g.band_input_rows() * g.kw * g.pitch;
  const T* channel = band.rows + (y - band.y0) * g.sh * g.kw * g.pitch + x0;
  for (int64_t c = 0; c < band.in_count; ++c, channel += plane) {
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const T* src = channel + ky * g.dh * g.kw * g.pitch;
      for (int64_t kx = 0; kx < g.kw; ++kx, src += g.pitch, w += R) {
        Vec in[V];
        for (int v = 0; v < V; ++v) {
          __builtin_memcpy(&in[v], src + v * L, sizeof(Vec));
        }
        for (int r = 0; r < R; ++r) {
          const T weight = w[r];
          for (int v = 0; v < V; ++v) {
            acc[r][v] += weight * in[v];
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    S* dst = band.output + (band.out_channels[first + r] * g.out_height + y) * g.out_width + x0;
    for (int v = 0; v < V; ++v) {
      const int64_t lanes = std::min(L, valid - v * L);
      if constexpr (!std::is_same_v<S, T>) {
        for (int64_t lane = 0; lane < lanes; ++lane) {
          dst[v * L + lane] = S(acc[r][v][lane]);  // rounded to nearest even
        }
      } else if (lanes == L && reinterpret_cast<uintptr_t>(dst + v * L) % B == 0) {
        stream(dst + v * L, acc[r][v]);
      } else {
        __builtin_memcpy(dst + v * L, &acc[r][v], lanes * sizeof(T));
      }
    }
  }
}

// block<r, v> for runtime r <= R and v <= V.
template <typename S, int B, int R, int V, typename T = at::opmath_type<S>>
[[gnu::always_inline]] inline void block_v(int v, const Band<S>& band, const T* w, int64_t first,
                                           int64_t y, int64_t x0, int64_t valid) {
  if constexpr (V > 1) {
    if (v < V) {
      return block_v<S, B, R, V - 1>(v, band, w, first, y, x0, valid);
    }
  }
  block<S, B, R, V>(band, w, first, y, x0, valid);
}

template <typename S, int B, int R, int V, typename T = at::opmath_type<S>>
[[gnu::always_inline]] inline void block_rv(int r, int v, const Band<S>& band, const T* w,
                                            int64_t first, int64_t y, int64_t x0, int64_t valid) {
  if constexpr (R > 1) {
    if (r < R) {
      return block_rv<S, B, R - 1, V>(r, v, band, w, first, y, x0, valid);
    }
  }
  block_v<S, B, R, V>(v, band, w, first, y, x0, valid);
}

template <typename S, int B, int R, int V>
[[gnu::always_inline]] inline void band_body(const Band<S>& band) {
  constexpr int64_t L = B / sizeof(at::opmath_type<S>);
  const Geometry& g = *band.g;
  const int64_t taps = band.in_count * g.kh * g.kw;
  for (int64_t y = band.y0; y < band.y1; ++y) {
    for (int64_t x0 = 0; x0 < g.out_width; x0 += V * L) {
      const int64_t valid = std::min(V * L, g.out_width - x0);
      for (int64_t first = 0; first < band.out_count; first += R) {
        const int r = static_cast<int>(std::min<int64_t>(R, band.out_count - first));
        const int v = static_cast<int>((valid + L - 1) / L);
        block_rv<S, B, R, V>(r, v, band, band.weights + first * taps, first, y, x0, valid);
      }
    }
  }
}

// The vector code built for the baseline ISA and, on x86-64 with GCC, for AVX2 + FMA and for
// AVX-512, picked at run time. Block sizes fill the vector registers: R * V accumulators plus V
// inputs and a broadcast (24 + 4 + 1 of AVX-512's 32, 12 + 3 + 1 of AVX2's and SSE's 16).
template <typename S>
struct Kernel {
  int block_outputs;  // R: the weights are packed in blocks of this many active outputs
  void (*run)(const Band<S>&);
};

template <typename S>
void band_baseline(const Band<S>& band) {
  band_body<S, 16, 4, 3>(band);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
template <typename S>
__attribute__((target("arch=x86-64-v3"))) void band_avx2(const Band<S>& band) {
  band_body<S, 32, 4, 3>(band);
}

template <typename S>
__attribute__((target("arch=x86-64-v4"))) void band_avx512(const Band<S>& band) {
  band_body<S, 64, 6, 4>(band);
}
#endif

template <typename S>
Kernel<S> pick_kernel() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (__builtin_cpu_supports("x86-64-v4")) {
    return {6, &band_avx512<S>};
  }
  if (__builtin_cpu_supports("x86-64-v3")) {
    return {4, &band_avx2<S>};
  }
#endif
  return {4, &band_baseline<S>};
}

// Sets n elements to 0 with streaming stores where the ISA has them: most of a sparse task's output
// is zeros, and storing them through the cache first reads every line. Clearing a 265 MB output
// this way took 6.5 ms instead of 25 ms on one thread. The caller fences (fence_streams) before
// other threads may read.
template <typename T>
void clear(T* data, int64_t n) {
  auto* bytes = reinterpret_cast<char*>(data);
  size_t size = n * sizeof(T);
#if defined(__SSE2__)
  const size_t head = std::min<size_t>(size, (16 - reinterpret_cast<uintptr_t>(bytes) % 16) % 16);
  std::memset(bytes, 0, head);
  bytes += head;
  size -= head;
  for (; size >= 16; size -= 16, bytes += 16) {
    _mm_stream_ps(reinterpret_cast<float*>(bytes), _mm_setzero_ps());
  }
#endif
  std::memset(bytes, 0, size);
}

void fence_streams() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

int64_t ceil_div(int64_t n, int64_t d) {  // d > 0
  return n <= 0 ? -(-n / d) : (n + d - 1) / d;
}

// The band's input rows of the active channels of one input sample, laid out as Band::rows wants
// (widened to T), zero where the convolution reads padding.
template <typename S, typename T = at::opmath_type<S>>
void gather(const Geometry& g, const at::Tensor& input, int64_t sample,
            const std::vector<int64_t>& channels, int64_t y0, T* rows) {
  const S* base = input.data_ptr<S>() + sample * input.stride(0);
  const int64_t sc = input.stride(1), sy = input.stride(2), sx = input.stride(3);
  const int64_t count = g.band_input_rows(), top = y0 * g.sh - g.ph;
  for (const int64_t channel : channels) {
    for (int64_t r = 0; r < count; ++r) {
      const int64_t iy = top + r;
      for (int64_t kx = 0; kx < g.kw; ++kx, rows += g.pitch) {
        if (iy < 0 || iy >= g.height) {
          std::fill(rows, rows + g.pitch, T(0));
          continue;
        }
        // Output column x reads input column x * sw + shift; [a, b) of them fall inside the row.
        const int64_t shift = kx * g.dw - g.pw;
        const int64_t a = std::clamp<int64_t>(ceil_div(-shift, g.sw), 0, g.out_width);
        const int64_t b = std::clamp<int64_t>(ceil_div(g.width - shift, g.sw), a, g.out_width);
        const S* src = base + channel * sc + iy * sy;
        std::fill(rows, rows + a, T(0));
        if (g.sw == 1 && sx == 1) {
          std::copy(src + a + shift, src + b + shift, rows + a);
        } else {
          for (int64_t x = a; x < b; ++x) {
            rows[x] = src[(x * g.sw + shift) * sx];
          }
        }
        std::fill(rows + b, rows + g.pitch, T(0));
      }
    }
  }
}

// The weights of the task's active channels in Band::weights's layout (widened to T).
template <typename S, typename T = at::opmath_type<S>>
void pack(const Geometry& g, const at::Tensor& weight, const std::vector<int64_t>& ins,
          const std::vector<int64_t>& outs, int block_outputs, T* packed) {
  const S* w = weight.data_ptr<S>();
  const int64_t so = weight.stride(0), si = weight.stride(1);
  const int64_t sy = weight.stride(2), sx = weight.stride(3);
  const int64_t out_count = static_cast<int64_t>(outs.size());
  for (int64_t first = 0; first < out_count; first += block_outputs) {
    const int64_t r = std::min<int64_t>(block_outputs, out_count - first);
    for (const int64_t c : ins) {
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          for (int64_t j = 0; j < r; ++j) {
            *packed++ = w[outs[first + j] * so + c * si + ky * sy + kx * sx];
          }
        }
      }
    }
  }
}

template <typename S, typename T = at::opmath_type<S>>
void forward_direct(const at::Tensor& input, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                    const at::Tensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation, at::Tensor& output) {
  const Geometry g{weight.size(0), input.size(2), input.size(3), output.size(2), output.size(3),
                   weight.size(2), weight.size(3), stride[0], stride[1], padding[0], padding[1],
                   dilation[0], dilation[1], (output.size(3) + 15) / 16 * 16};
  const std::vector<std::vector<int64_t>> ins = active_channels(in_mask);
  const std::vector<std::vector<int64_t>> outs = active_channels(out_mask);
  std::vector<std::vector<int64_t>> inactive(outs.size());
  size_t max_in = 0, max_out = 0;
  for (const auto& channels : ins) {
    max_in = std::max(max_in, channels.size());
  }
  for (size_t row = 0; row < outs.size(); ++row) {
    max_out = std::max(max_out, outs[row].size());
    for (int64_t c = 0, next = 0; c < g.out_channels; ++c) {
      if (next < static_cast<int64_t>(outs[row].size()) && outs[row][next] == c) {
        ++next;
      } else {
        inactive[row].push_back(c);
      }
    }
  }
  const bool has_bias = bias.has_value() && bias->defined();
  const Kernel<S> kernel = pick_kernel<S>();
  const int64_t samples = output.size(0), bands = (g.out_height + kBandRows - 1) / kBandRows;
  const size_t bias_size = (max_out + 15) / 16 * 16;
  const size_t weights_size = max_out * max_in * g.kh * g.kw;
  const size_t rows_size = max_in * g.band_input_rows() * g.kw * g.pitch;
  S* out = output.data_ptr<S>();
  const int64_t sample_size = g.out_channels * g.out_height * g.out_width;

  // Item i is band i / samples of sample i % samples: each thread's range spans every task, so a
  // mix of light and heavy tasks still splits evenly.
  at::parallel_for(0, samples * bands, 1, [&](int64_t begin, int64_t end) {
    // This range's scratch, from a kept block (cpu/kept_memory.h; 64-byte aligned): a TASNet layer of 64
    // channels at 480x320 needs 2.6 MB, which a fresh mapping would fault in every call.
    const at::Tensor scratch = cpu::kept_empty({static_cast<int64_t>(bias_size + weights_size + rows_size)},
                                               output.options().dtype(c10::CppTypeToScalarType<T>::value));
    T* const packed_bias = scratch.data_ptr<T>();
    T* const packed = packed_bias + bias_size;
    T* const rows = packed + weights_size;
    int64_t packed_for = -1;  // which (in row, out row) pair `packed` holds
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i % samples, y0 = i / samples * kBandRows;
      const int64_t y1 = std::min(g.out_height, y0 + kBandRows);
      const size_t in_row = ins.size() == 1 ? 0 : n, out_row = outs.size() == 1 ? 0 : n;
      S* const sample_out = out + n * sample_size;
      for (const int64_t c : inactive[out_row]) {
        clear(sample_out + (c * g.out_height + y0) * g.out_width, (y1 - y0) * g.out_width);
      }
      if (outs[out_row].empty()) {
        continue;
      }
      if (packed_for != static_cast<int64_t>(in_row * outs.size() + out_row)) {
        packed_for = static_cast<int64_t>(in_row * outs.size() + out_row);
        pack<S>(g, weight, ins[in_row], outs[out_row], kernel.block_outputs, packed);
        if (has_bias) {
          const S* b = bias->data_ptr<S>();
          for (size_t j = 0; j < outs[out_row].size(); ++j) {
            packed_bias[j] = b[outs[out_row][j] * bias->stride(0)];
          }
        }
      }
      gather<S>(g, input, input.size(0) == 1 ? 0 : n, ins[in_row], y0, rows);
      const Band<S> band{&g, rows, packed, has_bias ? packed_bias : nullptr, outs[out_row].data(),
                         static_cast<int64_t>(ins[in_row].size()),
                         static_cast<int64_t>(outs[out_row].size()), sample_out, y0, y1};
      kernel.run(band);
    }
    fence_streams();
  });
}

at::Tensor masked_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                             const at::Tensor& out_mask, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  const std::vector<int64_t> size =
      masked::checked_output_size("masked_conv2d", input, weight, bias, in_mask, out_mask, stride, padding, dilation);
  const at::MemoryFormat format = output_memory_format(input);
  at::Tensor output = cpu::kept_empty(size, input.options(), format);
  if (format == at::MemoryFormat::Contiguous) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "masked_conv2d", [&] {
      forward_direct<scalar_t>(input, weight, bias, in_mask, out_mask, stride, padding, dilation, output);
    });
  } else {
    forward_onednn(input, weight, bias, in_mask, out_mask, stride, padding, dilation, output);
  }
  return output;
}

// bfloat16 and float16 forwards with contiguous outputs run in the direct kernel, which converts per
// band; the rest (channels-last outputs, the backward) are widened at the boundary (cpu/in_float32.h).
at::Tensor masked_conv2d_cpu_any_dtype(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                                       const at::Tensor& out_mask, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  if (output_memory_format(input) == at::MemoryFormat::Contiguous) {
    return masked_conv2d_cpu(input, weight, bias, in_mask, out_mask, stride, padding, dilation);
  }
  return cpu::InFloat32<&masked_conv2d_cpu>::call(input, weight, bias, in_mask, out_mask, stride, padding,
                                                  dilation);
}

// Gradients with respect to (input, weight, bias); bias's is empty when bias is None. Tasks run one
// after another: tasks that share the input sample accumulate into the same gradient rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  masked::checked_backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding, dilation);
  at::Tensor grad_input =
      cpu::kept_empty(input.sizes(), input.options(), output_memory_format(input)).zero_();
  at::Tensor grad_weight = cpu::kept_zeros(weight.sizes(), weight.options());
  for (const Task& task : tasks(input, in_mask, out_mask)) {
    if (task.out_channels.numel() == 0 || task.in_channels.numel() == 0 || task.length == 0) {
      continue;
    }
    const at::Tensor x =
        select_channels(input.narrow(0, task.input_start, task.length), 1, task.in_channels);
    const at::Tensor w =
        select_channels(select_channels(weight, 0, task.out_channels), 1, task.in_channels);
    const at::Tensor go = select_channels(grad_output.narrow(0, task.output_start, task.length), 1,
                                          task.out_channels);
    auto grads = at::convolution_backward(go, x, w, std::nullopt, stride, padding, dilation, false,
                                          {0, 0}, 1, {true, true, false});
    grad_input.narrow(0, task.input_start, task.length).index_add_(1, task.in_channels, std::get<0>(grads));
    grad_weight.index_put_({task.out_channels.unsqueeze(1), task.in_channels.unsqueeze(0)},
                           std::get<1>(grads), /*accumulate=*/true);
  }
  at::Tensor grad_bias = at::empty({0}, weight.options());
  if (bias.has_value() && bias->defined()) {
    // Bias reaches only the active output channels of each task.
    grad_bias = (grad_output.sum({2, 3}) * out_mask.to(grad_output.scalar_type())).sum(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu_any_dtype);
  m.impl("masked_conv2d_backward", &cpu::InFloat32<&masked_conv2d_backward_cpu>::call);
}

}  // namespace flexops
