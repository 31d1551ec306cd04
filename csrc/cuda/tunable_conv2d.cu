// Tunable convolution on CUDA: blended kernels (one cuBLAS GEMM) through cuDNN's convolution
// (common/tunable_conv2d.h). Per-sample kernels run as one grouped convolution over the folded batch:
// a single cuDNN call keeps the GPU busy where B small convolutions would each underfill it.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/tunable_conv2d.h"

namespace flexops {
namespace {

tunable::PerSample grouped(const at::Tensor& /*weight*/) { return tunable::PerSample::kGroupedConv; }

at::Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  return at::empty(sizes, options.memory_format(format));
}

// Results come from the caching allocator already; shared pointwise kernels stay with cuDNN (the
// CPU's matrix-product route was measured against oneDNN only), and one-pixel images with one
// batched product (one launch; the CPU's matrix-vector products were measured on CPU only).
constexpr tunable::Platform kCuda{&grouped, /*samples_in_parallel=*/false, &tunable::blend_by_matmul, &fresh,
                                  /*shared_pointwise_as_matmul=*/false, /*one_pixel_as_matvec=*/false,
                                  /*depthwise=*/nullptr,
                                  /*depthwise_backward=*/nullptr, /*depthwise_min_width=*/0,
                                  /*blended_pointwise=*/nullptr};

at::Tensor tunable_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& alpha,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(input.device());
  return tunable::forward(input, weight, bias, alpha, stride, padding, dilation, groups,
                          kCuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tunable_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& alpha, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(input.device());
  return tunable::backward(grad_output, input, weight, bias, alpha, stride, padding, dilation,
                           groups, kCuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CUDA, m) {
  m.impl("tunable_conv2d", &tunable_conv2d_cuda);
  m.impl("tunable_conv2d_backward", &tunable_conv2d_backward_cuda);
}

}  // namespace flexops
