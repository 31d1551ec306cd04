// CPU kernels of flexops::deform_conv2d and its backward (torchvision.ops.deform_conv2d semantics).
//
// The input is read in NHWC so that the channels of an offset group lie side by side: the four
// bilinear corners of a sampling point and their weights are computed once per (output pixel,
// kernel point, offset group) and applied to all of the group's channels in one vectorised loop.
// Work goes in tiles of output pixels sized to stay in L2: a tile's columns [pixels, kh*kw*Cin]
// are built in a per-thread buffer and multiplied by the weight reordered to
// [Cout, kh, kw, Cin/groups], one single-threaded GEMM per tile and conv group, tiles in parallel;
// the backward recomputes a tile's columns beside their gradients (see backward_kernel). Every sum
// runs in an order fixed by the shape, so no result depends on the thread count, and a sample's
// output and input, offset and mask gradients do not depend on the rest of its batch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/bilinear.h"
#include "common/bilinear_grad.h"
#include "common/deform_conv2d.h"
#include "common/layout.h"
#include "cpu/in_float32.h"
#include "cpu/kept_memory.h"

namespace flexops {
namespace {

using at::Tensor;

// Bytes of per-tile buffers a tile may use: about an L2, so they are still cached when the GEMM
// reads them. (Measured here: 256 KiB to 2 MiB all do about as well; 128 KiB is slower.)
constexpr int64_t kTileBytes = 512 << 10;
// Backward: tiles in flight at once. Each needs its own grad_weight partial, so fewer when the
// weight is large. Fixed (not the thread count) because it sets grad_weight's summation order.
constexpr int64_t kMaxSlots = 32;
constexpr int64_t kPartialBytes = 32 << 20;
// Backward scatter: fewest channels one thread takes (a couple of vectors' worth), so that
// narrow layers still split across threads.
constexpr int64_t kScatterGrain = 8;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Output pixels per tile: as many as fit kTileBytes, within bounds that keep the GEMM efficient.
int64_t tile_pixels(int64_t bytes_per_pixel) {
  return std::clamp<int64_t>(kTileBytes / bytes_per_pixel, 16, 1024);
}

struct Shape {
  int64_t batch, in_channels, height, width;
  int64_t out_channels, kernel_h, kernel_w, kernel_points;
  int64_t groups, group_in, group_out;  // channels per conv group
  int64_t offset_groups, offset_group_in;
  int64_t out_h, out_w, out_pixels;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t row;        // one row of columns: kernel_points * in_channels
  int64_t group_row;  // the part of a row one conv group multiplies: kernel_points * group_in
};

// Checks every argument (common/deform_conv2d.h) and derives the sizes the kernels use.
Shape make_shape(const char* op, const Tensor& input, const Tensor& offset, const Tensor& weight,
                 const std::optional<Tensor>& mask, const std::optional<Tensor>& bias, at::IntArrayRef stride,
                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  const deform::Shape checked =
      deform::checked_shape(op, input, offset, weight, mask, bias, stride, padding, dilation);
  TORCH_CHECK(input.is_cpu(), op, ": input must be a CPU tensor here, got ", input.device());
  Shape s;
  s.batch = input.size(0);
  s.in_channels = input.size(1);
  s.height = input.size(2);
  s.width = input.size(3);
  s.out_channels = weight.size(0);
  s.group_in = weight.size(1);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.kernel_points = s.kernel_h * s.kernel_w;
  s.groups = checked.groups;
  s.group_out = s.out_channels / s.groups;
  s.offset_groups = checked.offset_groups;
  s.offset_group_in = s.in_channels / s.offset_groups;
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  s.out_h = checked.out_h;
  s.out_w = checked.out_w;
  s.out_pixels = s.out_h * s.out_w;
  s.row = s.kernel_points * s.in_channels;
  s.group_row = s.kernel_points * s.group_in;
  return s;
}

// A [B, C, Ho, Wo] tensor accessed through its strides, whatever its layout.
template <typename T>
struct Strided {
  T* data = nullptr;
  int64_t sb = 0, sc = 0, sy = 0, sx = 0;

