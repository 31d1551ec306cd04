// Tunable convolution on CPU (common/tunable_conv2d.h): kernels blended by a streaming loop into
// kept memory, shared pointwise kernels as matrix products, depthwise kernels on wide contiguous
// images by a direct loop, the rest through oneDNN's convolution.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/macros.h"
#include "common/tunable_conv2d.h"
#include "cpu/blend_range.h"
#include "cpu/blended_pointwise.h"
#include "cpu/in_float32.h"
#include "cpu/kept_memory.h"

namespace flexops {

namespace cpu {

// Declared in cpu/blend_range.h, which says what it computes and why it is written so.
template <typename param_t, typename scalar_t>
FLEXOPS_ALSO_AVX2 void blend_range(
    const param_t* params, const scalar_t* alpha, scalar_t* out, int64_t rows, int64_t p, int64_t numel,
    int64_t begin, int64_t end) {
  constexpr int64_t kChunk = 2048;
  for (int64_t start = begin; start < end; start += kChunk) {
    const int64_t stop = std::min(end, start + kChunk);
    for (int64_t r = 0; r < rows; ++r) {
      scalar_t* __restrict dst = out + r * numel;
      const scalar_t* row_alpha = alpha + r * p;
      const param_t* __restrict first = params;
      const scalar_t a0 = row_alpha[0];
      int64_t i = 1;
      if (p >= 2) {
        const param_t* __restrict second = params + numel;
        const scalar_t a1 = row_alpha[1];
        for (int64_t k = start; k < stop; ++k) {
          dst[k] = a0 * scalar_t(first[k]) + a1 * scalar_t(second[k]);
        }
        i = 2;
      } else {
        for (int64_t k = start; k < stop; ++k) {
          dst[k] = a0 * scalar_t(first[k]);
        }
      }
      for (; i + 1 < p; i += 2) {
        const param_t* __restrict src = params + i * numel;
        const param_t* __restrict next = src + numel;
        const scalar_t ai = row_alpha[i], aj = row_alpha[i + 1];
        for (int64_t k = start; k < stop; ++k) {
          dst[k] += ai * scalar_t(src[k]) + aj * scalar_t(next[k]);
        }
      }
      if (i < p) {
        const param_t* __restrict src = params + i * numel;
        const scalar_t ai = row_alpha[i];
        for (int64_t k = start; k < stop; ++k) {
          dst[k] += ai * scalar_t(src[k]);
        }
      }
    }
  }
}

template void blend_range(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void blend_range(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void blend_range(const at::BFloat16*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void blend_range(const at::Half*, const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace cpu

namespace {

// Measured on a 2-core x86 machine (bench/): one dense conv per sample beats a grouped conv over
// the folded batch once a sample's kernel has some 500 (output, input) channel pairs; below that
// the per-call overhead of B convolutions dominates, except for a kernel of a few output channels
// from many inputs (an image tail, 64 -> 3 at 9x9: 47 ms looped, 80 ms grouped for 4 samples at
// 128x128), which oneDNN's grouped convolution runs poorly. A depthwise kernel (one input channel
// per group) folded over the batch is a depthwise conv of B times the channels: always grouped.
tunable::PerSample per_sample_strategy(const at::Tensor& weight) {
  const int64_t out_channels = weight.size(1), group_in = weight.size(2);
  const bool depthwise = group_in == 1;
  const bool narrow_tail = out_channels <= 4 && group_in >= 16;
  return !depthwise && (out_channels * group_in >= 512 || narrow_tail) ? tunable::PerSample::kLoop
                                                                         : tunable::PerSample::kGroupedConv;
}

// out[r] = sum_i alpha[r, i] * params[i] for every row r, on the intra-op threads once the kernel
// is large enough to share.
template <typename param_t, typename scalar_t>
void blend_rows(const param_t* params, const scalar_t* alpha, scalar_t* out, int64_t rows, int64_t p,
                int64_t numel) {
  const int64_t grain = std::max<int64_t>(2048, 65536 / std::max<int64_t>(rows, 1));
  at::parallel_for(0, numel, grain, [&](int64_t begin, int64_t end) {
    cpu::blend_range(params, alpha, out, rows, p, numel, begin, end);
  });
}

// Blended kernels come from kept blocks (cpu/kept_memory.h) like the results: a 64x64x3x3 fp32
// kernel is 147 KB, and mapping it afresh every call costs more than blending it. The blend is in
// alpha's dtype: the params' own, or float32 for bfloat16 and float16 params (tunable_conv2d_cpu_any_dtype).
at::Tensor blend_cpu(const at::Tensor& params, const at::Tensor& alpha) {
  const int64_t p = params.size(0), numel = params.numel() / p;
  const at::Tensor rows = alpha.reshape({-1, p}).contiguous();
  at::Tensor out = cpu::kept_empty({rows.size(0), numel}, alpha.options());
  const at::Tensor source = params.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, params.scalar_type(), "tunable_conv2d_blend", [&] {
    using blend_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(rows.scalar_type() == c10::CppTypeToScalarType<blend_t>::value);
    blend_rows(source.const_data_ptr<scalar_t>(), rows.const_data_ptr<blend_t>(), out.mutable_data_ptr<blend_t>(),
               rows.size(0), p, numel);
  });
  return out;
}

// Tap column j of a depthwise kernel: output column ow reads input column ow * stride + shift, and
// the output columns [first, last) read inside the row.
struct TapColumn {
  int64_t shift, first, last;
};

// What every image plane of one depthwise convolution shares: sizes, the kernel's rows and its tap
// columns, and which kernel a plane takes (one per channel for the batch, or one per plane).
struct DepthwisePlanes {
  int64_t planes, channels, height, width, out_h, out_w, kernel_h, stride_h, padding_h, dilation_h, stride_w;
  bool shared;
  std::vector<TapColumn> columns;

  int64_t kernel_of(int64_t plane) const { return shared ? plane % channels : plane; }
};

// x [B, C, H, W] and kernels [R, C, kh, kw] (R = 1 or B), both contiguous, into outputs of out_h x out_w.
DepthwisePlanes depthwise_planes(const at::Tensor& x, const at::Tensor& kernels, int64_t out_h, int64_t out_w,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  DepthwisePlanes geometry{x.size(0) * x.size(1), x.size(1), x.size(2), x.size(3), out_h, out_w, kernels.size(2),
                           stride[0], padding[0], dilation[0], stride[1], kernels.size(0) == 1, {}};
  const int64_t width = geometry.width;
  for (int64_t j = 0; j < kernels.size(3); ++j) {
    const int64_t shift = j * dilation[1] - padding[1];
    geometry.columns.push_back({shift, shift >= 0 ? 0 : (-shift + stride[1] - 1) / stride[1],
                                shift > width - 1 ? 0 : std::min(out_w, (width - 1 - shift) / stride[1] + 1)});
  }
  return geometry;
}

// One image plane's depthwise convolution: each output row starts from the bias and gathers the
// kernel's taps one after another (a pass over the row per tap, the row staying in L1). Images of
// bfloat16 or float16 (storage_t) sum each row in float32 (compute_t, as the kernel and bias are) in
// `scratch`, one row long, and round it once into the output: no float32 copy of the image or result.
template <typename storage_t, typename compute_t = at::opmath_type<storage_t>>
FLEXOPS_ALSO_AVX2 void depthwise_plane(const DepthwisePlanes& g, const storage_t* image, const compute_t* kernel,
                                       compute_t bias, storage_t* out, compute_t* scratch) {
  constexpr bool in_place = std::is_same_v<storage_t, compute_t>;
  const int64_t kernel_w = static_cast<int64_t>(g.columns.size()), stride_w = g.stride_w;
  const TapColumn* columns = g.columns.data();
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    compute_t* __restrict row;
    if constexpr (in_place) {
      row = out + oh * g.out_w;
    } else {
      row = scratch;
    }
    std::fill(row, row + g.out_w, bias);
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t ih = oh * g.stride_h - g.padding_h + i * g.dilation_h;
      if (ih < 0 || ih >= g.height) {
        continue;
      }
      const storage_t* __restrict source = image + ih * g.width;
      for (int64_t j = 0; j < kernel_w; ++j) {
        const compute_t tap = kernel[i * kernel_w + j];
        const auto [shift, first, last] = columns[j];
        if (stride_w == 1) {
          for (int64_t ow = first; ow < last; ++ow) {
            row[ow] += tap * compute_t(source[ow + shift]);
          }
        } else {
          for (int64_t ow = first; ow < last; ++ow) {
            row[ow] += tap * compute_t(source[ow * stride_w + shift]);
          }
        }
      }
    }
    if constexpr (!in_place) {
      std::copy(row, row + g.out_w, out + oh * g.out_w);
    }
  }
}

// The gradients of depthwise_plane, with the same passes over rows: each tap scatters the output
// row's gradient into the image's and takes its dot product with the image row for the kernel's
// (in eight lanes, which the compiler vectorises without reordering a sum).
template <typename scalar_t>
FLEXOPS_ALSO_AVX2 void depthwise_plane_backward(const DepthwisePlanes& g, const scalar_t* grad_out,
                                                const scalar_t* image, const scalar_t* kernel, scalar_t* grad_image,
                                                scalar_t* grad_kernel) {
  constexpr int64_t kLanes = 8;
  const int64_t kernel_w = static_cast<int64_t>(g.columns.size()), stride_w = g.stride_w;
  const TapColumn* columns = g.columns.data();
  std::fill(grad_image, grad_image + g.height * g.width, scalar_t(0));
  std::fill(grad_kernel, grad_kernel + g.kernel_h * kernel_w, scalar_t(0));
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const scalar_t* __restrict row = grad_out + oh * g.out_w;
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t ih = oh * g.stride_h - g.padding_h + i * g.dilation_h;
      if (ih < 0 || ih >= g.height) {
        continue;
      }
      const scalar_t* __restrict source = image + ih * g.width;
      scalar_t* __restrict target = grad_image + ih * g.width;
      for (int64_t j = 0; j < kernel_w; ++j) {
        const scalar_t tap = kernel[i * kernel_w + j];
        const auto [shift, first, last] = columns[j];
        scalar_t lanes[kLanes] = {};
        int64_t ow = first;
        if (stride_w == 1) {
          for (int64_t o = first; o < last; ++o) {
            target[o + shift] += tap * row[o];
          }
          for (; ow + kLanes <= last; ow += kLanes) {
            for (int64_t l = 0; l < kLanes; ++l) {
              lanes[l] += row[ow + l] * source[ow + l + shift];
            }
          }
        } else {
          for (int64_t o = first; o < last; ++o) {
            target[o * stride_w + shift] += tap * row[o];
          }
        }
        for (; ow < last; ++ow) {
          lanes[0] += row[ow] * source[ow * stride_w + shift];
        }
        scalar_t dot = 0;
        for (int64_t l = 0; l < kLanes; ++l) {
          dot += lanes[l];
        }
        grad_kernel[i * kernel_w + j] += dot;
      }
    }
  }
}

// Depthwise kernels convolved directly, plane by plane, into the kept output. oneDNN reorders a
// contiguous batch into its blocked layout and back around a depthwise convolution, and those
// buffers fault in afresh: at NAFNet's widest level (4 x 64 x 128 x 128) the reorders took 12 of
// its 23 ms, and the loop takes 2. Each pass over a row costs a few ns whatever its length, so
// narrow rows (32 x 32 planes: 2.7x oneDNN's time; 96 wide: even) stay with oneDNN.
void depthwise_cpu(const at::Tensor& input, const at::Tensor& kernels, const at::Tensor& biases,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& output) {
  const at::Tensor x = input.contiguous(), taps = kernels.contiguous();
  const DepthwisePlanes g = depthwise_planes(x, taps, output.size(2), output.size(3), stride, padding, dilation);
  const int64_t image_size = g.height * g.width, out_size = g.out_h * g.out_w;
  const int64_t kernel_size = taps.size(2) * taps.size(3);
  const bool has_bias = biases.defined();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "tunable_conv2d_depthwise", [&] {
    using compute_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(taps.scalar_type() == c10::CppTypeToScalarType<compute_t>::value);
    const scalar_t* images = x.const_data_ptr<scalar_t>();
    const compute_t* kernel_data = taps.const_data_ptr<compute_t>();
    const compute_t* bias_data = has_bias ? biases.const_data_ptr<compute_t>() : nullptr;
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<compute_t> scratch(std::is_same_v<scalar_t, compute_t> ? 0 : g.out_w);
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t kernel = g.kernel_of(plane);
        depthwise_plane(g, images + plane * image_size, kernel_data + kernel * kernel_size,
                        has_bias ? bias_data[kernel] : compute_t(0), out + plane * out_size, scratch.data());
      }
    });
  });
}

