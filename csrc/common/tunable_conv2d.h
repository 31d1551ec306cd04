#pragma once
// Tunable convolution as a composition of the platform's dense convolution (oneDNN on CPU, cuDNN on
// CUDA): the p kernels are blended once per alpha row, then convolved. The backward pass is the
// convolution's backward pass on the blended kernel, whose kernel gradient is projected back onto
// the p kernels and onto alpha. CPU and CUDA share this file; each says in a Platform how it blends,
// where results go and how per-sample kernels run, because the faster way differs between the two.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "common/conv_geometry.h"
#include "common/layout.h"

namespace flexops::tunable {

// How a batch whose samples each have their own blended kernel is convolved.
enum class PerSample {
  kGroupedConv,  // one conv with groups * B groups over the batch folded into channels
  kLoop,         // one dense conv per sample
};

// A 1x1 convolution without stride, padding or groups (dilation is moot at 1x1): per image it is
// one matrix product, [Cout, Cin] x [Cin, H * W], so a batch with its own kernel per sample is one
// batched product instead of B convolutions.
inline bool pointwise(const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                      int64_t groups) {
  return weight.size(3) == 1 && weight.size(4) == 1 && groups == 1 && stride[0] == 1 &&
         stride[1] == 1 && padding[0] == 0 && padding[1] == 0;
}

// What differs between the platforms that share the composition below.
struct Platform {
  // How a batch with its own kernel per sample is convolved (pointwise kernels aside).
  PerSample (*per_sample)(const at::Tensor& weight);
  // Whether PerSample::kLoop runs its samples on the intra-op threads, one convolution per thread at
  // a time, when they divide the batch evenly, rather than one after another with every thread in each.
  bool samples_in_parallel;
  // sum_i alpha[r, i] * params[i] for every row r of alpha ([p] is one row): [rows, numel / p].
  at::Tensor (*blend)(const at::Tensor& params, const at::Tensor& alpha);
  // An uninitialised tensor for a result (the output, a product).
  at::Tensor (*empty)(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format);
  // Whether a shared kernel's pointwise convolution runs as matrix products rather than as the
  // platform's convolution.
  bool shared_pointwise_as_matmul;
  // Whether per-sample pointwise kernels on images of one pixel (a squeeze-and-excitation's pooled
  // vector) run as B matrix-vector products rather than one batched product.
  bool one_pixel_as_matvec;
  // A contiguous image's depthwise convolution (one input channel per output channel) into
  // `output`: kernels [R, C, kh, kw] and biases [R, C] (or undefined), R = 1 shared or one per
  // sample; nullptr: the platform's convolution runs them all.
  void (*depthwise)(const at::Tensor& input, const at::Tensor& kernels, const at::Tensor& biases,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& output);
  // Its gradients for the input and the kernels ([R, C * kh * kw], summed over the batch when R = 1).
  std::pair<at::Tensor, at::Tensor> (*depthwise_backward)(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& kernels, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, at::IntArrayRef dilation);
  // The narrowest output rows `depthwise` takes; narrower ones go to the platform's convolution.
  int64_t depthwise_min_width;
  // A pointwise convolution with its own kernel per sample, blended from `weight` by `alpha` [B, p]
  // as its product packs them (biases [B, Cout] or undefined, already blended), for images of few
  // pixels, where writing B blended kernels out costs as much as their products: fills `output` and
  // returns true, or returns false, writing nothing, where it does not take the case; nullptr: never.
  bool (*blended_pointwise)(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& alpha,
                            const at::Tensor& biases, at::Tensor& output);
};

// Whether the platform's own depthwise loop runs this convolution (one input channel per output
// channel, a contiguous image, output rows of `out_width` or more).
inline bool direct_depthwise(const Platform& platform, const at::Tensor& input, const at::Tensor& weight,
                             int64_t groups, int64_t out_width) {
  return platform.depthwise && groups == input.size(1) && groups == weight.size(1) &&
         output_memory_format(input) == at::MemoryFormat::Contiguous && out_width >= platform.depthwise_min_width;
}

// A depthwise weight's kernels [p or rows, C, kh, kw].
inline std::vector<int64_t> depthwise_kernel_shape(const at::Tensor& weight) {
  return {-1, weight.size(1), weight.size(3), weight.size(4)};
}

// sum_i alpha[r, i] * params[i] as one [rows, p] x [p, numel / p] matrix product.
inline at::Tensor blend_by_matmul(const at::Tensor& params, const at::Tensor& alpha) {
  const int64_t p = params.size(0);
  return at::mm(alpha.reshape({-1, p}), params.reshape({p, -1}));
}

// Checks every argument (common/conv_geometry.h) and returns the output's sizes [B, Cout, Ho, Wo].
// input [B, Cin, H, W]; weight [p, Cout, Cin / groups, kh, kw]; bias [p, Cout] or None; alpha [p]
// (shared by the batch) or [B, p] (one row per sample); all of input's dtype, on its device.
inline std::vector<int64_t> checked_output_size(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation, int64_t groups) {
  conv::check_dim(op, "input", input, 4, "[B, Cin, H, W]");
  conv::check_dim(op, "weight", weight, 5, "[p, Cout, Cin / groups, kh, kw]");
  conv::check_like_input(op, "weight", weight, input);
  conv::check_like_input(op, "alpha", alpha, input);
  TORCH_CHECK(input.is_floating_point(), op, ": input must be a floating-point tensor, got ", input.scalar_type());
  const int64_t p = weight.size(0), out_channels = weight.size(1);
  TORCH_CHECK(p >= 1, op, ": weight must hold at least one kernel (p >= 1), got ", weight.sizes());
  TORCH_CHECK((alpha.dim() == 1 && alpha.size(0) == p) ||
                  (alpha.dim() == 2 && alpha.size(0) == input.size(0) && alpha.size(1) == p),
              op, ": alpha must be [p] = [", p, "] or [B, p] = [", input.size(0), ", ", p, "], got ", alpha.sizes());
  if (bias.has_value() && bias->defined()) {
    conv::check_like_input(op, "bias", *bias, input);
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == p && bias->size(1) == out_channels, op,
                ": bias must be [p, Cout] = [", p, ", ", out_channels, "], got ", bias->sizes());
  }
  conv::check_groups(op, input.size(1), weight.size(2), out_channels, groups);
  conv::check_window(op, stride, padding, dilation);
  const auto [out_h, out_w] = conv::output_hw(op, input.size(2), input.size(3), weight.size(3), weight.size(4),
                                             stride, padding, dilation);
  std::vector<int64_t> size = {input.size(0), out_channels, out_h, out_w};
  conv::check_numel(op, "output", size);
  // Per-sample kernels are blended into [B, numel of one kernel].
  conv::check_numel(op, "blended kernels", {alpha.dim() == 2 ? input.size(0) : 1, weight[0].numel()});
  return size;
}