  Strided() = default;
  explicit Strided(const Tensor& t)
      : data(static_cast<T*>(t.data_ptr())),
        sb(t.stride(0)), sc(t.stride(1)), sy(t.stride(2)), sx(t.stride(3)) {}
  T& at(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return data[b * sb + c * sc + y * sy + x * sx];
  }
};

// Copies a [B, C, H, W] tensor into `dst` of the same sizes and another layout (ATen's copy is
// slow for NCHW <-> NHWC). It goes a block of image rows at a time, channel by channel: each
// channel plane is then read or written in long runs, while the other side's block stays in cache.
// (Going across channel planes element by element thrashes cache sets: they lie a power of two
// apart.)
template <typename scalar_t>
void relayout(const Tensor& src, const Tensor& dst) {
  constexpr int64_t kBlockBytes = 256 << 10;
  const Strided<const scalar_t> from(src);
  const Strided<scalar_t> to(dst);
  const int64_t channels = src.size(1), height = src.size(2), width = src.size(3);
  const int64_t rows = std::clamp<int64_t>(
      kBlockBytes / std::max<int64_t>(1, width * channels * sizeof(scalar_t)), 1, height);
  const int64_t blocks = ceil_div(height, rows);
  at::parallel_for(0, src.size(0) * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t b = block / blocks, y0 = (block % blocks) * rows;
      const int64_t y1 = std::min(height, y0 + rows);
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t y = y0; y < y1; ++y) {
          const scalar_t* in = &from.at(b, c, y, 0);
          scalar_t* out = &to.at(b, c, y, 0);
          for (int64_t x = 0; x < width; ++x) {
            out[x * to.sx] = in[x * from.sx];
          }
        }
      }
    }
  });
}

// `t` as a packed NHWC buffer: t itself when it already is one.
template <typename scalar_t>
Tensor to_nhwc(const Tensor& t) {
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return t;
  }
  Tensor nhwc = cpu::kept_empty(t.sizes(), t.options(), at::MemoryFormat::ChannelsLast);
  relayout<scalar_t>(t, nhwc);
  return nhwc;
}

// A tile: output pixels [first, first + count) of sample b, in row-major (oy, ox) order.
struct Tile {
  int64_t b, first, count;
};

Tile tile_at(int64_t t, int64_t tiles_per_image, int64_t tile_size, int64_t out_pixels) {
  const int64_t first = (t % tiles_per_image) * tile_size;
  return {t / tiles_per_image, first, std::min(tile_size, out_pixels - first)};
}

// dst[p, c] = src[p, c] for p < pixels and c < channels, each side with its own (pixel, channel)
// strides; the inner loop runs along pixels when `pixels_inner`.
template <typename T>
void copy_tile(const T* src, int64_t src_p, int64_t src_c, T* dst, int64_t dst_p, int64_t dst_c,
               int64_t pixels, int64_t channels, bool pixels_inner) {
  if (pixels_inner) {
    for (int64_t c = 0; c < channels; ++c) {
      for (int64_t p = 0; p < pixels; ++p) {
        dst[p * dst_p + c * dst_c] = src[p * src_p + c * src_c];
      }
    }
  } else {
    for (int64_t p = 0; p < pixels; ++p) {
      for (int64_t c = 0; c < channels; ++c) {
        dst[p * dst_p + c * dst_c] = src[p * src_p + c * src_c];
      }
    }
  }
}

// A tile of a [B, C, Ho, Wo] tensor whose pixels flatten to one stride (see flat_pixels) is a
// [count, C] matrix with strides (sx, sc). These copy it from and to a dense [count, C] buffer,
// going along pixels when channels are planes: NCHW planes lie a power of two apart, and going
// across them element by element thrashes cache sets.
template <typename T>
void load_tile(const Strided<const T>& src, const Tile& tile, int64_t channels, T* dst) {
  copy_tile(src.data + tile.b * src.sb + tile.first * src.sx, src.sx, src.sc, dst, channels,
            int64_t(1), tile.count, channels, src.sx < src.sc);
}

template <typename T>
void store_tile(const T* src, const Tile& tile, int64_t channels, const Strided<T>& dst) {
  copy_tile(src, channels, int64_t(1), dst.data + tile.b * dst.sb + tile.first * dst.sx, dst.sx,
            dst.sc, tile.count, channels, dst.sx < dst.sc);
}

// Whether pixel (y, x) of a [B, C, H, W] tensor sits at (y * W + x) * stride(3), as in any dense
// layout; the tile copies need it.
bool flat_pixels(const Tensor& t) {
  return t.size(2) == 1 || t.stride(2) == t.size(3) * t.stride(3);
}

