#pragma once
// The memory format of an op's outputs: channels-last in gives channels-last out (what dense
// convolution does), anything else gives contiguous tensors. flexops/ops/_args.py's
// output_memory_format mirrors this rule for the fake kernels, so the two must change together.
#include <ATen/ATen.h>

namespace flexops {

inline at::MemoryFormat output_memory_format(const at::Tensor& input) {
  return input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

}  // namespace flexops
