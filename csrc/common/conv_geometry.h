#pragma once
// The argument rules that every flexops convolution shares (tunable, masked and deformable, CPU and
// CUDA entry points alike) and its output size, written once. The registered ops are what
// torch.export / AOTInductor packages and C++ programs call, past flexops' Python checks, so these
// rules are all that stands between a malformed call and an out-of-bounds read or a division by
// zero. Each message names the op, the argument and what was expected. Host code only.
#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <array>
#include <cstdint>

namespace flexops::conv {

// t has `dim` dimensions; `shape` says which, e.g. "[B, Cin, H, W]".
inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", shape, ", got ", t.dim(), " dimensions ", t.sizes());
}

// t has input's dtype and device.
inline void check_like_input(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have input's dtype ",
              input.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on input's device ", input.device(), ", got ",
              t.device());
}

// Two of each, stride >= 1, padding >= 0, dilation >= 1.
inline void check_window(const char* op, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding and dilation must have 2 elements each, got ", stride, ", ", padding, " and ",
              dilation);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, ": padding must be >= 0, got ", padding);
  TORCH_CHECK(dilation[0] >= 1 && dilation[1] >= 1, op, ": dilation must be >= 1, got ", dilation);
}

// groups >= 1 splits the input channels into groups of `weight_in` (the weight's input channels) and
// divides the output channels.
inline void check_groups(const char* op, int64_t in_channels, int64_t weight_in, int64_t out_channels,
                         int64_t groups) {
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(weight_in >= 1 && weight_in * groups == in_channels, op, ": weight's input channels (", weight_in,
              ") times groups (", groups, ") must equal input's channels (", in_channels, ")");
  TORCH_CHECK(out_channels % groups == 0, op, ": groups (", groups, ") must divide weight's output channels (",
              out_channels, ")");
}

// The output's (height, width) for an input plane of height x width and a kernel of kernel_h x kernel_w,
// arguments checked by check_window: each at least 1, computed without int64 overflow.
inline std::array<int64_t, 2> output_hw(const char* op, int64_t height, int64_t width, int64_t kernel_h,
                                        int64_t kernel_w, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  TORCH_CHECK(kernel_h >= 1 && kernel_w >= 1, op, ": the kernel must be at least 1x1, got ", kernel_h, "x",
              kernel_w);
  const int64_t in[2] = {height, width}, kernel[2] = {kernel_h, kernel_w};
  std::array<int64_t, 2> out{};
  for (int d = 0; d < 2; ++d) {
    const char* side = d == 0 ? "height" : "width";
    int64_t both_sides = 0, padded = 0, span = 0;
    TORCH_CHECK(!c10::mul_overflows(padding[d], int64_t(2), &both_sides) &&
                    !c10::add_overflows(in[d], both_sides, &padded) &&
                    !c10::mul_overflows(dilation[d], kernel[d] - 1, &span) && span < INT64_MAX,
                op, ": padding ", padding, " and dilation ", dilation, " overflow int64 for an input ", side, " of ",
                in[d]);
    const int64_t extent = span + 1;  // of the dilated kernel
    TORCH_CHECK(padded >= extent, op, ": the dilated kernel's ", side, " (", extent,
                ") is larger than the padded input's (", padded, ")");
    out[d] = (padded - extent) / stride[d] + 1;
  }
  return out;
}

// A result of these sizes has a number of elements that fits int64.
inline void check_numel(const char* op, const char* name, at::IntArrayRef sizes) {
  int64_t numel = 1;
  for (const int64_t size : sizes) {
    TORCH_CHECK(!c10::mul_overflows(numel, size, &numel), op, ": the ", name, " of sizes ", sizes,
                " has more elements than int64 counts");
  }
}

}  // namespace flexops::conv
