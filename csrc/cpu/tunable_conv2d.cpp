// Tunable convolution on CPU: blended kernels through oneDNN's convolution (common/tunable_conv2d.h).
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <map>
#include <utility>

#include "common/tunable_conv2d.h"

namespace flexops {
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

// A shared alpha's blended kernel goes to a buffer kept per thread, one per kernel size and dtype,
// instead of a fresh tensor each call: a 64x64x3x3 fp32 kernel is 147 KB, and allocating it anew
// costs more than blending it. The convolution only reads it, and the backward blends its own.
at::Tensor kept_kernel_buffer(const at::Tensor& weight) {
  thread_local std::map<std::pair<int64_t, at::ScalarType>, at::Tensor> buffers;
  const int64_t numel = weight[0].numel();
  at::Tensor& buffer = buffers[{numel, weight.scalar_type()}];
  if (!buffer.defined()) {
    c10::InferenceMode normal_tensor(false);  // writable both in and outside inference mode
    buffer = at::empty({numel}, weight.options());
  }
  return buffer;
}

at::Tensor tunable_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups) {
  return tunable::forward(input, weight, bias, alpha, stride, padding, dilation, groups,
                          per_sample_strategy(weight), &kept_kernel_buffer);
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
