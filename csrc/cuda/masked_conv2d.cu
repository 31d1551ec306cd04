// Channel-masked convolution on CUDA: one launch for all tasks per kernel (forward, grad_input,
// grad_weight), each an implicit-GEMM convolution driven by per-task lists of active channels, so
// the work follows active-in x active-out per task and many small tasks still fill the GPU (a
// convolution call per task, as before, left it mostly idle). The kernels and the host code that
// prepares them live in masked_conv2d.cuh as per-(block, thread) functions; this file launches them
// on the current stream.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/masked_conv2d.cuh"

namespace flexops {
namespace {

template <typename scalar_t>
__global__ void __launch_bounds__(masked_cuda::kThreads)
    forward_kernel(const masked_cuda::ForwardArgs<scalar_t> args) {
  masked_cuda::forward_thread(args, blockIdx.x, threadIdx.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(masked_cuda::kThreads)
    grad_input_kernel(const masked_cuda::GradInputArgs<scalar_t> args) {
  masked_cuda::grad_input_thread(args, blockIdx.x, threadIdx.x);
}

template <typename scalar_t>
__global__ void __launch_bounds__(masked_cuda::kThreads)
    grad_weight_kernel(const masked_cuda::GradWeightArgs<scalar_t> args) {
  masked_cuda::grad_weight_thread(args, blockIdx.x, threadIdx.x);
}

// The launcher masked_cuda::forward and ::backward take: `blocks` blocks of kThreads threads.
struct CudaLaunch {
  // grad_weight splits its pixel sum until its grid covers this many threads.
  int64_t resident_threads() const {
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    return int64_t(props->multiProcessorCount) * props->maxThreadsPerMultiProcessor;
  }

  template <typename scalar_t>
  void operator()(const masked_cuda::ForwardArgs<scalar_t>& args, int64_t blocks) const {
    forward_kernel<<<static_cast<unsigned>(blocks), masked_cuda::kThreads, 0,
                     at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  void operator()(const masked_cuda::GradInputArgs<scalar_t>& args, int64_t blocks) const {
    grad_input_kernel<<<static_cast<unsigned>(blocks), masked_cuda::kThreads, 0,
                        at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  void operator()(const masked_cuda::GradWeightArgs<scalar_t>& args, int64_t blocks) const {
    grad_weight_kernel<<<static_cast<unsigned>(blocks), masked_cuda::kThreads, 0,
                         at::cuda::getCurrentCUDAStream()>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor masked_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                              const at::Tensor& out_mask, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  return masked_cuda::forward(input, weight, bias, in_mask, out_mask, stride, padding, dilation,
                              CudaLaunch{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  return masked_cuda::backward(grad_output, input, weight, bias, in_mask, out_mask, stride, padding,
                               dilation, CudaLaunch{});
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_cuda);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cuda);
}

}  // namespace flexops
