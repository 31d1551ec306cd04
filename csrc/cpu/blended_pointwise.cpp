// A tunable pointwise convolution as a matrix product whose left operand is blended as it is
// packed. On images of few pixels a blended kernel serves little work: NAFNet's middle blocks run
// 512 -> 1024 kernels on 8x8 images, where blending four per-sample kernels (8 MB written, then read
// back by MKL's packing) and their batched product took 1.9-2.5 ms against 1.5-1.6 ms for
// nn.Conv2d with one kernel (batch 4, p = 2, 2 threads). Here each panel of a kernel is blended
// straight into the packed form the product reads from cache: the p kernels are read once and no
// blended kernel is written out (1.5-1.6 ms at p = 2, 2.0 ms at p = 4). Beyond 256 pixels, and for
// a kernel shared by the batch (blended once for every image), MKL's product ran as fast or faster.
#include "cpu/blended_pointwise.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/blend_range.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FLEXOPS_BLENDED_POINTWISE 1
#endif

namespace flexops::cpu {

#ifdef FLEXOPS_BLENDED_POINTWISE
namespace {

constexpr int64_t kRows = 6;       // output channels of a micro-tile: 12 accumulators of 8 lanes
constexpr int64_t kColumns = 16;   // pixels of a micro-tile
constexpr int64_t kDepth = 512;    // input channels of a panel: a tile's pixels for them fill L1
constexpr int64_t kPanelRows = 60;  // output channels of a panel (120 KB packed, held in L2)
constexpr int64_t kMinPixels = 2, kMaxPixels = 256;  // one pixel: matrix-vector products (the caller's)

// Rows [row0, row0 + rows) and input channels [k0, k0 + depth) of sum_i alpha[i] * kernel_i,
// packed as slivers of kRows rows, each input-channel-major ([depth][kRows]); rows past the last
// are zero. Kernels are [Cout, Cin] matrices `kernel_numel` apart.
__attribute__((target("avx2,fma"))) void pack_blended_panel(const float* kernels, const float* alpha, int64_t p,
                                                             int64_t kernel_numel, int64_t in_channels, int64_t row0,
                                                             int64_t rows, int64_t k0, int64_t depth, float* panel) {
  alignas(32) float blended[kRows][kDepth];
  for (int64_t s = 0; s < rows; s += kRows) {
    for (int64_t r = 0; r < kRows; ++r) {
      float* out = blended[r];
      if (s + r >= rows) {
        std::fill(out, out + depth, 0.f);
        continue;
      }
      blend_range(kernels + (row0 + s + r) * in_channels + k0, alpha, out, /*rows=*/1, p, kernel_numel, 0, depth);
    }
    float* sliver = panel + s * depth;
    for (int64_t k = 0; k < depth; ++k) {
      for (int64_t r = 0; r < kRows; ++r) {
        sliver[k * kRows + r] = blended[r][k];
      }
    }
  }
}

// The kRows x kColumns output tile at `out` (row stride ldo) from a sliver and kColumns pixels
// [depth][ldp]: written with the bias on the first panel (`first`), added to what is there on the
// next ones; only `rows` x `columns` of it are stored.
__attribute__((target("avx2,fma"))) void product_tile(const float* sliver, const float* pixels, int64_t ldp,
                                                       int64_t depth, float* out, int64_t ldo, int64_t rows,
                                                       int64_t columns, bool first, const float* bias) {
  // Every loop over the accumulators is unrolled, so that they stay in registers.
  __m256 acc[kRows][2];
#pragma GCC unroll 6
  for (int64_t r = 0; r < kRows; ++r) {
    acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < depth; ++k) {
    const __m256 low = _mm256_loadu_ps(pixels + k * ldp), high = _mm256_loadu_ps(pixels + k * ldp + 8);
#pragma GCC unroll 6
    for (int64_t r = 0; r < kRows; ++r) {
      const __m256 a = _mm256_broadcast_ss(sliver + k * kRows + r);
      acc[r][0] = _mm256_fmadd_ps(a, low, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(a, high, acc[r][1]);
    }
  }
  alignas(32) float tile[kRows][kColumns];
#pragma GCC unroll 6
  for (int64_t r = 0; r < kRows; ++r) {
    _mm256_store_ps(tile[r], acc[r][0]);
    _mm256_store_ps(tile[r] + 8, acc[r][1]);
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * ldo;
    if (first) {
      const float b = bias ? bias[r] : 0.f;
      for (int64_t j = 0; j < columns; ++j) {
        o[j] = tile[r][j] + b;
      }
    } else {
      for (int64_t j = 0; j < columns; ++j) {
        o[j] += tile[r][j];
      }
    }
  }
}

bool has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}

}  // namespace

bool blended_pointwise(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& alpha,
                       const at::Tensor& biases, at::Tensor& output) {
  const int64_t batch = input.size(0), pixels = input.size(2) * input.size(3);
  const int64_t p = weight.size(0), out_channels = weight.size(1), in_channels = weight.size(2);
  const bool floats = input.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                      alpha.scalar_type() == at::kFloat;
  if (!has_avx2_fma() || alpha.dim() != 2 || !floats || !input.is_contiguous() || !output.is_contiguous() ||
      pixels < kMinPixels || pixels > kMaxPixels || batch == 0 || out_channels == 0 || in_channels == 0) {
    return false;
  }
  const at::Tensor kernels = weight.contiguous(), alpha_rows = alpha.contiguous();
  const at::Tensor bias_rows = biases.defined() ? biases.contiguous() : biases;
  const float* kernel_data = kernels.const_data_ptr<float>();
  const float* alpha_data = alpha_rows.const_data_ptr<float>();
  const float* bias_data = bias_rows.defined() ? bias_rows.const_data_ptr<float>() : nullptr;
  const float* images = input.const_data_ptr<float>();
  float* results = output.mutable_data_ptr<float>();
  const int64_t kernel_numel = out_channels * in_channels, panels = (out_channels + kPanelRows - 1) / kPanelRows;
  // Work items are (panel of output channels, image), image-minor: a thread's run of items mostly
  // reads one panel's p kernels from cache, and small batches still split over the threads.
  at::parallel_for(0, panels * batch, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> panel(kPanelRows * kDepth), tail(kDepth * kColumns);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item / batch, b = item % batch;
      const int64_t row0 = block * kPanelRows, rows = std::min(kPanelRows, out_channels - row0);
      for (int64_t k0 = 0; k0 < in_channels; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, in_channels - k0);
        pack_blended_panel(kernel_data, alpha_data + b * p, p, kernel_numel, in_channels, row0, rows, k0, depth,
                           panel.data());
        const float* image = images + (b * in_channels + k0) * pixels;
        for (int64_t j0 = 0; j0 < pixels; j0 += kColumns) {
          const int64_t columns = std::min(kColumns, pixels - j0);
          const float* tile_pixels = image + j0;
          int64_t ldp = pixels;
          if (columns < kColumns) {  // the last pixels, zero-padded to a whole tile
            for (int64_t k = 0; k < depth; ++k) {
              float* padded = tail.data() + k * kColumns;
              std::copy(tile_pixels + k * pixels, tile_pixels + k * pixels + columns, padded);
              std::fill(padded + columns, padded + kColumns, 0.f);
            }
            tile_pixels = tail.data();
            ldp = kColumns;
          }
          for (int64_t s = 0; s < rows; s += kRows) {
            product_tile(panel.data() + s * depth, tile_pixels, ldp, depth,
                         results + (b * out_channels + row0 + s) * pixels + j0, pixels, std::min(kRows, rows - s),
                         columns, k0 == 0, bias_data ? bias_data + b * out_channels + row0 + s : nullptr);
          }
        }
      }
    }
  });
  return true;
}

#else

bool blended_pointwise(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&) {
  return false;  // the kernel above is written for x86-64's AVX2
}

#endif

}  // namespace flexops::cpu
