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
  if (!(y >= T(-1) && y < T(height) && x >= T(-1) && x < T(width))) {
    return false;
  }
  const int y0 = static_cast<int>(floor(y));
  const int x0 = static_cast<int>(floor(x));
  const int y1 = y0 + 1;
  const int x1 = x0 + 1;
  const T ly = y - T(y0), lx = x - T(x0);
  const T hy = T(1) - ly, hx = T(1) - lx;
  const bool in_y0 = y0 >= 0, in_y1 = y1 <= height - 1;
  const bool in_x0 = x0 >= 0, in_x1 = x1 <= width - 1;
  const bool inside[4] = {in_y0 && in_x0, in_y0 && in_x1, in_y1 && in_x0, in_y1 && in_x1};
  const int index[4] = {y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1};
  const T weight[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const T dweight_dy[4] = {-hx, -lx, hx, lx};
  const T dweight_dx[4] = {-hy, hy, -ly, ly};
  for (int k = 0; k < 4; ++k) {
    c.index[k] = inside[k] ? index[k] : -1;
    c.weight[k] = inside[k] ? weight[k] : T(0);
    c.dweight_dy[k] = inside[k] ? dweight_dy[k] : T(0);
    c.dweight_dx[k] = inside[k] ? dweight_dx[k] : T(0);
  }
  return true;
}

}  // namespace flexops