Tensor with_flat_pixels(const Tensor& t) {
  return flat_pixels(t) ? t : t.contiguous();
}

// A run of input channels inside one offset group and one conv group: what the channel loops
// vectorise over. Channel c of kernel point k sits at `column + k * group_in + c` of a row of
// columns, whose layout is [groups][kernel_points][group_in].
struct ChannelRun {
  int64_t begin, end, offset_group, column;
};

// The runs covering channels [begin, end), in channel order (so those of an offset group are
// consecutive).
std::vector<ChannelRun> channel_runs(const Shape& s, int64_t begin, int64_t end) {
  std::vector<ChannelRun> runs;
  for (int64_t c = begin; c < end;) {
    const int64_t og = c / s.offset_group_in, g = c / s.group_in;
    const int64_t stop = std::min({end, (og + 1) * s.offset_group_in, (g + 1) * s.group_in});
    runs.push_back({c, stop, og, g * (s.group_row - s.group_in)});
    c = stop;
  }
  return runs;
}

// Calls visit(p, k, runs_begin, runs_end, y, x, m) for each tile pixel p, kernel point k and
// offset group (in that order) with the group's sampling point (y, x), its mask m, and the runs
// [runs_begin, runs_end) of the group's channels. `offsets` is the tile's [count, 2*og*kh*kw]
// offsets, `masks` its [count, og*kh*kw] mask or null.
template <typename scalar_t, typename F>
void for_each_sampling_point(const Shape& s, const Tile& tile, const scalar_t* offsets,
                             const scalar_t* masks, const std::vector<ChannelRun>& runs,
                             const F& visit) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t points = s.offset_groups * s.kernel_points;  // sampling points per pixel
  for (int64_t p = 0; p < tile.count; ++p) {
    const int64_t oy = (tile.first + p) / s.out_w, ox = (tile.first + p) % s.out_w;
    for (int64_t k = 0; k < s.kernel_points; ++k) {
      const int64_t base_y = oy * s.stride_h - s.pad_h + (k / s.kernel_w) * s.dil_h;
      const int64_t base_x = ox * s.stride_w - s.pad_w + (k % s.kernel_w) * s.dil_w;
      for (size_t r = 0; r < runs.size();) {
        const int64_t point = runs[r].offset_group * s.kernel_points + k;
        const acc_t y = acc_t(base_y) + acc_t(offsets[p * 2 * points + 2 * point]);
        const acc_t x = acc_t(base_x) + acc_t(offsets[p * 2 * points + 2 * point + 1]);
        const acc_t m = masks ? acc_t(masks[p * points + point]) : acc_t(1);
        size_t stop = r + 1;
        while (stop < runs.size() && runs[stop].offset_group == runs[r].offset_group) {
          ++stop;
        }
        visit(p, k, r, stop, y, x, m);
        r = stop;
      }
    }
  }
}

// The four corners of a sampling point as rows of the NHWC input (`zeros` for a corner outside)
// and their weights (float32 for half-type rows).
template <typename scalar_t>
struct CornerRows {
  const scalar_t* row[4];
  at::opmath_type<scalar_t> weight[4];
};

template <typename scalar_t, typename acc_t>
CornerRows<scalar_t> corner_rows(const BilinearCorners<acc_t>& c, const acc_t* weight,
                                 const scalar_t* image, const scalar_t* zeros, int64_t channels) {
  CornerRows<scalar_t> r;
  for (int q = 0; q < 4; ++q) {
    r.row[q] = c.index[q] >= 0 ? image + c.index[q] * channels : zeros;
    r.weight[q] = weight[q];
  }
  return r;
}

// The channel loops below are plain loops over restrict pointers: the compiler vectorises them at
// -O3 for whatever instruction set the build targets. They are kept out of line: inlined into the
// tile loops, the compiler ran out of registers and reloaded the row pointers every iteration.

