#pragma once
// Argument checks of the channel-masked convolution shared by its CPU and CUDA kernels.
//
// Masks arrive normalised by flexops/ops/masked_conv2d.py: bool [Mi, Cin] and [Mo, Cout], each with
// one row shared by every task or one row per task. With M = max(Mi, Mo) > 1 there are M tasks and
// the input batch is 1 (shared by all tasks) or M (one sample per task); with M = 1 the whole batch
// is one task.
#include <ATen/ATen.h>

#include <algorithm>

namespace flexops::masked {

inline void check(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_mask,
                  const at::Tensor& out_mask) {
  TORCH_CHECK(in_mask.scalar_type() == at::kBool && in_mask.dim() == 2 &&
                  in_mask.size(1) == input.size(1),
              "in_mask must be bool [M, Cin] with Cin = ", input.size(1), "; got ", in_mask.sizes());
  TORCH_CHECK(out_mask.scalar_type() == at::kBool && out_mask.dim() == 2 &&
                  out_mask.size(1) == weight.size(0),
              "out_mask must be bool [M, Cout] with Cout = ", weight.size(0), "; got ",
              out_mask.sizes());
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  TORCH_CHECK((in_mask.size(0) == 1 || in_mask.size(0) == m) &&
                  (out_mask.size(0) == 1 || out_mask.size(0) == m),
              "in_mask and out_mask must have 1 or the same number of rows; got ", in_mask.size(0),
              " and ", out_mask.size(0));
  TORCH_CHECK(m == 1 || input.size(0) == 1 || input.size(0) == m, "input batch must be 1 or ", m,
              " (the number of mask rows); got ", input.size(0));
}

}  // namespace flexops::masked