// Terms per block of a long fp32 reduction (below).
constexpr int64_t kReductionBlock = 4096;

// lhs [R, M, K] x rhs [R, K, N] -> [R, M, N], as at::bmm, but a long K (a large image's pixels) is
// cut into blocks whose products at::sum then adds: one running fp32 sum
// over the 2^20 pixels of a 1024x1024 image lost 1.6e-4 of relative accuracy in a weight gradient,
// where PyTorch's own convolution keeps 5e-7. Operands may be transposed views; blocks are views.
inline at::Tensor long_bmm(const at::Tensor& lhs, const at::Tensor& rhs) {
  const int64_t depth = lhs.size(2);
  if (depth <= 2 * kReductionBlock) {
    return at::bmm(lhs, rhs);
  }
  const int64_t blocks = (depth + kReductionBlock - 1) / kReductionBlock;
  at::Tensor partial = at::empty({blocks, lhs.size(0), lhs.size(1), rhs.size(2)}, lhs.options());
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t start = i * kReductionBlock, length = std::min(kReductionBlock, depth - start);
    at::Tensor block = partial[i];
    at::bmm_out(block, lhs.narrow(2, start, length), rhs.narrow(1, start, length));
  }
  return partial.sum(0);
}

// long_bmm for one pair of matrices: [M, K] x [K, N].
inline at::Tensor long_mm(const at::Tensor& lhs, const at::Tensor& rhs) {
  return long_bmm(lhs.unsqueeze(0), rhs.unsqueeze(0)).squeeze(0);
}