// dst[c] = mask * sum_q weight[q] * row[q][c] for c in [begin, end). The mask multiplies the
// sampled value, as in torchvision: folded into the corner weights, an infinite mask would meet a
// zero weight and give NaN where torchvision gives inf. Half-type values are computed in float32
// and rounded once.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__attribute__((noinline)) void blend(scalar_t* __restrict dst, const CornerRows<scalar_t>& r,
                                     acc_t mask, int64_t begin, int64_t end) {
  const scalar_t* __restrict r0 = r.row[0];
  const scalar_t* __restrict r1 = r.row[1];
  const scalar_t* __restrict r2 = r.row[2];
  const scalar_t* __restrict r3 = r.row[3];
  const acc_t w0 = r.weight[0], w1 = r.weight[1], w2 = r.weight[2], w3 = r.weight[3];
  for (int64_t c = begin; c < end; ++c) {
    dst[c] = scalar_t(mask * (w0 * acc_t(r0[c]) + w1 * acc_t(r1[c]) + w2 * acc_t(r2[c]) + w3 * acc_t(r3[c])));
  }
}

// dst[c] += weight * src[c] for c in [begin, end).
template <typename scalar_t>
__attribute__((noinline)) void axpy(scalar_t* __restrict dst, const scalar_t* __restrict src,
                                    scalar_t weight, int64_t begin, int64_t end) {
  for (int64_t c = begin; c < end; ++c) {
    dst[c] += weight * src[c];
  }
}

// Sums over a sampling point's channels that the offset and mask gradients need, given the
// column gradients g: sum g * dvalue/dy, sum g * dvalue/dx and sum g * value (value unmasked).
// Channel c of a run adds to lane (c - begin) % kLanes, so the sums vectorise yet keep one order.
template <typename scalar_t>
struct GradSums {
  static constexpr int kLanes = 8;
  scalar_t dy[kLanes] = {}, dx[kLanes] = {}, value[kLanes] = {};

  static scalar_t total(const scalar_t (&lanes)[kLanes]) {
    scalar_t sum = 0;
    for (int l = 0; l < kLanes; ++l) {
      sum += lanes[l];
    }
    return sum;
  }
};

// Backward over one run of channels of one sampling point: writes mask * value to the columns
// (for grad_weight) and adds to the sums for the offset and mask gradients.
template <typename scalar_t>
__attribute__((noinline)) void sample_backward(const CornerRows<scalar_t>& r,
                                               const scalar_t dy_w[4], const scalar_t dx_w[4],
                                               scalar_t mask, const scalar_t* __restrict grad_col,
                                               scalar_t* __restrict col, int64_t begin,
                                               int64_t end, GradSums<scalar_t>& sums) {
  constexpr int kLanes = GradSums<scalar_t>::kLanes;
  const scalar_t* __restrict r0 = r.row[0];
  const scalar_t* __restrict r1 = r.row[1];
  const scalar_t* __restrict r2 = r.row[2];
  const scalar_t* __restrict r3 = r.row[3];
  const scalar_t w0 = r.weight[0], w1 = r.weight[1], w2 = r.weight[2], w3 = r.weight[3];
  const scalar_t y0 = dy_w[0], y1 = dy_w[1], y2 = dy_w[2], y3 = dy_w[3];
  const scalar_t x0 = dx_w[0], x1 = dx_w[1], x2 = dx_w[2], x3 = dx_w[3];
  auto step = [&](int64_t c, int l) {
    const scalar_t v0 = r0[c], v1 = r1[c], v2 = r2[c], v3 = r3[c], g = grad_col[c];
    const scalar_t value = w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3;
    col[c] = mask * value;
    sums.dy[l] += g * (y0 * v0 + y1 * v1 + y2 * v2 + y3 * v3);
    sums.dx[l] += g * (x0 * v0 + x1 * v1 + x2 * v2 + x3 * v3);
    sums.value[l] += g * value;
  };
  int64_t c = begin;
  for (; c + kLanes <= end; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      step(c + l, l);
    }
  }
  for (int l = 0; c < end; ++c, ++l) {
    step(c, l);
  }
}

