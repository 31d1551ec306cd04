#pragma once
// A tunable pointwise convolution on images of few pixels, with each kernel blended while it is
// packed for the matrix product rather than written out first.
#include <ATen/ATen.h>

namespace flexops::cpu {

// output[b] = (sum_i alpha[r, i] weight[i]) input[b] + biases[r] for a pointwise convolution:
// weight [p, Cout, Cin, 1, 1], alpha [p] (r = 0, shared by the batch) or [B, p] (r = b), biases
// [1 or B, Cout] or undefined. Returns false, writing nothing, where it does not take the case: it
// takes contiguous fp32 images of 2 to 256 pixels on a CPU with AVX2 and FMA.
bool blended_pointwise(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& alpha,
                       const at::Tensor& biases, at::Tensor& output);

}  // namespace flexops::cpu