// A pointwise convolution's images as a batch of matrices, without copying either layout:
// [B, C, H * W] for a contiguous tensor, [B, H * W, C] for a channels-last one (`last`).
inline at::Tensor pixel_matrices(const at::Tensor& images, bool last) {
  const int64_t batch = images.size(0), channels = images.size(1);
  const int64_t pixels = images.size(2) * images.size(3);  // explicit: a view of no elements takes no -1
  return last ? images.permute({0, 2, 3, 1}).view({batch, pixels, channels})
              : images.view({batch, channels, pixels});
}

// y_b = K_r x_b (+ bias_r) for a pointwise convolution, as matrix products written into `output`
// (laid out as output_memory_format(input)): kernels [R, Cout, Cin] and biases [R, Cout] (or
// undefined), R = 1 for a kernel shared by the batch, else one per sample. A contiguous image is
// [Cout, Cin] x [Cin, H * W]; channels-last pixels are [H * W, Cin] x [Cin, Cout], and a shared kernel
// then takes one product over every pixel of the batch.
inline void pointwise_forward(const at::Tensor& input, const at::Tensor& kernels, const at::Tensor& biases,
                              at::Tensor& output, const Platform& platform) {
  const at::MemoryFormat format = output_memory_format(input);
  const bool last = format == at::MemoryFormat::ChannelsLast;
  const bool shared = kernels.size(0) == 1, has_bias = biases.defined();
  const at::Tensor x = pixel_matrices(input.contiguous(format), last);
  at::Tensor y = pixel_matrices(output, last);
  if (last && shared) {
    at::Tensor pixels_out = y.view({y.size(0) * y.size(1), y.size(2)});
    const at::Tensor pixels = x.reshape({x.size(0) * x.size(1), x.size(2)}), kernel_t = kernels[0].t();
    has_bias ? at::addmm_out(pixels_out, biases[0], pixels, kernel_t) : at::mm_out(pixels_out, pixels, kernel_t);
  } else if (shared) {
    for (int64_t b = 0; b < x.size(0); ++b) {
      at::Tensor image_out = y[b];
      has_bias ? at::addmm_out(image_out, biases[0].unsqueeze(1), kernels[0], x[b])
               : at::mm_out(image_out, kernels[0], x[b]);
    }
  } else if (platform.one_pixel_as_matvec && input.size(2) * input.size(3) == 1) {
    // Both layouts are alike at one pixel.
    const at::Tensor vectors = x.view({x.size(0), -1});
    at::Tensor out_vectors = y.view({y.size(0), -1});
    for (int64_t b = 0; b < x.size(0); ++b) {
      at::Tensor out_vector = out_vectors[b];
      has_bias ? at::addmv_out(out_vector, biases[b], kernels[b], vectors[b])
               : at::mv_out(out_vector, kernels[b], vectors[b]);
    }
  } else {
    const at::Tensor lhs = last ? x : kernels, rhs = last ? kernels.transpose(1, 2) : x;
    const at::Tensor bias_columns = has_bias ? biases.unsqueeze(last ? 1 : 2) : at::Tensor();
    if (has_bias && at::isReducedFloatingType(y.scalar_type())) {
      // A half-type output takes the bias inside the product: rounded once, not twice.
      at::baddbmm_out(y, bias_columns.expand_as(y), lhs, rhs);
    } else {
      // In float32 adding it afterwards is faster (CPU, 4 x 32 -> 64 x 16384 pixels: 4.2-6.7 against
      // 6.3-7.5 ms): baddbmm first copies the expanded bias into the output.
      at::bmm_out(y, lhs, rhs);
      if (has_bias) {
        y.add_(bias_columns);
      }
    }
  }
}

