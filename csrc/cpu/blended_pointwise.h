#pragma once
// A tunable pointwise convolution with a kernel per sample on images of few pixels, each kernel
// blended while it is packed for the matrix product rather than written out first.
#include <ATen/ATen.h>

namespace flexops::cpu {

// output[b] = (sum_i alpha[b, i] weight[i]) input[b] + biases[b] for a pointwise convolution with a
// kernel per sample: weight [p, Cout, Cin, 1, 1], alpha [B, p], biases [B, Cout] or undefined.
// Returns false, writing nothing, where it does not take the case: it takes contiguous fp32 images
// of 2 to 256 pixels on a CPU with AVX2 and FMA. (A kernel shared by the batch is blended once and
// reused for every image: there the blend costs little.)
bool blended_pointwise(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& alpha,
                       const at::Tensor& biases, at::Tensor& output);

}  // namespace flexops::cpu