// A row-major matrix over raw memory with strides (row_stride, 1). Worker threads pass these to
// BLAS: they carry none of the caller's autograd or inference-mode state.
template <typename scalar_t>
Tensor matrix(const scalar_t* data, int64_t rows, int64_t cols, int64_t row_stride) {
  return at::from_blob(const_cast<scalar_t*>(data), {rows, cols}, {row_stride, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
}

// The weight as [Cout, kernel_points * group_in] rows matching the columns' layout.
Tensor weight_rows(const Tensor& weight) {
  const Tensor rows = weight.permute({0, 2, 3, 1});
  return cpu::kept_empty(rows.sizes(), weight.options()).copy_(rows);
}

// Forward, per tile: columns [count, row] from the input, then per conv group
// result[p, co] = bias[co] + columns_g[p] . weight_rows[co], stored into the output.
template <typename scalar_t>
void forward_kernel(const Shape& s, const scalar_t* input, Strided<const scalar_t> offset,
                    Strided<const scalar_t> mask, const scalar_t* weight, const scalar_t* bias,
                    Strided<scalar_t> output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t points = s.offset_groups * s.kernel_points;
  const int64_t tile = tile_pixels((s.row + s.out_channels + 3 * points) * sizeof(scalar_t));
  const int64_t tiles_per_image = ceil_div(s.out_pixels, tile);
  const std::vector<ChannelRun> runs = channel_runs(s, 0, s.in_channels);
  const std::vector<scalar_t> zeros(s.in_channels, scalar_t(0));
  const int64_t image_size = s.height * s.width * s.in_channels;

  at::parallel_for(0, s.batch * tiles_per_image, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // One tile's buffers, kept between calls and equally aligned every time (GEMM operands).
    const Tensor buffer = cpu::kept_empty({tile * (s.row + s.out_channels + 3 * points)},
                                          at::CppTypeToScalarType<scalar_t>::value);
    scalar_t* columns = buffer.data_ptr<scalar_t>();
    scalar_t* result = columns + tile * s.row;
    scalar_t* offsets = result + tile * s.out_channels;
    scalar_t* masks = offsets + tile * 2 * points;
    for (int64_t t = begin; t < end; ++t) {
      const Tile tl = tile_at(t, tiles_per_image, tile, s.out_pixels);
      const scalar_t* image = input + tl.b * image_size;
      load_tile(offset, tl, 2 * points, offsets);
      if (mask.data) {
        load_tile(mask, tl, points, masks);
      }
      for_each_sampling_point(
          s, tl, offsets, mask.data ? masks : nullptr, runs,
          [&](int64_t p, int64_t k, size_t r0, size_t r1, acc_t y, acc_t x, acc_t m) {
            BilinearCorners<acc_t> corners;
            if (!bilinear_corners(y, x, int(s.height), int(s.width), corners)) {
              corners = BilinearCorners<acc_t>{{-1, -1, -1, -1}, {}, {}, {}};
            }
            const auto rows =
                corner_rows(corners, corners.weight, image, zeros.data(), s.in_channels);
            for (size_t r = r0; r < r1; ++r) {
              blend(columns + p * s.row + runs[r].column + k * s.group_in, rows, m,
                    runs[r].begin, runs[r].end);
            }
          });

      for (int64_t g = 0; g < s.groups; ++g) {
        Tensor result_g = matrix(result + g * s.group_out, tl.count, s.group_out, s.out_channels);
        const Tensor columns_g = matrix(columns + g * s.group_row, tl.count, s.group_row, s.row);
        const Tensor weight_g =
            matrix(weight + g * s.group_out * s.group_row, s.group_out, s.group_row, s.group_row);
        if (bias) {
          for (int64_t p = 0; p < tl.count; ++p) {
            std::copy_n(bias + g * s.group_out, s.group_out,
                        result + p * s.out_channels + g * s.group_out);
          }
          at::addmm_out(result_g, result_g, columns_g, weight_g.t());
        } else {
          at::mm_out(result_g, columns_g, weight_g.t());
        }
      }
      store_tile(result, tl, s.out_channels, output);
    }
  });
}

// One sampling point as the backward scatter needs it: corner pixels (-1 outside) and their
// weights times the mask.
template <typename acc_t>
struct Taps {
  int index[4];
  acc_t weight[4];
};

// Backward. Tiles go in waves of `slots`. First each tile of the wave, in parallel, computes its
// column gradients (one GEMM per group), the offset and mask gradients (local to its pixels) and
// its grad_weight term, added to the partial of its slot. Then grad_input gets the column
// gradients scattered through the bilinear weights, each thread owning a disjoint set of
// (sample, channel) and adding in tile and pixel order. So every sum has a fixed order.
template <typename scalar_t>
void backward_kernel(const Shape& s, const scalar_t* input, Strided<const scalar_t> offset,
                     Strided<const scalar_t> mask, Strided<const scalar_t> grad_output,
                     const scalar_t* weight, scalar_t* grad_input, Strided<scalar_t> grad_offset,
                     Strided<scalar_t> grad_mask, scalar_t* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t points = s.offset_groups * s.kernel_points;
  // Bytes per tile pixel: its columns, their gradients, grad_output row and taps.
  const int64_t tile = tile_pixels((2 * s.row + s.out_channels) * sizeof(scalar_t) +
                                   points * sizeof(Taps<acc_t>));
  const int64_t tiles_per_image = ceil_div(s.out_pixels, tile);
  const int64_t total_tiles = s.batch * tiles_per_image;
  const int64_t weight_size = s.out_channels * s.group_row;
  const int64_t slots = std::clamp<int64_t>(
      kPartialBytes / std::max<int64_t>(1, weight_size * sizeof(scalar_t)), 1, kMaxSlots);
  const int64_t used_slots = std::min(slots, total_tiles);

  // Per slot: what the scatter reads (column gradients and taps) and a grad_weight partial.
  const auto dtype = at::CppTypeToScalarType<scalar_t>::value;
  const Tensor grad_columns_buffer = cpu::kept_empty({used_slots * tile * s.row}, dtype);
  const Tensor taps_buffer = cpu::kept_empty(
      {static_cast<int64_t>(used_slots * tile * points * sizeof(Taps<acc_t>))}, at::kByte);
  Taps<acc_t>* const taps = reinterpret_cast<Taps<acc_t>*>(taps_buffer.data_ptr());
  const Tensor partials = cpu::kept_zeros({used_slots, weight_size}, dtype);

  const std::vector<ChannelRun> runs = channel_runs(s, 0, s.in_channels);
  const std::vector<scalar_t> zeros(s.in_channels, scalar_t(0));
  const int64_t image_size = s.height * s.width * s.in_channels;
  // Phase 1's own buffers for one tile: columns, grad_output rows, offsets, mask and their grads.
  const int64_t scratch_size = tile * (s.row + s.out_channels + 6 * points);

  // Phase 1 for global tile t in slot `slot`.
  auto tile_gradients = [&](int64_t t, int64_t slot, scalar_t* scratch) {
    const Tile tl = tile_at(t, tiles_per_image, tile, s.out_pixels);
    const scalar_t* image = input + tl.b * image_size;
    scalar_t* grad_columns = grad_columns_buffer.data_ptr<scalar_t>() + slot * tile * s.row;
    Taps<acc_t>* tile_taps = taps + slot * tile * points;
    scalar_t* columns = scratch;
    scalar_t* grad_out = columns + tile * s.row;
    scalar_t* offsets = grad_out + tile * s.out_channels;
    scalar_t* masks = offsets + tile * 2 * points;
    scalar_t* grad_offsets = masks + tile * points;
    scalar_t* grad_masks = grad_offsets + tile * 2 * points;

    load_tile(grad_output, tl, s.out_channels, grad_out);
    load_tile(offset, tl, 2 * points, offsets);
    if (mask.data) {
      load_tile(mask, tl, points, masks);
    }
    for (int64_t g = 0; g < s.groups; ++g) {
      Tensor grad_columns_g = matrix(grad_columns + g * s.group_row, tl.count, s.group_row, s.row);
      at::mm_out(grad_columns_g,
                 matrix(grad_out + g * s.group_out, tl.count, s.group_out, s.out_channels),
                 matrix(weight + g * s.group_out * s.group_row, s.group_out, s.group_row,
                        s.group_row));
    }

    for_each_sampling_point(
        s, tl, offsets, mask.data ? masks : nullptr, runs,
        [&](int64_t p, int64_t k, size_t r0, size_t r1, acc_t y, acc_t x, acc_t m) {
          BilinearCorners<acc_t> corners;
          if (!bilinear_corners_grad(y, x, int(s.height), int(s.width), corners)) {
            corners = BilinearCorners<acc_t>{{-1, -1, -1, -1}, {}, {}, {}};
          }
          const auto rows = corner_rows(corners, corners.weight, image, zeros.data(),
                                        s.in_channels);
          const int64_t point = runs[r0].offset_group * s.kernel_points + k;
          Taps<acc_t>& tap = tile_taps[p * points + point];
          scalar_t dy_w[4], dx_w[4];
          for (int q = 0; q < 4; ++q) {
            dy_w[q] = scalar_t(corners.dweight_dy[q]);
            dx_w[q] = scalar_t(corners.dweight_dx[q]);
            tap.index[q] = corners.index[q];
            tap.weight[q] = m * corners.weight[q];
          }
          GradSums<scalar_t> sums;
          for (size_t r = r0; r < r1; ++r) {
            const int64_t column = p * s.row + runs[r].column + k * s.group_in;
            sample_backward(rows, dy_w, dx_w, scalar_t(m), grad_columns + column,
                            columns + column, runs[r].begin, runs[r].end, sums);
          }
          grad_offsets[p * 2 * points + 2 * point] = m * sums.total(sums.dy);
          grad_offsets[p * 2 * points + 2 * point + 1] = m * sums.total(sums.dx);
          grad_masks[p * points + point] = sums.total(sums.value);
        });
    store_tile(grad_offsets, tl, 2 * points, grad_offset);
    if (mask.data) {
      store_tile(grad_masks, tl, points, grad_mask);
    }

    scalar_t* partial = partials.data_ptr<scalar_t>() + slot * weight_size;
    for (int64_t g = 0; g < s.groups; ++g) {
      Tensor partial_g =
          matrix(partial + g * s.group_out * s.group_row, s.group_out, s.group_row, s.group_row);
      at::addmm_out(partial_g, partial_g,
                    matrix(grad_out + g * s.group_out, tl.count, s.group_out, s.out_channels).t(),
                    matrix(columns + g * s.group_row, tl.count, s.group_row, s.row));
    }
  };

  // Phase 2 for global tile t in slot `slot`: the channels `own` of its sample's grad_input.
  auto scatter = [&](int64_t t, int64_t slot, const std::vector<ChannelRun>& own) {
    const Tile tl = tile_at(t, tiles_per_image, tile, s.out_pixels);
    scalar_t* image = grad_input + tl.b * image_size;
    const scalar_t* grad_columns =
        grad_columns_buffer.data_ptr<scalar_t>() + slot * tile * s.row;
    const Taps<acc_t>* tile_taps = taps + slot * tile * points;
    for (int64_t p = 0; p < tl.count; ++p) {
      for (int64_t k = 0; k < s.kernel_points; ++k) {
        for (size_t r = 0; r < own.size();) {
          const int64_t og = own[r].offset_group;
          const Taps<acc_t>& tap = tile_taps[p * points + og * s.kernel_points + k];
          size_t stop = r + 1;
          while (stop < own.size() && own[stop].offset_group == og) {
            ++stop;
          }
          for (int q = 0; q < 4; ++q) {
            if (tap.index[q] < 0) {
              continue;
            }
            scalar_t* dst = image + tap.index[q] * s.in_channels;
            for (size_t i = r; i < stop; ++i) {
              axpy(dst, grad_columns + p * s.row + own[i].column + k * s.group_in,
                   scalar_t(tap.weight[q]), own[i].begin, own[i].end);
            }
          }
          r = stop;
        }
      }
    }
  };

  for (int64_t wave = 0; wave < total_tiles; wave += slots) {
    const int64_t wave_end = std::min(total_tiles, wave + slots);
    at::parallel_for(wave, wave_end, 1, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView guard;
      // Kept between calls and equally aligned every time (GEMM operands).
      const Tensor scratch = cpu::kept_empty({scratch_size}, dtype);
      for (int64_t t = begin; t < end; ++t) {
        tile_gradients(t, t - wave, scratch.data_ptr<scalar_t>());
      }
    });
    // Items are (sample, channel) of the samples this wave touches.
    const int64_t first_sample = wave / tiles_per_image;
    const int64_t samples = (wave_end - 1) / tiles_per_image - first_sample + 1;
    at::parallel_for(0, samples * s.in_channels, kScatterGrain, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end;) {
        const int64_t b = first_sample + item / s.in_channels, c0 = item % s.in_channels;
        const int64_t c1 = std::min(s.in_channels, c0 + (end - item));
        const std::vector<ChannelRun> own = channel_runs(s, c0, c1);
        const int64_t t_end = std::min(wave_end, (b + 1) * tiles_per_image);
        for (int64_t t = std::max(wave, b * tiles_per_image); t < t_end; ++t) {
          scatter(t, t - wave, own);
        }
        item += c1 - c0;
      }
    });
  }

  // grad_weight: the slot partials summed in slot order.
  const scalar_t* partial = partials.data_ptr<scalar_t>();
  at::parallel_for(0, weight_size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t sum = partial[i];
      for (int64_t slot = 1; slot < used_slots; ++slot) {
        sum += partial[slot * weight_size + i];
      }
      grad_weight[i] = sum;
    }
  });
}

