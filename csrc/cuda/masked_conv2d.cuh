#pragma once
// Channel-masked convolution for every task in one launch per kernel: the implicit-GEMM kernels that
// csrc/cuda/masked_conv2d.cu launches, and the host code around them (channel lists, buffers, grids).
//
// Each mask becomes per-task lists with the task's active channels first plus their counts, so a
// thread reduces over its task's active channels only and the cost follows active-in x active-out
// per task (flexops/triton/masked_conv2d.py does the same with tiles of tl.dot). Every kernel is
// written here as the work of one (block, thread) of a one-dimensional grid of kThreads-thread
// blocks, with register tiles and no shared memory or barriers; the __global__ wrappers and their
// launches live in masked_conv2d.cu, which passes them to the host functions below as a launcher.
// Index math is 64-bit throughout: offsets of large tensors pass 2^31.
//
// Tasks: with M = max(mask rows) > 1 there are M tasks, one output row each, reading input row 0
// (a batch of 1 shared by all tasks: batch stride 0) or their own; with M = 1 every sample uses the
// single mask rows. The forward and grad_input kernels give each output row its own task index
// (mask row step 0 when M = 1); grad_weight sums the M = 1 batch inside one task.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "common/layout.h"
#include "common/masked_conv2d.h"

namespace flexops::masked_cuda {

constexpr int kThreads = 128;  // threads per block
constexpr int kTile = 8;       // channels per thread, kept in registers
// grad_weight splits its pixel sum over blocks to fill the device, but not below this many pixels
// per slice, so each atomic add carries a worthwhile partial sum.
constexpr int64_t kMinSlicePixels = 128;

struct Geometry {
  int64_t height, width, out_height, out_width, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// Element strides of a 4-d tensor: n is the batch (or, for a weight, output channel) stride.
struct Strides {
  int64_t n, c, h, w;
};

// Per-task channel lists of one mask: row r of `index` ([rows, channels]) holds the active
// channels of mask row r first, count[r] of them, then the inactive ones. row_step is 0 when one
// mask row serves every task.
struct ChannelList {
  const int32_t* index;
  const int32_t* count;
  int64_t row_step, channels;
};

__device__ __forceinline__ const int32_t* list_row(const ChannelList& list, int64_t task) {
  return list.index + task * list.row_step * list.channels;
}

__device__ __forceinline__ int64_t list_count(const ChannelList& list, int64_t task) {
  return list.count[task * list.row_step];
}

// Positions [tile * kTile, tile * kTile + size) of a task's list; the first `active` of them are
// active channels. Slots past `size` repeat the last channel so that the unrolled loops over all
// kTile slots read valid memory; only the first `size` (or `active`) slots are stored.
struct Tile {
  int64_t channel[kTile];
  int size, active;
};

__device__ __forceinline__ Tile load_tile(const ChannelList& list, int64_t task, int64_t tile) {
  const int32_t* row = list_row(list, task);
  const int64_t first = tile * kTile;
  const int64_t left = list.channels - first;
  const int64_t active = list_count(list, task) - first;
  Tile t;
  t.size = left < kTile ? static_cast<int>(left) : kTile;
  t.active = active < 0 ? 0 : (active < t.size ? static_cast<int>(active) : t.size);
  for (int j = 0; j < kTile; ++j) {
    t.channel[j] = row[first + (j < t.size ? j : t.size - 1)];
  }
  return t;
}

template <typename scalar_t>
struct ForwardArgs {
  const scalar_t* input;
  const scalar_t* weight;
  const scalar_t* bias;  // null without bias
  scalar_t* output;
  Strides input_strides, weight_strides, output_strides;
  int64_t bias_stride;
  ChannelList in, out;
  Geometry geo;
  int64_t pixel_blocks, tiles;  // grid: output rows x tiles x pixel_blocks
};

// One output pixel of one output row (task) for one tile of kTile positions of its output-channel
// list: sum over the task's active input channels and the kernel taps. Slots past the active
// count are the task's inactive channels and get 0, so every output element is written once.
template <typename scalar_t>
__device__ __forceinline__ void forward_thread(const ForwardArgs<scalar_t>& a, int64_t block,
                                        int64_t thread) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry& g = a.geo;
  const int64_t pixel = block % a.pixel_blocks * kThreads + thread;
  const int64_t task = block / a.pixel_blocks / a.tiles;
  if (pixel >= g.out_height * g.out_width) {
    return;
  }
  const int64_t oy = pixel / g.out_width, ox = pixel % g.out_width;
  const Tile out = load_tile(a.out, task, block / a.pixel_blocks % a.tiles);
  acc_t acc[kTile] = {};
  if (out.active > 0) {
    const int32_t* in_channels = list_row(a.in, task);
    const int64_t in_count = list_count(a.in, task);
    int64_t weight_offset[kTile];
    for (int j = 0; j < kTile; ++j) {
      weight_offset[j] = out.channel[j] * a.weight_strides.n;
    }
    for (int64_t ky = 0; ky < g.kernel_h; ++ky) {
      const int64_t iy = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
      if (iy < 0 || iy >= g.height) {
        continue;
      }
      for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
        const int64_t ix = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
        if (ix < 0 || ix >= g.width) {
          continue;
        }
        const scalar_t* x = a.input + task * a.input_strides.n + iy * a.input_strides.h +
                            ix * a.input_strides.w;
        const scalar_t* w = a.weight + ky * a.weight_strides.h + kx * a.weight_strides.w;
        for (int64_t c = 0; c < in_count; ++c) {
          const int64_t channel = in_channels[c];
          const acc_t value = static_cast<acc_t>(x[channel * a.input_strides.c]);
          const scalar_t* w_channel = w + channel * a.weight_strides.c;
          for (int j = 0; j < kTile; ++j) {
            acc[j] += value * static_cast<acc_t>(w_channel[weight_offset[j]]);
          }
        }
      }
    }
    if (a.bias != nullptr) {
      for (int j = 0; j < kTile; ++j) {
        acc[j] += static_cast<acc_t>(a.bias[out.channel[j] * a.bias_stride]);
      }
    }
  }
  scalar_t* y = a.output + task * a.output_strides.n + oy * a.output_strides.h +
                ox * a.output_strides.w;
  for (int j = 0; j < kTile; ++j) {
    if (j < out.size) {
      y[out.channel[j] * a.output_strides.c] = static_cast<scalar_t>(j < out.active ? acc[j] : acc_t(0));
    }
  }
}

