#pragma once
// Argument checks of the deformable convolution shared by its CPU and CUDA kernels (the general
// convolution rules are common/conv_geometry.h's). Where torchvision's deform_conv2d rejects the same
// call, the message carries its phrase ("the shape of the offset", "mask.shape[1] is not valid"), so
// code written against torchvision's errors still matches.
#include <ATen/ATen.h>

#include <climits>
#include <optional>

#include "common/conv_geometry.h"

namespace flexops::deform {

struct Shape {
  int64_t groups, offset_groups, out_h, out_w;
};

// input [B, Cin, H, W]; offset [B, 2 * offset_groups * kh * kw, Ho, Wo]; weight [Cout, Cin / groups,
// kh, kw]; mask [B, offset_groups * kh * kw, Ho, Wo] or None; bias [Cout] or None; all of input's
// dtype on its device.
inline Shape checked_shape(const char* op, const at::Tensor& input, const at::Tensor& offset,
                           const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  conv::check_dim(op, "input", input, 4, "[B, Cin, H, W]");
  conv::check_dim(op, "offset", offset, 4, "[B, 2 * offset_groups * kh * kw, Ho, Wo]");
  conv::check_dim(op, "weight", weight, 4, "[Cout, Cin / groups, kh, kw]");
  TORCH_CHECK(input.is_floating_point(), op, ": input must be a floating-point tensor, got ", input.scalar_type());
  conv::check_like_input(op, "offset", offset, input);
  conv::check_like_input(op, "weight", weight, input);
  conv::check_window(op, stride, padding, dilation);
  const int64_t batch = input.size(0), in_channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t out_channels = weight.size(0), kernel_h = weight.size(2), kernel_w = weight.size(3);
  const auto [out_h, out_w] = conv::output_hw(op, height, width, kernel_h, kernel_w, stride, padding, dilation);
  // Bilinear sampling (common/bilinear.h) indexes a plane, and the corner just past its edge, with an int.
  TORCH_CHECK((height + 1) * (width + 1) <= INT_MAX, op, ": an input plane of ", height, "x", width,
              " is too large (at most 2^31 pixels)");
  TORCH_CHECK(weight.size(1) >= 1 && in_channels % weight.size(1) == 0, op, ": weight's input channels (",
              weight.size(1), ") must divide input's channels (", in_channels, ")");
  const int64_t groups = in_channels / weight.size(1);
  TORCH_CHECK(out_channels % groups == 0, op, ": the ", groups, " groups (input's channels / weight.size(1)) must ",
              "divide weight's output channels (", out_channels, ")");
  const int64_t points = kernel_h * kernel_w;
  TORCH_CHECK(offset.size(1) >= 2 * points && offset.size(1) % (2 * points) == 0, op,
              ": the shape of the offset tensor at dimension 1 is not valid: it must be a positive multiple of ",
              "2 * kh * kw = ", 2 * points, ", got ", offset.size(1));
  const int64_t offset_groups = offset.size(1) / (2 * points);
  TORCH_CHECK(in_channels % offset_groups == 0, op, ": the ", offset_groups,
              " offset groups (offset.size(1) / (2 * kh * kw)) must divide input's channels (", in_channels, ")");
  TORCH_CHECK(offset.size(0) == batch && offset.size(2) == out_h && offset.size(3) == out_w, op,
              ": the shape of the offset must be [B, 2 * offset_groups * kh * kw, Ho, Wo] = [", batch, ", ",
              offset.size(1), ", ", out_h, ", ", out_w, "], got ", offset.sizes());
  if (mask.has_value() && mask->defined()) {
    conv::check_dim(op, "mask", *mask, 4, "[B, offset_groups * kh * kw, Ho, Wo]");
    conv::check_like_input(op, "mask", *mask, input);
    TORCH_CHECK(mask->size(1) == offset_groups * points, op,
                ": mask.shape[1] is not valid: it must be offset_groups * kh * kw = ", offset_groups * points,
                ", got ", mask->size(1));
    TORCH_CHECK(mask->size(0) == batch && mask->size(2) == out_h && mask->size(3) == out_w, op,
                ": the shape of the mask must be [", batch, ", ", offset_groups * points, ", ", out_h, ", ", out_w,
                "], got ", mask->sizes());
  }
  if (bias.has_value() && bias->defined()) {
    conv::check_like_input(op, "bias", *bias, input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, op, ": bias must be [Cout] = [", out_channels,
                "], got ", bias->sizes());
  }
  conv::check_numel(op, "output", {batch, out_channels, out_h, out_w});
  return {groups, offset_groups, out_h, out_w};
}

// The backward's grad_output: the output's sizes, input's dtype and device.
inline void check_grad_output(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                              const at::Tensor& weight, int64_t out_h, int64_t out_w) {
  conv::check_like_input(op, "grad_output", grad_output, input);
  const int64_t size[4] = {input.size(0), weight.size(0), out_h, out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(size), op, ": grad_output must be the output's sizes ",
              at::IntArrayRef(size), ", got ", grad_output.sizes());
}

}  // namespace flexops::deform