std::pair<at::Tensor, at::Tensor> depthwise_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                                         const at::Tensor& kernels, at::IntArrayRef stride,
                                                         at::IntArrayRef padding, at::IntArrayRef dilation) {
  const at::Tensor x = input.contiguous(), taps = kernels.contiguous(), dy = grad_output.contiguous();
  const DepthwisePlanes g = depthwise_planes(x, taps, dy.size(2), dy.size(3), stride, padding, dilation);
  const int64_t image_size = g.height * g.width, out_size = g.out_h * g.out_w;
  const int64_t kernel_size = taps.size(2) * taps.size(3);
  at::Tensor grad_input = cpu::kept_empty(x.sizes(), x.options());
  at::Tensor grad_planes = at::empty({g.planes, kernel_size}, x.options());  // one kernel gradient per plane
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tunable_conv2d_depthwise_backward", [&] {
    const scalar_t* images = x.const_data_ptr<scalar_t>();
    const scalar_t* grads = dy.const_data_ptr<scalar_t>();
    const scalar_t* kernel_data = taps.const_data_ptr<scalar_t>();
    scalar_t* grad_images = grad_input.mutable_data_ptr<scalar_t>();
    scalar_t* grad_kernels = grad_planes.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, g.planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        depthwise_plane_backward(g, grads + plane * out_size, images + plane * image_size,
                                 kernel_data + g.kernel_of(plane) * kernel_size, grad_images + plane * image_size,
                                 grad_kernels + plane * kernel_size);
      }
    });
  });
  const at::Tensor per_sample = grad_planes.view({x.size(0), g.channels * kernel_size});
  return {grad_input, g.shared ? per_sample.sum(0, /*keepdim=*/true) : per_sample};
}

