// Deformable convolution (torchvision.ops.deform_conv2d semantics) on CUDA.
//
// Forward: a kernel samples the deformed input into a column buffer [Cin*kh*kw, pixels], then one
// cuBLAS batched GEMM over the groups multiplies it by the weight. Backward: grad_columns =
// W^T @ grad_output (cuBLAS); one kernel scatters grad_columns into grad_input (atomics in an
// opmath buffer), one gathers the offset and mask gradients; grad_weight = grad_output @ columns^T
// on recomputed columns. Batch and pixels are processed in chunks so the buffers stay under a fixed
// workspace however large the input.
//
// Column layout: row c*K + k (input channel c, kernel point k = i*kw + j), which is also the
// flattened weight layout [Cout, Cin/groups, kh, kw], so group g's rows are one contiguous block.
// Column n of a chunk is output pixel p0 + n % chunk_pixels of image b0 + n / chunk_pixels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <tuple>

#include "common/bilinear.h"
#include "common/bilinear_grad.h"
#include "common/deform_conv2d.h"
#include "common/layout.h"

namespace flexops {
namespace {

// Column buffer plus the grad_output/output staging buffer of one chunk.
constexpr int64_t kWorkspaceBytes = int64_t(256) << 20;
constexpr int kThreads = 256;
// Grid-stride loops cover anything beyond this many blocks.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// Shape of the problem, as the kernels need it.
struct Geometry {
  int64_t channels;
  // The input plane; bilinear.h indexes a plane with int.
  int height, width;
  int64_t out_height, out_width, out_pixels;
  int kernel_h, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t offset_groups;
  int64_t channels_per_offset_group;
};

// The output pixels a chunk covers: images [batch0, batch0 + images), pixels
// [pixel0, pixel0 + pixels) of each; size = images * pixels columns.
struct Chunk {
  int64_t batch0, images, pixel0, pixels, size;
};

// Index of the dy offset of (image b, offset group * K + kernel point, pixel p); dx follows one
// channel (out_pixels elements) later.
__device__ __forceinline__ int64_t offset_index(const Geometry& geo, int64_t b, int64_t point,
                                                int64_t p) {
  const int64_t points = geo.offset_groups * geo.kernel_h * geo.kernel_w;
  return ((b * points + point) * 2) * geo.out_pixels + p;
}

__device__ __forceinline__ int64_t mask_index(const Geometry& geo, int64_t b, int64_t point,
                                              int64_t p) {
  const int64_t points = geo.offset_groups * geo.kernel_h * geo.kernel_w;
  return (b * points + point) * geo.out_pixels + p;
}

// Where kernel point k of output pixel p samples the input, and its modulation (1 without mask).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void sample_point(const Geometry& geo, const scalar_t* offset,
                                             const scalar_t* mask, int64_t b, int64_t group, int k,
                                             int64_t p, acc_t& y, acc_t& x, acc_t& m) {
  const int64_t point = group * geo.kernel_h * geo.kernel_w + k;
  const int64_t oy = p / geo.out_width, ox = p % geo.out_width;
  const int i = k / geo.kernel_w, j = k % geo.kernel_w;
  const int64_t o = offset_index(geo, b, point, p);
  y = acc_t(oy * geo.stride_h - geo.pad_h + i * geo.dilation_h) + acc_t(offset[o]);
  x = acc_t(ox * geo.stride_w - geo.pad_w + j * geo.dilation_w) + acc_t(offset[o + geo.out_pixels]);
  m = mask == nullptr ? acc_t(1) : acc_t(mask[mask_index(geo, b, point, p)]);
}

// columns[c*K + k, n] = mask * bilinear(input[b, c], sample point); one thread per (c, n).
template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ input,
                              const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, Geometry geo, Chunk chunk,
                              scalar_t* __restrict__ columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int K = geo.kernel_h * geo.kernel_w;
  const int64_t plane_size = int64_t(geo.height) * geo.width;
  const int64_t total = geo.channels * chunk.size;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = t % chunk.size;
    const int64_t c = t / chunk.size;
    const int64_t b = chunk.batch0 + n / chunk.pixels;
    const int64_t p = chunk.pixel0 + n % chunk.pixels;
    const int64_t group = c / geo.channels_per_offset_group;
    const scalar_t* plane = input + (b * geo.channels + c) * plane_size;
    scalar_t* col = columns + c * K * chunk.size + n;
    for (int k = 0; k < K; ++k) {
      acc_t y, x, m;
      sample_point(geo, offset, mask, b, group, k, p, y, x, m);
      acc_t value = 0;
      BilinearCorners<acc_t> corners;
      if (bilinear_corners(y, x, geo.height, geo.width, corners)) {
        for (int q = 0; q < 4; ++q) {  // an outside corner reads 0 (bilinear.h)
          value += corners.weight[q] * (corners.index[q] >= 0 ? acc_t(plane[corners.index[q]]) : acc_t(0));
        }
      }
      col[k * chunk.size] = scalar_t(m * value);
    }
  }
}