template <typename scalar_t>
struct GradInputArgs {
  const scalar_t* grad_output;
  const scalar_t* weight;
  // Exactly one is set: grad_input when each task has its own input sample (plain stores), or
  // shared_grad_input, the opmath buffer into which all tasks of one shared sample add.
  scalar_t* grad_input;
  at::opmath_type<scalar_t>* shared_grad_input;
  Strides grad_output_strides, weight_strides, grad_input_strides;  // batch stride 0 when shared
  ChannelList in, out;
  Geometry geo;
  int64_t pixel_blocks, tiles;  // grid: output rows x tiles x pixel_blocks
};

// One input pixel of one task for one tile of its input-channel list: the transposed convolution,
// summing over the task's active output channels and the taps that reach an output pixel.
template <typename scalar_t>
__device__ __forceinline__ void grad_input_thread(const GradInputArgs<scalar_t>& a, int64_t block,
                                           int64_t thread) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry& g = a.geo;
  const int64_t pixel = block % a.pixel_blocks * kThreads + thread;
  const int64_t task = block / a.pixel_blocks / a.tiles;
  if (pixel >= g.height * g.width) {
    return;
  }
  const Tile in = load_tile(a.in, task, block / a.pixel_blocks % a.tiles);
  const bool shared = a.shared_grad_input != nullptr;
  if (shared && in.active == 0) {
    return;  // other tasks may own these channels of the shared sample
  }
  const int64_t iy = pixel / g.width, ix = pixel % g.width;
  acc_t acc[kTile] = {};
  if (in.active > 0) {
    const int32_t* out_channels = list_row(a.out, task);
    const int64_t out_count = list_count(a.out, task);
    int64_t weight_offset[kTile];
    for (int j = 0; j < kTile; ++j) {
      weight_offset[j] = in.channel[j] * a.weight_strides.c;
    }
    for (int64_t ky = 0; ky < g.kernel_h; ++ky) {
      // Output row oy reads input row oy * stride - pad + ky * dilation; invert that for iy.
      const int64_t ty = iy + g.pad_h - ky * g.dilation_h;
      if (ty < 0 || ty % g.stride_h != 0 || ty / g.stride_h >= g.out_height) {
        continue;
      }
      const int64_t oy = ty / g.stride_h;
      for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
        const int64_t tx = ix + g.pad_w - kx * g.dilation_w;
        if (tx < 0 || tx % g.stride_w != 0 || tx / g.stride_w >= g.out_width) {
          continue;
        }
        const int64_t ox = tx / g.stride_w;
        const scalar_t* grad = a.grad_output + task * a.grad_output_strides.n +
                               oy * a.grad_output_strides.h + ox * a.grad_output_strides.w;
        const scalar_t* w = a.weight + ky * a.weight_strides.h + kx * a.weight_strides.w;
        for (int64_t c = 0; c < out_count; ++c) {
          const int64_t channel = out_channels[c];
          const acc_t value = static_cast<acc_t>(grad[channel * a.grad_output_strides.c]);
          const scalar_t* w_channel = w + channel * a.weight_strides.n;
          for (int j = 0; j < kTile; ++j) {
            acc[j] += value * static_cast<acc_t>(w_channel[weight_offset[j]]);
          }
        }
      }
    }
  }
  const int64_t offset = task * a.grad_input_strides.n + iy * a.grad_input_strides.h +
                         ix * a.grad_input_strides.w;
  for (int j = 0; j < kTile; ++j) {
    if (shared && j < in.active) {
      gpuAtomicAdd(a.shared_grad_input + offset + in.channel[j] * a.grad_input_strides.c, acc[j]);
    } else if (!shared && j < in.size) {
      // Inactive input channels get 0.
      a.grad_input[offset + in.channel[j] * a.grad_input_strides.c] =
          static_cast<scalar_t>(j < in.active ? acc[j] : acc_t(0));
    }
  }
}