// The gradients of pointwise_forward for the input and the kernels ([R, Cout * Cin]), as matrix
// products: dx_b = K_r^T dy_b and dK_r = sum over r's samples of dy_b x_b^T (transposed likewise for
// channels-last pixels).
inline std::pair<at::Tensor, at::Tensor> pointwise_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                            const at::Tensor& kernels,
                                                            const Platform& platform) {
  const at::MemoryFormat format = output_memory_format(input);
  const bool last = format == at::MemoryFormat::ChannelsLast;
  const bool shared = kernels.size(0) == 1;
  const at::Tensor x = pixel_matrices(input.contiguous(format), last);
  const at::Tensor dy = pixel_matrices(grad_output.contiguous(format), last);
  at::Tensor grad_input = platform.empty(input.sizes(), input.options(), format);
  at::Tensor dx = pixel_matrices(grad_input, last);
  at::Tensor grad_kernels;
  if (last && shared) {
    const int64_t rows = x.size(0) * x.size(1);
    const at::Tensor pixels = x.reshape({rows, x.size(2)}), grad_pixels = dy.reshape({rows, dy.size(2)});
    at::Tensor grad_pixels_in = dx.view({rows, dx.size(2)});
    at::mm_out(grad_pixels_in, grad_pixels, kernels[0]);
    grad_kernels = long_mm(grad_pixels.t(), pixels).unsqueeze(0);
  } else if (shared) {
    for (int64_t b = 0; b < x.size(0); ++b) {
      at::Tensor image_grad = dx[b];
      at::mm_out(image_grad, kernels[0].t(), dy[b]);
    }
    grad_kernels = long_bmm(dy, x.transpose(1, 2)).sum(0, /*keepdim=*/true);
  } else if (platform.one_pixel_as_matvec && input.size(2) * input.size(3) == 1) {
    const at::Tensor vectors = x.view({x.size(0), -1}), grad_vectors = dy.view({dy.size(0), -1});
    at::Tensor grad_input_vectors = dx.view({dx.size(0), -1});
    for (int64_t b = 0; b < x.size(0); ++b) {
      at::Tensor grad_input_vector = grad_input_vectors[b];
      at::mv_out(grad_input_vector, kernels[b].t(), grad_vectors[b]);
    }
    grad_kernels = grad_vectors.unsqueeze(2) * vectors.unsqueeze(1);
  } else if (last) {
    at::bmm_out(dx, dy, kernels);
    grad_kernels = long_bmm(dy.transpose(1, 2), x);
  } else {
    at::bmm_out(dx, kernels.transpose(1, 2), dy);
    grad_kernels = long_bmm(dy, x.transpose(1, 2));
  }
  return {grad_input, grad_kernels.view({kernels.size(0), -1})};
}

// The convolution of input with one kernel blended from weight's p kernels (weight gives the
// shape: [p, Cout, Cin / groups, kh, kw]; kernel [1, numel of one kernel], blended_bias [Cout] or
// none): the forward of a call with one alpha for the batch, once it has blended.
inline at::Tensor convolve_blended(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& kernel,
                                   const std::optional<at::Tensor>& blended_bias, at::IntArrayRef out_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   int64_t groups, const Platform& platform) {
  const auto out_format = output_memory_format(input);
  if (direct_depthwise(platform, input, weight, groups, out_size[3])) {
    at::Tensor output = platform.empty(out_size, input.options(), out_format);
    platform.depthwise(input, kernel.view(depthwise_kernel_shape(weight)),
                       blended_bias ? blended_bias->unsqueeze(0) : at::Tensor(), stride, padding, dilation, output);
    return output;
  }
  if (pointwise(weight, stride, padding, groups) && platform.shared_pointwise_as_matmul) {
    at::Tensor output = platform.empty(out_size, input.options(), out_format);
    pointwise_forward(input, kernel.view({1, weight.size(1), weight.size(2)}),
                      blended_bias ? blended_bias->unsqueeze(0) : at::Tensor(), output, platform);
    return output;
  }
  return at::convolution(input, kernel.view(weight.sizes().slice(1)), blended_bias, stride, padding, dilation, false,
                         {0, 0}, groups)
      .contiguous(out_format);
}

