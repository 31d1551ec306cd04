// Channel-masked convolution on CUDA: per-task compact convolutions through cuDNN
// (common/masked_conv2d.h), issued one after another on the current stream, where each one may use
// the whole GPU. The single-launch implicit-GEMM kernel for all tasks is flexops/triton/masked_conv2d.py.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/masked_conv2d.h"

namespace flexops {
namespace {

at::Tensor masked_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                              const at::Tensor& out_mask, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  return masked::forward(input, weight, bias, in_mask, out_mask, stride, padding, dilation,
                         masked::TaskOrder::kSequential, /*allocate=*/nullptr);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  return masked::backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding,
                          dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_cuda);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cuda);
}

}  // namespace flexops