template <typename scalar_t>
struct GradWeightArgs {
  const scalar_t* grad_output;
  const scalar_t* input;
  at::opmath_type<scalar_t>* grad_weight;  // zeroed opmath buffer, contiguous
  Strides grad_output_strides, input_strides, grad_weight_strides;  // input: batch stride 0 when shared
  ChannelList in, out;
  Geometry geo;
  int64_t rows_per_task;  // output rows of one task: the batch when M = 1, else 1
  // grid: tasks x slices x task_blocks; a slice is slice_pixels of the task's rows x Ho x Wo pixels.
  int64_t in_tiles, task_blocks, slices, slice_pixels;
};

// One (active output channel, tile of active input channels, tap) of one task, summed over one
// slice of the task's output pixels and added into grad_weight: tasks and slices share entries.
template <typename scalar_t>
__device__ __forceinline__ void grad_weight_thread(const GradWeightArgs<scalar_t>& a, int64_t block,
                                            int64_t thread) {
  using acc_t = at::opmath_type<scalar_t>;
  const Geometry& g = a.geo;
  const int64_t taps = g.kernel_h * g.kernel_w;
  // Taps vary fastest: neighbouring threads read neighbouring input pixels.
  const int64_t index = block % a.task_blocks * kThreads + thread;
  const int64_t slice = block / a.task_blocks % a.slices;
  const int64_t task = block / a.task_blocks / a.slices;
  const int64_t position = index / taps / a.in_tiles;
  if (position >= list_count(a.out, task)) {
    return;  // past the task's active output channels (and past Cout)
  }
  const Tile in = load_tile(a.in, task, index / taps % a.in_tiles);
  if (in.active == 0) {
    return;
  }
  const int64_t out_channel = list_row(a.out, task)[position];
  const int64_t ky = index % taps / g.kernel_w, kx = index % g.kernel_w;
  int64_t input_offset[kTile];
  for (int j = 0; j < kTile; ++j) {
    input_offset[j] = in.channel[j] * a.input_strides.c;
  }
  const int64_t plane = g.out_height * g.out_width;
  const int64_t begin = slice * a.slice_pixels;
  const int64_t end = begin + a.slice_pixels < a.rows_per_task * plane
                          ? begin + a.slice_pixels
                          : a.rows_per_task * plane;
  // Walk (row, oy, ox) from `begin` by increments instead of dividing at every pixel.
  int64_t row = task * a.rows_per_task + begin / plane;
  int64_t oy = begin % plane / g.out_width, ox = begin % g.out_width;
  acc_t acc[kTile] = {};
  for (int64_t p = begin; p < end; ++p) {
    const int64_t iy = oy * g.stride_h - g.pad_h + ky * g.dilation_h;
    const int64_t ix = ox * g.stride_w - g.pad_w + kx * g.dilation_w;
    if (iy >= 0 && iy < g.height && ix >= 0 && ix < g.width) {
      const acc_t grad = static_cast<acc_t>(
          a.grad_output[row * a.grad_output_strides.n + out_channel * a.grad_output_strides.c +
                        oy * a.grad_output_strides.h + ox * a.grad_output_strides.w]);
      const scalar_t* x =
          a.input + row * a.input_strides.n + iy * a.input_strides.h + ix * a.input_strides.w;
      for (int j = 0; j < kTile; ++j) {
        acc[j] += grad * static_cast<acc_t>(x[input_offset[j]]);
      }
    }
    if (++ox == g.out_width) {
      ox = 0;
      if (++oy == g.out_height) {
        oy = 0;
        ++row;
      }
    }
  }
  acc_t* grad_weight = a.grad_weight + out_channel * a.grad_weight_strides.n +
                       ky * a.grad_weight_strides.h + kx * a.grad_weight_strides.w;
  for (int j = 0; j < kTile; ++j) {
    if (j < in.active) {
      gpuAtomicAdd(grad_weight + in.channel[j] * a.grad_weight_strides.c, acc[j]);
    }
  }
}