Tensor deform_conv2d_cpu(const Tensor& input, const Tensor& offset, const Tensor& weight,
                         const std::optional<Tensor>& bias, const std::optional<Tensor>& mask,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation) {
  const Shape s = make_shape("deform_conv2d", input, offset, weight, mask, bias, stride, padding, dilation);
  Tensor output = cpu::kept_empty({s.batch, s.out_channels, s.out_h, s.out_w}, input.options(),
                                  output_memory_format(input));
  if (output.numel() == 0) {
    return output;
  }
  const Tensor rows = weight_rows(weight);
  const Tensor bias_ = bias ? bias->contiguous() : Tensor();
  const Tensor offset_ = with_flat_pixels(offset);
  const Tensor mask_ = mask ? with_flat_pixels(*mask) : Tensor();
  // Half types come here only where oneDNN multiplies in them (cpu::half_type_products; elsewhere
  // InFloat32 widens them): columns in the half type, products accumulated in float32.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "deform_conv2d", [&] {
    const Tensor image = to_nhwc<scalar_t>(input);
    forward_kernel<scalar_t>(
        s, image.const_data_ptr<scalar_t>(), Strided<const scalar_t>(offset_),
        mask ? Strided<const scalar_t>(mask_) : Strided<const scalar_t>(),
        rows.const_data_ptr<scalar_t>(), bias ? bias_.const_data_ptr<scalar_t>() : nullptr,
        Strided<scalar_t>(output));
  });
  return output;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> deform_conv2d_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const Tensor& offset, const Tensor& weight,
    const std::optional<Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const char* op = "deform_conv2d_backward";
  const Shape s = make_shape(op, input, offset, weight, mask, std::nullopt, stride, padding, dilation);
  deform::check_grad_output(op, grad_output, input, weight, s.out_h, s.out_w);

  // Layouts as the CUDA kernels return them (the fake kernels describe these): grad_input as
  // output_memory_format(input) says, the others contiguous. grad_input is accumulated in NHWC.
  const Tensor grad_input_nhwc =
      cpu::kept_empty(input.sizes(), input.options(), at::MemoryFormat::ChannelsLast).zero_();
  Tensor grad_input = grad_input_nhwc;
  Tensor grad_offset = cpu::kept_empty(offset.sizes(), offset.options());
  Tensor grad_mask =
      mask ? cpu::kept_empty(mask->sizes(), mask->options()) : at::empty({0}, input.options());
  Tensor grad_weight_rows =
      cpu::kept_zeros({s.out_channels, s.kernel_h, s.kernel_w, s.group_in}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward", [&] {
    if (s.batch > 0) {
      const Tensor image = to_nhwc<scalar_t>(input);
      const Tensor rows = weight_rows(weight);
      const Tensor offset_ = with_flat_pixels(offset);
      const Tensor mask_ = mask ? with_flat_pixels(*mask) : Tensor();
      const Tensor grad_output_ = with_flat_pixels(grad_output);
      backward_kernel<scalar_t>(
          s, image.const_data_ptr<scalar_t>(), Strided<const scalar_t>(offset_),
          mask ? Strided<const scalar_t>(mask_) : Strided<const scalar_t>(),
          Strided<const scalar_t>(grad_output_), rows.const_data_ptr<scalar_t>(),
          grad_input_nhwc.data_ptr<scalar_t>(), Strided<scalar_t>(grad_offset),
          mask ? Strided<scalar_t>(grad_mask) : Strided<scalar_t>(),
          grad_weight_rows.data_ptr<scalar_t>());
    }
    if (output_memory_format(input) != at::MemoryFormat::ChannelsLast) {
      grad_input = cpu::kept_empty(input.sizes(), input.options());
      relayout<scalar_t>(grad_input_nhwc, grad_input);
    }
  });
  const Tensor grad_weight =
      cpu::kept_empty(weight.sizes(), weight.options()).copy_(grad_weight_rows.permute({0, 3, 1, 2}));
  return {grad_input, grad_offset, grad_weight, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("deform_conv2d", &cpu::InFloat32<&deform_conv2d_cpu, /*native_products=*/true>::call);
  m.impl("deform_conv2d_backward", &cpu::InFloat32<&deform_conv2d_backward_cpu>::call);
}

}  // namespace flexops
