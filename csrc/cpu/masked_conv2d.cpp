// Channel-masked convolution on CPU: per-task compact convolutions through oneDNN
// (common/masked_conv2d.h).
#include <torch/library.h>

#include "common/masked_conv2d.h"
#include "cpu/output_pool.h"

namespace flexops {
namespace {

// Tasks run in parallel, each convolution on one thread: a compact TASNet-sized problem (16 -> 16
// channels, 128x128) is too small to split over cores. Measured side by side on the shared 2-core
// machine, 27 tasks of 25% in x 25% out channels of a 64 -> 64 3x3 conv: 120-160 ms this way,
// ~1.2 s with the tasks one after another and each convolution on both threads.
at::Tensor masked_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                             const at::Tensor& out_mask, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  return masked::forward(input, weight, bias, in_mask, out_mask, stride, padding, dilation,
                         masked::TaskOrder::kParallel, &cpu::empty_output);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  return masked::backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding,
                          dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
}

}  // namespace flexops