// grad_input[b, c] += mask * bilinear weights * grad_columns[c*K + k, n]; one thread per column
// element. Neighbouring sample points share input pixels, hence the atomics.
template <typename scalar_t>
__global__ void col2im_kernel(const scalar_t* __restrict__ grad_columns,
                              const scalar_t* __restrict__ offset,
                              const scalar_t* __restrict__ mask, Geometry geo, Chunk chunk,
                              at::opmath_type<scalar_t>* __restrict__ grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  const int K = geo.kernel_h * geo.kernel_w;
  const int64_t plane_size = int64_t(geo.height) * geo.width;
  const int64_t total = geo.channels * K * chunk.size;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = t % chunk.size;
    const int64_t row = t / chunk.size;
    const int64_t c = row / K;
    const int k = static_cast<int>(row % K);
    const int64_t b = chunk.batch0 + n / chunk.pixels;
    const int64_t p = chunk.pixel0 + n % chunk.pixels;
    acc_t y, x, m;
    sample_point(geo, offset, mask, b, c / geo.channels_per_offset_group, k, p, y, x, m);
    BilinearCorners<acc_t> corners;
    if (!bilinear_corners(y, x, geo.height, geo.width, corners)) {
      continue;
    }
    const acc_t grad = m * acc_t(grad_columns[t]);
    acc_t* plane = grad_input + (b * geo.channels + c) * plane_size;
    for (int q = 0; q < 4; ++q) {
      if (corners.index[q] >= 0) {
        gpuAtomicAdd(plane + corners.index[q], corners.weight[q] * grad);
      }
    }
  }
}