// ---- Host side. `Launch` runs a kernel over a grid: launch(args, blocks) for each Args type
// above, and launch.resident_threads(), the threads the device runs at once. ----

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Sizes shared by the forward and the backward.
struct Problem {
  Geometry geo;
  int64_t rows;                  // output rows: M when M > 1, else the batch
  int64_t tasks, rows_per_task;  // grad_weight's grouping: M tasks of 1 row, or 1 task of `rows`
  bool shared_input;             // one input sample read by every output row (batch 1, rows > 1)
};

// `size`: the output's, from masked::checked_output_size, which has checked every argument.
inline Problem problem(const std::vector<int64_t>& size, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& in_mask, const at::Tensor& out_mask, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  Problem p;
  p.geo = {input.size(2), input.size(3), size[2], size[3], weight.size(2), weight.size(3),
           stride[0],     stride[1],     padding[0], padding[1], dilation[0], dilation[1]};
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  p.rows = size[0];
  p.tasks = m > 1 ? m : 1;
  p.rows_per_task = m > 1 ? 1 : input.size(0);
  p.shared_input = input.size(0) == 1 && p.rows > 1;
  return p;
}

// Strides of t; with shared_batch, batch stride 0 so that every task reads (or adds into) row 0.
inline Strides strides_of(const at::Tensor& t, bool shared_batch = false) {
  return {shared_batch ? 0 : t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// A mask's channel lists on its device: a stable descending sort puts the active channels first.
struct DeviceChannelList {
  at::Tensor index, count;

  explicit DeviceChannelList(const at::Tensor& mask)
      : index(at::argsort(mask.to(at::kByte), /*stable=*/true, /*dim=*/1, /*descending=*/true)
                  .to(at::kInt)
                  .contiguous()),
        count(mask.sum({1}, /*keepdim=*/false, at::kInt)) {}

  ChannelList view() const {
    return {index.const_data_ptr<int32_t>(), count.const_data_ptr<int32_t>(),
            index.size(0) > 1 ? 1 : 0, index.size(1)};
  }
};

template <typename Launch, typename Args>
void launch(const Launch& launcher, const Args& args, int64_t blocks) {
  if (blocks == 0) {
    return;
  }
  TORCH_CHECK(blocks <= INT_MAX, "masked_conv2d: too large for one launch (", blocks, " blocks)");
  launcher(args, blocks);
}

template <typename Launch>
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                   const at::Tensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                   at::IntArrayRef dilation, const Launch& launcher) {
  const Problem p = problem(
      masked::checked_output_size("masked_conv2d", input, weight, bias, in_mask, out_mask, stride, padding, dilation),
      input, weight, in_mask, out_mask, stride, padding, dilation);
  const Geometry& g = p.geo;
  // Uninitialised: the kernel writes every element, inactive channels included.
  at::Tensor output = at::empty({p.rows, weight.size(0), g.out_height, g.out_width},
                                input.options().memory_format(output_memory_format(input)));
  if (output.numel() == 0) {
    return output;
  }
  const DeviceChannelList in(in_mask), out(out_mask);
  const bool has_bias = bias.has_value() && bias->defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "masked_conv2d", [&] {
    ForwardArgs<scalar_t> a;
    a.input = input.const_data_ptr<scalar_t>();
    a.weight = weight.const_data_ptr<scalar_t>();
    a.bias = has_bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    a.output = output.mutable_data_ptr<scalar_t>();
    a.input_strides = strides_of(input, input.size(0) == 1);
    a.weight_strides = strides_of(weight);
    a.output_strides = strides_of(output);
    a.bias_stride = has_bias ? bias->stride(0) : 0;
    a.in = in.view();
    a.out = out.view();
    a.geo = g;
    a.pixel_blocks = ceil_div(g.out_height * g.out_width, kThreads);
    a.tiles = ceil_div(weight.size(0), kTile);
    launch(launcher, a, p.rows * a.tiles * a.pixel_blocks);
  });
  return output;
}