// Results of 128 KiB or more come from kept blocks (cpu/kept_memory.h), as the other ops' do: the
// per-sample kernels of a batch of 4 are 8 MB for one of NAFNet's 512 -> 1024 layers. Shared
// pointwise kernels run as matrix products: oneDNN's 1x1 convolution reorders the kernel and, at
// 32 -> 64 channels on 128x128, takes 2 ms where the product takes 0.6 ms (10-20 % elsewhere). A
// batched product of one column per sample runs as a GEMM, 10x slower than matrix-vector products
// (2.3 against 0.2 ms for 512 -> 1024 kernels, B = 4). Per-sample convolutions run one sample per
// thread: a batch-1 oneDNN convolution on both threads ran 14 % slower than the batched one (4x64x
// 128x128 3x3 per sample: 28.0 -> 25.8 ms, nn.Conv2d 24.4 ms).
constexpr tunable::Platform kCpu{&per_sample_strategy, /*samples_in_parallel=*/true, &blend_cpu, &cpu::kept_empty,
                                 /*shared_pointwise_as_matmul=*/true, /*one_pixel_as_matvec=*/true, &depthwise_cpu,
                                 &depthwise_backward_cpu, /*depthwise_min_width=*/96, &cpu::blended_pointwise};

// Kernels for products in a half type: blended in float32 (each weight widened exactly) and rounded once.
at::Tensor blend_rounded_cpu(const at::Tensor& params, const at::Tensor& alpha) {
  return cpu::widening::kept_copy(blend_cpu(params, alpha.to(at::kFloat)), params.scalar_type());
}

