#pragma once
// Tunable convolution as a composition of the platform's dense convolution (oneDNN on CPU, cuDNN on
// CUDA): the p kernels are blended once per alpha row (a [B, p] x [p, N] GEMM), then convolved. The
// backward pass is the convolution's backward pass on the blended kernel, whose kernel gradient is
// projected back onto the p kernels and onto alpha. CPU and CUDA share this file; each chooses how
// per-sample kernels are run (PerSample) because the faster way differs between the two.
#include <ATen/ATen.h>

#include "common/layout.h"

namespace flexops::tunable {

// How a batch whose samples each have their own blended kernel is convolved.
enum class PerSample {
  kGroupedConv,  // one conv with groups * B groups over the batch folded into channels
  kLoop,         // one dense conv per sample
};

// A 1x1 convolution without stride, padding or groups (dilation is moot at 1x1): per sample it is
// one matrix product, [Cout, Cin] x [Cin, H * W], so a batch with its own kernel per sample is one
// batched product instead of B convolutions.
inline bool pointwise(const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                      int64_t groups) {
  return weight.size(3) == 1 && weight.size(4) == 1 && groups == 1 && stride[0] == 1 &&
         stride[1] == 1 && padding[0] == 0 && padding[1] == 0;
}

// sum_i alpha[r, i] * params[i] for every row r of alpha ([p] is one row): [rows, numel / p],
// written into `out` when given (its numel: rows * numel / p).
inline at::Tensor blend(const at::Tensor& params, const at::Tensor& alpha, at::Tensor out = {}) {
  const int64_t p = params.size(0);
  const at::Tensor rows = alpha.reshape({-1, p}), flat = params.reshape({p, -1});
  if (!out.defined()) {
    return at::mm(rows, flat);
  }
  out = out.view({rows.size(0), -1});
  return at::mm_out(out, rows, flat);
}

// Gives the tensor a shared alpha's blended kernel is written to ([numel of one kernel], the
// weight's dtype and device); nullptr: a fresh tensor.
using KernelBuffer = at::Tensor (*)(const at::Tensor& weight);

inline std::vector<int64_t> output_size(const at::Tensor& input, const at::Tensor& weight,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  std::vector<int64_t> size = {input.size(0), weight.size(1)};
  for (int d = 0; d < 2; ++d) {
    const int64_t extent = dilation[d] * (weight.size(3 + d) - 1) + 1;
    size.push_back((input.size(2 + d) + 2 * padding[d] - extent) / stride[d] + 1);
  }
  return size;
}

inline at::Tensor forward_any_layout(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          int64_t groups, PerSample per_sample, KernelBuffer kernel_buffer) {
  const int64_t batch = input.size(0);
  const auto kernel_shape = weight.sizes().slice(1);  // [Cout, Cin / groups, kh, kw]
  const bool has_bias = bias.has_value() && bias->defined();
  if (alpha.dim() == 1) {
    const at::Tensor kernel =
        blend(weight, alpha, kernel_buffer ? kernel_buffer(weight) : at::Tensor()).view(kernel_shape);
    const std::optional<at::Tensor> blended_bias =
        has_bias ? std::optional<at::Tensor>(blend(*bias, alpha).view({-1})) : std::nullopt;
    return at::convolution(input, kernel, blended_bias, stride, padding, dilation, false, {0, 0},
                           groups);
  }
  const auto out_size = output_size(input, weight, stride, padding, dilation);
  if (batch == 0) {
    return at::empty(out_size, input.options());
  }
  const at::Tensor kernels = blend(weight, alpha);  // [B, Cout * Cin/groups * kh * kw]
  const at::Tensor biases = has_bias ? blend(*bias, alpha) : at::Tensor();  // [B, Cout]
  if (pointwise(weight, stride, padding, groups)) {
    const at::Tensor pixels = input.reshape({batch, input.size(1), -1});
    const at::Tensor matrices = kernels.view({batch, weight.size(1), weight.size(2)});
    const at::Tensor product = has_bias ? at::baddbmm(biases.unsqueeze(2), matrices, pixels)
                                        : at::bmm(matrices, pixels);
    return product.view(out_size);
  }
  if (per_sample == PerSample::kGroupedConv) {
    std::vector<int64_t> folded_kernel = {-1};
    folded_kernel.insert(folded_kernel.end(), kernel_shape.begin() + 1, kernel_shape.end());
    const at::Tensor folded_input =
        input.reshape({1, -1, input.size(2), input.size(3)});
    const std::optional<at::Tensor> folded_bias =
        has_bias ? std::optional<at::Tensor>(biases.view({-1})) : std::nullopt;
    return at::convolution(folded_input, kernels.view(folded_kernel), folded_bias, stride, padding,
                           dilation, false, {0, 0}, groups * batch)
        .view(out_size);
  }
  at::Tensor output = at::empty(out_size, input.options().memory_format(output_memory_format(input)));
  for (int64_t b = 0; b < batch; ++b) {
    const std::optional<at::Tensor> sample_bias =
        has_bias ? std::optional<at::Tensor>(biases[b]) : std::nullopt;
    output.narrow(0, b, 1).copy_(at::convolution(input.narrow(0, b, 1), kernels[b].view(kernel_shape),
                                                 sample_bias, stride, padding, dilation, false,
                                                 {0, 0}, groups));
  }
  return output;
}

// Outputs follow output_memory_format (common/layout.h) whichever way the convolution ran.
inline at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                          int64_t groups, PerSample per_sample, KernelBuffer kernel_buffer) {
  return forward_any_layout(input, weight, bias, alpha, stride, padding, dilation, groups, per_sample,
                            kernel_buffer)
      .contiguous(output_memory_format(input));
}