// (grad_input, grad_weight, grad_bias); grad_bias is empty without bias. grad_input is laid out like
// the forward's output, grad_weight and grad_bias are contiguous.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    const Launch& launcher) {
  const Problem p = problem(
      masked::checked_backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding, dilation),
      input, weight, in_mask, out_mask, stride, padding, dilation);
  const Geometry& g = p.geo;
  const at::ScalarType opmath = at::toOpMathType(input.scalar_type());
  // Tasks sharing one input sample add into it with atomics, in an opmath buffer; on the GPU the
  // order of those adds, and so the rounding of the sum, is not deterministic. Otherwise each
  // element is written once, inactive channels with 0.
  const at::TensorOptions grad_input_options =
      input.options().memory_format(output_memory_format(input));
  at::Tensor grad_input = p.shared_input
                              ? at::empty(input.sizes(), grad_input_options.dtype(opmath)).zero_()
                              : at::empty(input.sizes(), grad_input_options);
  // Every task (and slice of the pixel sum) adds into one opmath buffer, likewise in no fixed order.
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options().dtype(opmath));
  at::Tensor grad_bias = at::empty({0}, weight.options());
  if (bias.has_value() && bias->defined()) {
    // Gradient reaching an inactive output channel is dropped: the forward zeroed it, bias included.
    grad_bias = at::where(out_mask.view({out_mask.size(0), out_mask.size(1), 1, 1}), grad_output, 0)
                    .sum({0, 2, 3}, /*keepdim=*/false, opmath)
                    .to(bias->scalar_type());
  }
  const DeviceChannelList in(in_mask), out(out_mask);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "masked_conv2d_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Also without output channels (Cout = 0): it then writes the zeros.
    if (grad_input.numel() > 0) {
      GradInputArgs<scalar_t> a;
      a.grad_output = grad_output.const_data_ptr<scalar_t>();
      a.weight = weight.const_data_ptr<scalar_t>();
      a.grad_input = p.shared_input ? nullptr : grad_input.mutable_data_ptr<scalar_t>();
      a.shared_grad_input = p.shared_input ? grad_input.mutable_data_ptr<acc_t>() : nullptr;
      a.grad_output_strides = strides_of(grad_output);
      a.weight_strides = strides_of(weight);
      a.grad_input_strides = strides_of(grad_input, p.shared_input);
      a.in = in.view();
      a.out = out.view();
      a.geo = g;
      a.pixel_blocks = ceil_div(g.height * g.width, kThreads);
      a.tiles = ceil_div(input.size(1), kTile);
      launch(launcher, a, p.rows * a.tiles * a.pixel_blocks);
    }
    if (grad_output.numel() > 0 && grad_weight.numel() > 0) {
      GradWeightArgs<scalar_t> a;
      a.grad_output = grad_output.const_data_ptr<scalar_t>();
      a.input = input.const_data_ptr<scalar_t>();
      a.grad_weight = grad_weight.mutable_data_ptr<acc_t>();
      a.grad_output_strides = strides_of(grad_output);
      a.input_strides = strides_of(input, input.size(0) == 1);
      a.grad_weight_strides = strides_of(grad_weight);
      a.in = in.view();
      a.out = out.view();
      a.geo = g;
      a.rows_per_task = p.rows_per_task;
      a.in_tiles = ceil_div(input.size(1), kTile);
      a.task_blocks = ceil_div(weight.size(0) * a.in_tiles * g.kernel_h * g.kernel_w, kThreads);
      // Split each task's pixel sum until the grid fills the device (counting every channel,
      // active or not: the counts stay on the device).
      const int64_t pixels = p.rows_per_task * g.out_height * g.out_width;
      const int64_t busy = p.tasks * a.task_blocks * kThreads;
      const int64_t slices = std::min(ceil_div(launcher.resident_threads(), busy),
                                      ceil_div(pixels, kMinSlicePixels));
      a.slice_pixels = ceil_div(pixels, std::max<int64_t>(slices, 1));
      a.slices = ceil_div(pixels, a.slice_pixels);
      launch(launcher, a, p.tasks * a.slices * a.task_blocks);
    }
  });
  return {grad_input.to(input.scalar_type()), grad_weight.to(weight.scalar_type()), grad_bias};
}

}  // namespace flexops::masked_cuda