// Outputs follow output_memory_format (common/layout.h) whichever way the convolution ran.
inline at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          int64_t groups, const Platform& platform) {
  const auto out_size =
      checked_output_size("tunable_conv2d", input, weight, bias, alpha, stride, padding, dilation, groups);
  const int64_t batch = input.size(0);
  const auto kernel_shape = weight.sizes().slice(1);  // [Cout, Cin / groups, kh, kw]
  const bool has_bias = bias.has_value() && bias->defined();
  if (alpha.dim() == 1) {
    const at::Tensor kernel = platform.blend(weight, alpha);
    const std::optional<at::Tensor> blended_bias =
        has_bias ? std::optional<at::Tensor>(platform.blend(*bias, alpha).view({-1}))
                 : std::nullopt;
    return convolve_blended(input, weight, kernel, blended_bias, out_size, stride, padding, dilation, groups,
                            platform);
  }
  const bool is_pointwise = pointwise(weight, stride, padding, groups);
  const auto out_format = output_memory_format(input);
  const bool is_direct_depthwise = direct_depthwise(platform, input, weight, groups, out_size[3]);
  if (batch == 0) {
    return at::empty(out_size, input.options().memory_format(out_format));
  }
  const at::Tensor biases = has_bias ? platform.blend(*bias, alpha) : at::Tensor();  // [B, Cout]
  if (is_pointwise || is_direct_depthwise) {
    at::Tensor output = platform.empty(out_size, input.options(), out_format);
    const bool blended_while_packed =
        is_pointwise && platform.blended_pointwise && platform.blended_pointwise(input, weight, alpha, biases, output);
    if (!blended_while_packed) {
      const at::Tensor kernels = platform.blend(weight, alpha);  // [B, numel of one kernel]
      is_pointwise
          ? pointwise_forward(input, kernels.view({batch, weight.size(1), weight.size(2)}), biases, output, platform)
          : platform.depthwise(input, kernels.view(depthwise_kernel_shape(weight)), biases, stride, padding, dilation,
                               output);
    }
    return output;
  }
  const at::Tensor kernels = platform.blend(weight, alpha);
  const PerSample per_sample = platform.per_sample(weight);
  if (per_sample == PerSample::kGroupedConv) {
    std::vector<int64_t> folded_kernel = {-1};
    folded_kernel.insert(folded_kernel.end(), kernel_shape.begin() + 1, kernel_shape.end());
    const at::Tensor folded_input =
        input.reshape({1, -1, input.size(2), input.size(3)});
    const std::optional<at::Tensor> folded_bias =
        has_bias ? std::optional<at::Tensor>(biases.view({-1})) : std::nullopt;
    return at::convolution(folded_input, kernels.view(folded_kernel), folded_bias, stride, padding,
                           dilation, false, {0, 0}, groups * batch)
        .view(out_size)
        .contiguous(out_format);
  }
  at::Tensor output = platform.empty(out_size, input.options(), out_format);
  const auto convolve = [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const std::optional<at::Tensor> sample_bias =
          has_bias ? std::optional<at::Tensor>(biases[b]) : std::nullopt;
      output.narrow(0, b, 1).copy_(at::convolution(input.narrow(0, b, 1), kernels[b].view(kernel_shape),
                                                   sample_bias, stride, padding, dilation, false,
                                                   {0, 0}, groups));
    }
  };
  if (platform.samples_in_parallel && batch % at::get_num_threads() == 0) {
    // The worker threads take this thread's dispatch state (below autograd, inference mode), so
    // that the convolutions they call run as they would here.
    const at::ThreadLocalState state;
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(state);
      convolve(begin, end);
    });
  } else {
    convolve(0, batch);
  }
  return output;
}

