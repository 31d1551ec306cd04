#pragma once
// Argument checks of the channel-masked convolution shared by its CPU and CUDA kernels.
//
// Masks are bool [Mi, Cin] and [Mo, Cout], each with one row shared by every task or one row per
// task. With M = max(Mi, Mo) > 1 there are M tasks and the input batch is 1 (shared by all tasks) or
// M (one sample per task); with M = 1 the whole batch is one task.
#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "common/conv_geometry.h"

namespace flexops::masked {

// The output's batch: M tasks, or the input's batch when M = 1.
inline int64_t output_rows(const at::Tensor& input, const at::Tensor& in_mask, const at::Tensor& out_mask) {
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  return m == 1 ? input.size(0) : m;
}

// Checks every argument (common/conv_geometry.h) and returns the output's sizes [rows, Cout, Ho, Wo].
// input [B, Cin, H, W], weight [Cout, Cin, kh, kw] and bias [Cout] (or None) of input's dtype on its
// device, the masks bool on its device.
inline std::vector<int64_t> checked_output_size(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                                const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                                                const at::Tensor& out_mask, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  conv::check_dim(op, "input", input, 4, "[B, Cin, H, W]");
  conv::check_dim(op, "weight", weight, 4, "[Cout, Cin, kh, kw]");
  conv::check_like_input(op, "weight", weight, input);
  TORCH_CHECK(input.is_floating_point(), op, ": input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(weight.size(1) == input.size(1), op, ": weight's input channels (", weight.size(1),
              ") must equal input's channels (", input.size(1), ")");
  const int64_t out_channels = weight.size(0);
  if (bias.has_value() && bias->defined()) {
    conv::check_like_input(op, "bias", *bias, input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, op, ": bias must be [Cout] = [", out_channels,
                "], got ", bias->sizes());
  }
  TORCH_CHECK(in_mask.scalar_type() == at::kBool && in_mask.dim() == 2 && in_mask.size(0) >= 1 &&
                  in_mask.size(1) == input.size(1),
              op, ": in_mask must be bool [M, Cin] with M >= 1 and Cin = ", input.size(1), ", got ",
              in_mask.scalar_type(), " ", in_mask.sizes());
  TORCH_CHECK(out_mask.scalar_type() == at::kBool && out_mask.dim() == 2 && out_mask.size(0) >= 1 &&
                  out_mask.size(1) == out_channels,
              op, ": out_mask must be bool [M, Cout] with M >= 1 and Cout = ", out_channels, ", got ",
              out_mask.scalar_type(), " ", out_mask.sizes());
  TORCH_CHECK(in_mask.device() == input.device() && out_mask.device() == input.device(), op,
              ": in_mask and out_mask must be on input's device ", input.device(), ", got ", in_mask.device(),
              " and ", out_mask.device());
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  TORCH_CHECK((in_mask.size(0) == 1 || in_mask.size(0) == m) && (out_mask.size(0) == 1 || out_mask.size(0) == m),
              op, ": in_mask and out_mask must have 1 or the same number of rows, got ", in_mask.size(0), " and ",
              out_mask.size(0));
  TORCH_CHECK(m == 1 || input.size(0) == 1 || input.size(0) == m, op, ": input batch must be 1 or ", m,
              " (the number of mask rows), got ", input.size(0));
  conv::check_window(op, stride, padding, dilation);
  const auto [out_h, out_w] = conv::output_hw(op, input.size(2), input.size(3), weight.size(2), weight.size(3),
                                             stride, padding, dilation);
  std::vector<int64_t> size = {output_rows(input, in_mask, out_mask), out_channels, out_h, out_w};
  conv::check_numel(op, "output", size);
  return size;
}

// The backward's arguments: the forward's, and grad_output of the output's sizes, which it returns.
inline std::vector<int64_t> checked_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                           const at::Tensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  const char* op = "masked_conv2d_backward";
  const auto size = checked_output_size(op, input, weight, bias, in_mask, out_mask, stride, padding, dilation);
  conv::check_like_input(op, "grad_output", grad_output, input);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(size), op, ": grad_output must be the output's sizes ",
              at::IntArrayRef(size), ", got ", grad_output.sizes());
  return size;
}

}  // namespace flexops::masked
