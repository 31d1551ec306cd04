#pragma once
// The CPU blend of p kernels, shared by tunable_conv2d's blends (cpu/tunable_conv2d.cpp, where it is
// defined) and the product that blends its panels as it packs them
// (cpu/blended_pointwise.cpp).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace flexops::cpu {

// out[r][begin, end) = sum_i alpha[r, i] * params[i][begin, end), over chunks of the kernel small
// enough that a chunk of every row stays in L1 while the p kernels stream past it once. Where the
// kernels come from memory (NAFNet's 58 M weights at p = 2 do not fit the caches) this reads each
// weight once; a GEMM of inner size p, what at::mm does, spends 20-40 % longer on the same blend.
// Kernels are added two at a time (half the passes over the chunk), and the loop is also compiled
// for AVX2 (common/macros.h): 30 % faster than SSE2 for p = 2..6 at 4 rows. Defined for float and
// double kernels, and for bfloat16 and float16 kernels blended into float32 (each weight widened as it
// is read: no float32 copy of the p kernels).
template <typename param_t, typename scalar_t>
void blend_range(const param_t* params, const scalar_t* alpha, scalar_t* out, int64_t rows, int64_t p, int64_t numel,
                 int64_t begin, int64_t end);

}  // namespace flexops::cpu