// Gradients with respect to (input, weight, bias, alpha); bias's is empty when bias is None.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& alpha, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, const Platform& platform) {
  const char* op = "tunable_conv2d_backward";
  const auto out_size = checked_output_size(op, input, weight, bias, alpha, stride, padding, dilation, groups);
  conv::check_like_input(op, "grad_output", grad_output, input);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(out_size), op, ": grad_output must be the output's sizes ",
              at::IntArrayRef(out_size), ", got ", grad_output.sizes());
  const int64_t p = weight.size(0);
  const int64_t batch = input.size(0);
  const auto kernel_shape = weight.sizes().slice(1);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool shared = alpha.dim() == 1;
  const at::Tensor alpha_rows = alpha.reshape({-1, p});  // [1 or B, p]

  const bool is_pointwise = pointwise(weight, stride, padding, groups);
  at::Tensor grad_input, grad_kernels;  // grad_kernels: [rows of alpha, numel of one kernel]
  if (batch > 0 && is_pointwise && (!shared || platform.shared_pointwise_as_matmul)) {
    const at::Tensor kernels = platform.blend(weight, alpha);
    std::tie(grad_input, grad_kernels) = pointwise_backward(
        grad_output, input, kernels.view({-1, weight.size(1), weight.size(2)}), platform);
  } else if (direct_depthwise(platform, input, weight, groups, grad_output.size(3))) {
    const at::Tensor kernels = platform.blend(weight, alpha);
    std::tie(grad_input, grad_kernels) = platform.depthwise_backward(
        grad_output, input, kernels.view(depthwise_kernel_shape(weight)), stride, padding, dilation);
  } else if (shared) {
    const at::Tensor kernel = platform.blend(weight, alpha).view(kernel_shape);
    auto grads = at::convolution_backward(grad_output, input, kernel, std::nullopt, stride, padding,
                                          dilation, false, {0, 0}, groups, {true, true, false});
    grad_input = std::get<0>(grads);
    grad_kernels = std::get<1>(grads).reshape({1, -1});
  } else if (batch == 0) {
    grad_input = at::zeros_like(input);
    grad_kernels = at::zeros({0, weight[0].numel()}, weight.options());
  } else if (platform.per_sample(weight) == PerSample::kGroupedConv) {
    std::vector<int64_t> folded_kernel = {-1};
    folded_kernel.insert(folded_kernel.end(), kernel_shape.begin() + 1, kernel_shape.end());
    const at::Tensor kernels = platform.blend(weight, alpha).view(folded_kernel);
    const at::Tensor folded_input = input.reshape({1, -1, input.size(2), input.size(3)});
    const at::Tensor folded_grad =
        grad_output.reshape({1, -1, grad_output.size(2), grad_output.size(3)});
    auto grads = at::convolution_backward(folded_grad, folded_input, kernels, std::nullopt, stride,
                                          padding, dilation, false, {0, 0}, groups * batch,
                                          {true, true, false});
    grad_input = std::get<0>(grads).view(input.sizes());
    grad_kernels = std::get<1>(grads).view({batch, -1});
  } else {
    const at::Tensor kernels = platform.blend(weight, alpha);
    grad_input = at::empty_like(input);
    grad_kernels = at::empty_like(kernels);
    for (int64_t b = 0; b < batch; ++b) {
      auto grads = at::convolution_backward(grad_output.narrow(0, b, 1), input.narrow(0, b, 1),
                                            kernels[b].view(kernel_shape), std::nullopt, stride,
                                            padding, dilation, false, {0, 0}, groups,
                                            {true, true, false});
      grad_input.narrow(0, b, 1).copy_(std::get<0>(grads));
      grad_kernels[b].copy_(std::get<1>(grads).reshape({-1}));
    }
  }

  // d/dW_i = sum_r alpha[r, i] dK_r; d/dalpha[r, i] = <dK_r, W_i> (+ <db_r, b_i>).
  const at::Tensor flat_weight = weight.reshape({p, -1});
  at::Tensor grad_weight = at::mm(alpha_rows.t(), grad_kernels).view(weight.sizes());
  at::Tensor grad_alpha = at::mm(grad_kernels, flat_weight.t());
  at::Tensor grad_bias = at::empty({0}, weight.options());
  if (has_bias) {
    // Per-row bias gradient: summed over the whole batch when alpha is shared.
    const at::Tensor grad_biases = shared ? grad_output.sum({0, 2, 3}).unsqueeze(0)
                                          : grad_output.sum({2, 3});
    grad_bias = at::mm(alpha_rows.t(), grad_biases);
    grad_alpha = grad_alpha + at::mm(grad_biases, bias->t());
  }
  return {grad_input.contiguous(output_memory_format(input)), grad_weight, grad_bias,
          grad_alpha.view(alpha.sizes())};
}

}  // namespace flexops::tunable