// kCpu for half types where oneDNN multiplies in them (cpu::half_type_products): every convolution
// is the platform's, on rounded kernels (the direct depthwise loop and the blending product take
// float32 kernels).
constexpr tunable::Platform kCpuHalfProducts{&per_sample_strategy, /*samples_in_parallel=*/true, &blend_rounded_cpu,
                                             &cpu::kept_empty, /*shared_pointwise_as_matmul=*/true,
                                             /*one_pixel_as_matvec=*/true, nullptr, nullptr, 0, nullptr};

at::Tensor tunable_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  return tunable::forward(input, weight, bias, alpha, stride, padding, dilation, groups, kCpu);
}

// Floats in each of the two float32 tiles of half_type_pointwise: 512 KB, as few blocks of one size
// as the pool (cpu/kept_memory.h) keeps for every layer.
constexpr int64_t kTileFloats = int64_t(1) << 17;

// A shared pointwise kernel [Cout, Cin] (float32, blended) on contiguous bfloat16 or float16 images,
// into `output` of their dtype: tiles of pixels are widened, multiplied in float32 and rounded into
// the output. Whole float32 copies of the images and the result would stay in the pool after the
// call, beside the half-type tensors, and defeat the point of the half type: for tunable NAFNet at
// 128x128 they held 18 MB.
void half_type_pointwise(const at::Tensor& input, const at::Tensor& kernel, const std::optional<at::Tensor>& bias,
                         at::Tensor& output) {
  const int64_t in_channels = kernel.size(1), out_channels = kernel.size(0);
  const int64_t pixels = input.size(2) * input.size(3);
  const int64_t channels = std::max<int64_t>({in_channels, out_channels, 1});
  const int64_t tile_floats = std::max(kTileFloats, channels), tile = tile_floats / channels;
  const at::TensorOptions float32 = input.options().dtype(at::kFloat);
  const at::Tensor x_tiles = cpu::kept_empty({tile_floats}, float32), y_tiles = cpu::kept_empty({tile_floats}, float32);
  const at::Tensor x = tunable::pixel_matrices(input.contiguous(), false);
  at::Tensor y = tunable::pixel_matrices(output, false);
  for (int64_t b = 0; b < x.size(0); ++b) {
    for (int64_t start = 0; start < pixels; start += tile) {
      const int64_t width = std::min(tile, pixels - start);
      at::Tensor x_tile = x_tiles.narrow(0, 0, in_channels * width).view({in_channels, width});
      at::Tensor y_tile = y_tiles.narrow(0, 0, out_channels * width).view({out_channels, width});
      x_tile.copy_(x[b].narrow(1, start, width));
      bias ? at::addmm_out(y_tile, bias->unsqueeze(1), kernel, x_tile) : at::mm_out(y_tile, kernel, x_tile);
      y[b].narrow(1, start, width).copy_(y_tile);
    }
  }
}

