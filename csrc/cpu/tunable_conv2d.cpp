// Tunable convolution on CPU: blended kernels through oneDNN's convolution (common/tunable_conv2d.h).
#include <torch/library.h>

#include "common/tunable_conv2d.h"

namespace flexops {
namespace {

// Measured on a 2-core x86 machine (bench/): one dense conv per sample beats a grouped conv over
// the folded batch once a sample's kernel has some 500 (output, input) channel pairs; below that
// the per-call overhead of B convolutions dominates.
tunable::PerSample per_sample_strategy(const at::Tensor& weight) {
  return weight.size(1) * weight.size(2) >= 512 ? tunable::PerSample::kLoop
                                                 : tunable::PerSample::kGroupedConv;
}

at::Tensor tunable_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  return tunable::forward(input, weight, bias, alpha, stride, padding, dilation, groups,
                          per_sample_strategy(weight));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tunable_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& alpha, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return tunable::backward(grad_output, input, weight, bias, alpha, stride, padding, dilation,
                           groups, per_sample_strategy(weight));
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("tunable_conv2d", &tunable_conv2d_cpu);
  m.impl("tunable_conv2d_backward", &tunable_conv2d_backward_cpu);
}

}  // namespace flexops
