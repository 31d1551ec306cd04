#pragma once
// Bilinear sampling with zeros outside the image, exactly as torchvision's deform_conv2d does it:
// a point (y, x) contributes only if -1 < y < H and -1 < x < W; each of its four corners adds
// its value when that corner lies inside the image.
#include <cmath>
#include "macros.h"

namespace flexops {

// The four corners of a sample point and their bilinear weights. A corner outside the image has
// weight 0 and index -1 so callers can skip it without re-testing bounds.
template <typename T>
struct BilinearCorners {
  int index[4];   // y * W + x of (y0,x0), (y0,x1), (y1,x0), (y1,x1); -1 when outside
  T weight[4];
  // d(weight)/dy and d(weight)/dx, for the offset gradient.
  T dweight_dy[4];
  T dweight_dx[4];
};

// Fills c for the point (y, x), whose in-range test the caller has made.
template <typename T>
FLEXOPS_HOST_DEVICE void fill_corners(T y, T x, int height, int width, BilinearCorners<T>& c) {
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
}

// A point with a NaN coordinate (and the other one in range) samples NaN, as torchvision's does: its corners are all outside
// (index -1, read as 0, so the NaN reaches no input gradient) but keep the weights and derivatives of
// the arithmetic, NaN wherever a NaN fraction enters. So the sample is NaN, and so are the offset
// gradients that a NaN fraction reaches (a NaN y: the x gradient), the mask's and the weight's.
// Callers read an outside corner as 0 rather than skip it, so that its NaN weight counts.
template <typename T>
FLEXOPS_HOST_DEVICE void nan_corners(T y, T x, BilinearCorners<T>& c) {
  const T ly = y - floor(y), lx = x - floor(x);
  const T hy = T(1) - ly, hx = T(1) - lx;
  const T weight[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const T dweight_dy[4] = {-hx, -lx, hx, lx};
  const T dweight_dx[4] = {-hy, hy, -ly, ly};
  for (int k = 0; k < 4; ++k) {
    c.index[k] = -1;
    c.weight[k] = weight[k];
    c.dweight_dy[k] = dweight_dy[k];
    c.dweight_dx[k] = dweight_dx[k];
  }
}

// Returns false when the point lies wholly outside (it then samples 0 and has zero gradient).
template <typename T>
FLEXOPS_HOST_DEVICE bool bilinear_corners(T y, T x, int height, int width, BilinearCorners<T>& c) {
  // torchvision's test: a NaN coordinate passes it, and the point is outside only if the other one is.
  if (y <= T(-1) || y >= T(height) || x <= T(-1) || x >= T(width)) {
    return false;
  }
  if (y != y || x != x) {  // NaN, the one value unequal to itself
    nan_corners(y, x, c);
    return true;
  }
  fill_corners(y, x, height, width, c);
  return true;
}

}  // namespace flexops