// Offset and mask gradients of one (offset group, kernel point, column): the sample point is the
// same for every channel of the offset group, so one thread loops over those channels and owns
// its outputs (no atomics). grad_mask is null without mask. bilinear_corners_grad keeps points on
// y == -1 or x == -1, whose offset gradient torchvision takes one-sided (their values are 0).
template <typename scalar_t>
__global__ void col2im_coord_kernel(const scalar_t* __restrict__ grad_columns,
                                    const scalar_t* __restrict__ input,
                                    const scalar_t* __restrict__ offset,
                                    const scalar_t* __restrict__ mask, Geometry geo, Chunk chunk,
                                    scalar_t* __restrict__ grad_offset,
                                    scalar_t* __restrict__ grad_mask) {
  using acc_t = at::opmath_type<scalar_t>;
  const int K = geo.kernel_h * geo.kernel_w;
  const int64_t plane_size = int64_t(geo.height) * geo.width;
  const int64_t total = geo.offset_groups * K * chunk.size;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t n = t % chunk.size;
    const int64_t point = t / chunk.size;
    const int64_t group = point / K;
    const int k = static_cast<int>(point % K);
    const int64_t b = chunk.batch0 + n / chunk.pixels;
    const int64_t p = chunk.pixel0 + n % chunk.pixels;
    acc_t y, x, m;
    sample_point(geo, offset, mask, b, group, k, p, y, x, m);
    acc_t grad_y = 0, grad_x = 0, grad_m = 0;
    BilinearCorners<acc_t> corners;
    if (bilinear_corners_grad(y, x, geo.height, geo.width, corners)) {
      const int64_t c_begin = group * geo.channels_per_offset_group;
      for (int64_t c = c_begin; c < c_begin + geo.channels_per_offset_group; ++c) {
        const acc_t grad = acc_t(grad_columns[(c * K + k) * chunk.size + n]);
        const scalar_t* plane = input + (b * geo.channels + c) * plane_size;
        acc_t value = 0, dvalue_dy = 0, dvalue_dx = 0;
        for (int q = 0; q < 4; ++q) {  // an outside corner reads 0 (bilinear.h)
          const acc_t v = corners.index[q] >= 0 ? acc_t(plane[corners.index[q]]) : acc_t(0);
          value += corners.weight[q] * v;
          dvalue_dy += corners.dweight_dy[q] * v;
          dvalue_dx += corners.dweight_dx[q] * v;
        }
        grad_m += grad * value;
        grad_y += grad * dvalue_dy;
        grad_x += grad * dvalue_dx;
      }
    }
    const int64_t o = offset_index(geo, b, point, p);
    grad_offset[o] = scalar_t(m * grad_y);
    grad_offset[o + geo.out_pixels] = scalar_t(m * grad_x);
    if (grad_mask != nullptr) {
      grad_mask[mask_index(geo, b, point, p)] = scalar_t(grad_m);
    }
  }
}

