#pragma once
// The corners for the backward pass. torchvision differentiates the bilinear sample on a wider
// range than it samples: a point on the line y == -1 (or x == -1) samples 0, yet its offset
// gradient is the one-sided derivative toward the image. Zero offsets with padding 1 put the first
// output row exactly there, so this case is common. Only points with y < -1, y >= H, x < -1 or
// x >= W have zero gradient.
#include <cmath>
#include "bilinear.h"

namespace flexops {

// bilinear_corners (bilinear.h) for the backward pass: the same corners, weights and derivatives,
// but points on y == -1 or x == -1 are kept. Their corner weights all come out 0 (the corners
// inside have ly == 0 or lx == 0), so sampled values and input gradients agree with
// bilinear_corners; only dweight_dy and dweight_dx differ there.
template <typename T>
FLEXOPS_HOST_DEVICE bool bilinear_corners_grad(T y, T x, int height, int width,
                                               BilinearCorners<T>& c) {
  if (y < T(-1) || y >= T(height) || x < T(-1) || x >= T(width)) {  // a NaN passes (bilinear.h)
    return false;
  }
  if (y != y || x != x) {
    nan_corners(y, x, c);
    return true;
  }
  fill_corners(y, x, height, width, c);
  return true;
}

}  // namespace flexops
