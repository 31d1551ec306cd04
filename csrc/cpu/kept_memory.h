#pragma once
// Memory for the tensors flexops' CPU kernels allocate (outputs, gradients, intermediates), kept
// warm between calls.
//
// glibc maps a block above its mmap threshold afresh and unmaps it on free; the threshold starts at
// 128 KiB and rises towards 32 MiB only as mapped blocks are freed, and even then the heap's top is
// trimmed back. Every call that allocates such a block pays a page fault per 4 KiB it writes, and on
// a VM first-touch faults are expensive: a [27, 64, 128, 128] fp32 output (113 MB) took 41-48 ms to
// allocate and fill, 5-7 ms to fill again, several times the work of the masked convolution that
// writes it; deform_conv2d's backward faulted in some 20 MB a call. Tensors from here are ordinary
// resizable CPU tensors; when one of 128 KiB or more dies, its block is kept for the next tensor of
// the same size, up to FLEXOPS_KEPT_CPU_MB megabytes in all (default 1024; 0 keeps none; read at
// the first allocation) and 64 blocks, the oldest given back first. Smaller blocks come from glibc's
// heap, already mapped. This pool is all that flexops keeps between calls (blended kernels and
// kernels' scratch come from here too; a thread keeps only the blended pointwise product's fixed
// 155 KB panel), so the limit and kept_bytes() cover everything.
#include <ATen/ATen.h>

#include <cstddef>

namespace flexops::cpu {

// An uninitialised CPU tensor, as at::empty(sizes, options.memory_format(format)).
at::Tensor kept_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                      at::MemoryFormat format = at::MemoryFormat::Contiguous);

// An uninitialised CPU tensor with these sizes and strides, as at::empty_strided(sizes, strides, options).
at::Tensor kept_empty_strided(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options);

// A CPU tensor of zeros, as at::zeros(sizes, options).
at::Tensor kept_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes held in kept blocks now, waiting for their next tensor (not counting blocks in use).
size_t kept_bytes();

}  // namespace flexops::cpu