// Gradients with respect to (input, weight, bias, alpha); bias's is empty when bias is None.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& alpha, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, PerSample per_sample) {
  const int64_t p = weight.size(0);
  const int64_t batch = input.size(0);
  const auto kernel_shape = weight.sizes().slice(1);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool shared = alpha.dim() == 1;
  const at::Tensor alpha_rows = alpha.reshape({-1, p});  // [1 or B, p]

  at::Tensor grad_input, grad_kernels;  // grad_kernels: [rows of alpha, numel of one kernel]
  if (shared) {
    const at::Tensor kernel = blend(weight, alpha).view(kernel_shape);
    auto grads = at::convolution_backward(grad_output, input, kernel, std::nullopt, stride, padding,
                                          dilation, false, {0, 0}, groups, {true, true, false});
    grad_input = std::get<0>(grads);
    grad_kernels = std::get<1>(grads).reshape({1, -1});
  } else if (batch == 0) {
    grad_input = at::zeros_like(input);
    grad_kernels = at::zeros({0, weight[0].numel()}, weight.options());
  } else if (pointwise(weight, stride, padding, groups)) {
    // dX_b = K_b^T dY_b and dK_b = dY_b X_b^T, each one batched product over the samples.
    const at::Tensor matrices = blend(weight, alpha).view({batch, weight.size(1), weight.size(2)});
    const at::Tensor pixels = input.reshape({batch, input.size(1), -1});
    const at::Tensor grad_pixels = grad_output.reshape({batch, grad_output.size(1), -1});
    grad_input = at::bmm(matrices.transpose(1, 2), grad_pixels).view(input.sizes());
    grad_kernels = at::bmm(grad_pixels, pixels.transpose(1, 2)).view({batch, -1});
  } else if (per_sample == PerSample::kGroupedConv) {
    std::vector<int64_t> folded_kernel = {-1};
    folded_kernel.insert(folded_kernel.end(), kernel_shape.begin() + 1, kernel_shape.end());
    const at::Tensor kernels = blend(weight, alpha).view(folded_kernel);
    const at::Tensor folded_input = input.reshape({1, -1, input.size(2), input.size(3)});
    const at::Tensor folded_grad =
        grad_output.reshape({1, -1, grad_output.size(2), grad_output.size(3)});
    auto grads = at::convolution_backward(folded_grad, folded_input, kernels, std::nullopt, stride,
                                          padding, dilation, false, {0, 0}, groups * batch,
                                          {true, true, false});
    grad_input = std::get<0>(grads).view(input.sizes());
    grad_kernels = std::get<1>(grads).view({batch, -1});
  } else {
    const at::Tensor kernels = blend(weight, alpha);
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
