#pragma once
// Large CPU outputs from blocks kept warm between calls.
//
// glibc serves blocks above 32 MiB with a fresh mmap and unmaps them on free, so every call that
// returns such a tensor pays a page fault per 4 KiB the first time it writes: measured here, a
// [27, 64, 128, 128] fp32 output (113 MB) takes 41-48 ms to allocate and fill, 5-7 ms to fill again,
// several times the work of a masked convolution that writes it. Smaller blocks come back warm
// from glibc's heap and are left to it. Tensors from here are ordinary resizable CPU tensors; when
// one dies its block is kept for the next output of the same size, up to FLEXOPS_KEPT_CPU_MB
// megabytes in all (default 1024; 0 keeps none; read at the first output) and 8 blocks.
#include <ATen/ATen.h>

namespace flexops::cpu {

// An uninitialised CPU tensor, as at::empty(sizes, options.memory_format(format)).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous);

}  // namespace flexops::cpu
