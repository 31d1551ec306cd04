// Tunable convolution on CUDA: blended kernels (one cuBLAS GEMM) through cuDNN's convolution
// (common/tunable_conv2d.h). Per-sample kernels run as one grouped convolution over the folded batch:
// a single cuDNN call keeps the GPU busy where B small convolutions would each underfill it.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/tunable_conv2d.h"

namespace flexops {
namespace {

at::Tensor tunable_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(input.device());
  return tunable::forward(input, weight, bias, alpha, stride, padding, dilation, groups,
                          tunable::PerSample::kGroupedConv, /*kernel_buffer=*/nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tunable_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& alpha, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(input.device());
  return tunable::backward(grad_output, input, weight, bias, alpha, stride, padding, dilation,
                           groups, tunable::PerSample::kGroupedConv);
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CUDA, m) {
  m.impl("tunable_conv2d", &tunable_conv2d_cuda);
  m.impl("tunable_conv2d_backward", &tunable_conv2d_backward_cuda);
}

}  // namespace flexops