int num_blocks(int64_t total) {
  return static_cast<int>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

const void* maybe_data(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// Fills columns [Cin*K, chunk.size] for the chunk.
void im2col(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
            const Geometry& geo, const Chunk& chunk, const at::Tensor& columns) {
  const int64_t total = geo.channels * chunk.size;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_im2col", [&] {
        im2col_kernel<scalar_t>
            <<<num_blocks(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
                static_cast<const scalar_t*>(maybe_data(mask)), geo, chunk,
                columns.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// Adds the chunk's grad_columns into grad_input (opmath dtype) and writes the chunk's part of
// grad_offset and grad_mask (undefined without mask).
void col2im(const at::Tensor& grad_columns, const at::Tensor& input, const at::Tensor& offset,
            const at::Tensor& mask, const Geometry& geo, const Chunk& chunk,
            const at::Tensor& grad_input, const at::Tensor& grad_offset,
            const at::Tensor& grad_mask) {
  const int64_t K = geo.kernel_h * geo.kernel_w;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "deform_col2im", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto* mask_ptr = static_cast<const scalar_t*>(maybe_data(mask));
        const int64_t input_total = geo.channels * K * chunk.size;
        col2im_kernel<scalar_t><<<num_blocks(input_total), kThreads, 0, stream>>>(
            grad_columns.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(), mask_ptr,
            geo, chunk, grad_input.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        const int64_t coord_total = geo.offset_groups * K * chunk.size;
        col2im_coord_kernel<scalar_t><<<num_blocks(coord_total), kThreads, 0, stream>>>(
            grad_columns.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
            offset.const_data_ptr<scalar_t>(), mask_ptr, geo, chunk,
            grad_offset.mutable_data_ptr<scalar_t>(),
            grad_mask.defined() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

// Checks every argument (common/deform_conv2d.h) and returns the geometry. mask may be undefined.
Geometry make_geometry(const char* op, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                       const at::Tensor& mask, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  const deform::Shape shape = deform::checked_shape(
      op, input, offset, weight, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt, bias, stride,
      padding, dilation);
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor here, got ", input.device());
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t kernel_h = weight.size(2), kernel_w = weight.size(3);
  const int64_t out_h = shape.out_h, out_w = shape.out_w, offset_groups = shape.offset_groups;
  // The kernels hold these as int.
  TORCH_CHECK(std::max({kernel_h, kernel_w, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]}) <=
                  INT_MAX / 4,
              op, ": kernel ", kernel_h, "x", kernel_w, ", stride ", stride, ", padding ", padding, " and dilation ",
              dilation, " must each be below 2^29 on CUDA");
  return Geometry{channels,
                  static_cast<int>(height),
                  static_cast<int>(width),
                  out_h,
                  out_w,
                  out_h * out_w,
                  static_cast<int>(kernel_h),
                  static_cast<int>(kernel_w),
                  static_cast<int>(stride[0]),
                  static_cast<int>(stride[1]),
                  static_cast<int>(padding[0]),
                  static_cast<int>(padding[1]),
                  static_cast<int>(dilation[0]),
                  static_cast<int>(dilation[1]),
                  offset_groups,
                  channels / offset_groups};
}

// The largest chunk: whole images when one image fits the workspace, else a pixel range of one.
struct ChunkPlan {
  int64_t images, pixels;
  int64_t size() const { return images * pixels; }
};

ChunkPlan plan_chunks(int64_t batch, int64_t out_pixels, int64_t bytes_per_column) {
  const int64_t columns =
      std::max<int64_t>(1, kWorkspaceBytes / std::max<int64_t>(1, bytes_per_column));
  return {std::max<int64_t>(1, std::min(batch, columns / out_pixels)),
          std::min(columns, out_pixels)};
}

template <typename Fn>
void for_each_chunk(int64_t batch, int64_t out_pixels, const ChunkPlan& plan, Fn fn) {
  for (int64_t b0 = 0; b0 < batch; b0 += plan.images) {
    for (int64_t p0 = 0; p0 < out_pixels; p0 += plan.pixels) {
      const int64_t nb = std::min(plan.images, batch - b0);
      const int64_t np = std::min(plan.pixels, out_pixels - p0);
      fn(Chunk{b0, nb, p0, np, nb * np});
    }
  }
}

// The first rows * cols elements of a flat buffer, as a contiguous [rows, cols] matrix.
at::Tensor head(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// The chunk's pixels of a [B, C, P] tensor, as [C, images, pixels].
at::Tensor chunk_view(const at::Tensor& t, const Chunk& chunk) {
  return t.narrow(0, chunk.batch0, chunk.images)
      .narrow(2, chunk.pixel0, chunk.pixels)
      .transpose(0, 1);
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input_, const at::Tensor& offset_,
                              const at::Tensor& weight_, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& mask_, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const at::Tensor mask_arg = mask_.has_value() ? *mask_ : at::Tensor();
  const Geometry geo =
      make_geometry("deform_conv2d", input_, offset_, weight_, mask_arg, bias, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous();
  const at::Tensor weight = weight_.contiguous();
  const at::Tensor mask = mask_arg.defined() ? mask_arg.contiguous() : mask_arg;

  const int64_t batch = input.size(0), out_channels = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const int64_t groups = geo.channels / weight.size(1);
  const int64_t group_rows = weight.size(1) * geo.kernel_h * geo.kernel_w;  // K per group
  const int64_t rows = groups * group_rows;
  at::Tensor output = at::empty({batch, out_channels, geo.out_height, geo.out_width},
                                input.options().memory_format(output_memory_format(input_)));
  if (batch == 0) {
    return output;
  }

  const ChunkPlan plan =
      plan_chunks(batch, geo.out_pixels, (rows + out_channels) * input.element_size());
  const at::Tensor column_buffer = at::empty({rows * plan.size()}, input.options());
  const at::Tensor result_buffer = at::empty({out_channels * plan.size()}, input.options());
  const at::Tensor weight3 = weight.view({groups, out_channels / groups, group_rows});
  // [B, Cout, P]: a view for contiguous and channels-last alike.
  const at::Tensor output3 = output.view({batch, out_channels, geo.out_pixels});
  for_each_chunk(batch, geo.out_pixels, plan, [&](const Chunk& chunk) {
    const at::Tensor columns = head(column_buffer, rows, chunk.size);
    im2col(input, offset, mask, geo, chunk, columns);
    at::Tensor result = head(result_buffer, out_channels, chunk.size);
    at::Tensor result3 = result.view({groups, out_channels / groups, chunk.size});
    at::bmm_out(result3, weight3, columns.view({groups, group_rows, chunk.size}));
    chunk_view(output3, chunk).copy_(result.view({out_channels, chunk.images, chunk.pixels}));
  });
  if (has_bias) {
    output.add_(bias->reshape({1, out_channels, 1, 1}));
  }
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output_, const at::Tensor& input_, const at::Tensor& offset_,
    const at::Tensor& weight_, const std::optional<at::Tensor>& mask_, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const at::Tensor mask_arg = mask_.has_value() ? *mask_ : at::Tensor();
  const char* op = "deform_conv2d_backward";
  const Geometry geo = make_geometry(op, input_, offset_, weight_, mask_arg, std::nullopt, stride, padding, dilation);
  deform::check_grad_output(op, grad_output_, input_, weight_, geo.out_height, geo.out_width);
  const c10::cuda::CUDAGuard guard(input_.device());
  // grad_input is scattered with floating-point atomics: summation order varies run to run.
  at::globalContext().alertNotDeterministic("flexops::deform_conv2d_backward (CUDA)");
  const int64_t batch = input_.size(0), out_channels = weight_.size(0);
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous();
  const at::Tensor weight = weight_.contiguous(), grad_output = grad_output_.contiguous();
  const at::Tensor mask = mask_arg.defined() ? mask_arg.contiguous() : mask_arg;

  const int64_t groups = geo.channels / weight.size(1);
  const int64_t group_rows = weight.size(1) * geo.kernel_h * geo.kernel_w;
  const int64_t rows = groups * group_rows;
  // Accumulate grad_input (scattered with atomics) and grad_weight (summed over chunks) in opmath.
  const auto acc_options = input.options().dtype(at::toOpMathType(input.scalar_type()));
  at::Tensor grad_input = at::zeros(input.sizes(), acc_options);
  at::Tensor grad_weight = at::zeros({groups, out_channels / groups, group_rows}, acc_options);
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());
  at::Tensor grad_mask =
      mask.defined() ? at::empty(mask.sizes(), mask.options()) : at::empty({0}, input.options());

  if (batch > 0) {
    const ChunkPlan plan =
        plan_chunks(batch, geo.out_pixels, (rows + out_channels) * input.element_size());
    const at::Tensor column_buffer = at::empty({rows * plan.size()}, input.options());
    const at::Tensor grad_out_buffer = at::empty({out_channels * plan.size()}, input.options());
    const at::Tensor weight3 = weight.view({groups, out_channels / groups, group_rows});
    const at::Tensor grad_output3 = grad_output.view({batch, out_channels, geo.out_pixels});
    const at::Tensor grad_mask_or_none = mask.defined() ? grad_mask : at::Tensor();
    for_each_chunk(batch, geo.out_pixels, plan, [&](const Chunk& chunk) {
      const at::Tensor grad_out = head(grad_out_buffer, out_channels, chunk.size);
      grad_out.view({out_channels, chunk.images, chunk.pixels})
          .copy_(chunk_view(grad_output3, chunk));
      const at::Tensor grad_out3 = grad_out.view({groups, out_channels / groups, chunk.size});
      // The column buffer holds grad_columns first, then the recomputed columns (same stream, so
      // the col2im kernels have read it before im2col overwrites it).
      const at::Tensor columns = head(column_buffer, rows, chunk.size);
      at::Tensor columns3 = columns.view({groups, group_rows, chunk.size});
      at::bmm_out(columns3, weight3.transpose(1, 2), grad_out3);
      col2im(columns, input, offset, mask, geo, chunk, grad_input, grad_offset, grad_mask_or_none);
      im2col(input, offset, mask, geo, chunk, columns);
      grad_weight.add_(at::bmm(grad_out3, columns3.transpose(1, 2)));
    });
  }
  return {grad_input.to(input.scalar_type(), /*non_blocking=*/false, /*copy=*/false,
                        output_memory_format(input_)),
          grad_offset, grad_weight.view(weight.sizes()).to(weight.scalar_type()), grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace flexops