// bfloat16 and float16. Where oneDNN multiplies in the half type (cpu::half_type_products) the
// convolutions are its, on kernels blended in float32 and rounded once (kCpuHalfProducts), but for
// one alpha's direct depthwise loop, which makes no products to hand over. Elsewhere, with one alpha
// for the batch (inference with one setting), the p kernels, most of a tunable network's bytes, are
// blended from their own type into one float32 kernel, without a float32 copy of all p (for NAFNet's
// 512 -> 1024 layers at p = 2, 4 MB a call, kept per size); contiguous images of pointwise kernels
// (half_type_pointwise) and of the direct depthwise loop (depthwise_plane) are widened tile by tile
// or row by row, and their results rounded as they are written; other convolutions, and every one
// with an alpha per sample, widen the input at the boundary (cpu/in_float32.h). The values are the
// float32 op's on the rounded inputs, rounded once: the blend widens each weight exactly, and a
// tile's products are the float32 op's.
at::Tensor tunable_conv2d_cpu_any_dtype(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  const at::ScalarType dtype = input.scalar_type();
  const bool half = cpu::widening::is_half_type(dtype), native = half && cpu::half_type_products(dtype);
  if (!half || (alpha.dim() != 1 && !native)) {
    return cpu::InFloat32<&tunable_conv2d_cpu>::call(input, weight, bias, alpha, stride, padding, dilation, groups);
  }
  // The arguments as they came (one dtype for all, or an error naming the odd one).
  const auto out_size =
      tunable::checked_output_size("tunable_conv2d", input, weight, bias, alpha, stride, padding, dilation, groups);
  const bool contiguous = output_memory_format(input) == at::MemoryFormat::Contiguous;
  const bool depthwise_loop =
      alpha.dim() == 1 && contiguous && tunable::direct_depthwise(kCpu, input, weight, groups, out_size[3]);
  if (native && !depthwise_loop) {
    return tunable::forward(input, weight, bias, alpha, stride, padding, dilation, groups, kCpuHalfProducts);
  }
  const at::Tensor alpha32 = alpha.to(at::kFloat);
  const at::Tensor kernel = blend_cpu(weight, alpha32);
  const std::optional<at::Tensor> blended_bias =
      bias.has_value() && bias->defined() ? std::optional<at::Tensor>(blend_cpu(*bias, alpha32).view({-1}))
                                          : std::nullopt;
  if (depthwise_loop) {
    at::Tensor output = cpu::kept_empty(out_size, input.options());
    depthwise_cpu(input, kernel.view(tunable::depthwise_kernel_shape(weight)),
                  blended_bias ? blended_bias->unsqueeze(0) : at::Tensor(), stride, padding, dilation, output);
    return output;
  }
  if (contiguous && tunable::pointwise(weight, stride, padding, groups)) {
    at::Tensor output = cpu::kept_empty(out_size, input.options());
    half_type_pointwise(input, kernel.view({weight.size(1), weight.size(2)}), blended_bias, output);
    return output;
  }
  const at::Tensor output = tunable::convolve_blended(cpu::widening::widen(input), weight, kernel, blended_bias,
                                                      out_size, stride, padding, dilation, groups, kCpu);
  return cpu::widening::narrow(output, dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tunable_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& alpha, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return tunable::backward(grad_output, input, weight, bias, alpha, stride, padding, dilation,
                           groups, kCpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("tunable_conv2d", &tunable_conv2d_cpu_any_dtype);
  m.impl("tunable_conv2d_backward", &cpu::InFloat32<&tunable_conv2d_backward_cpu>::call);
}

}  // namespace flexops
