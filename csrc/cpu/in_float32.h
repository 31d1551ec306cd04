#pragma once
// bfloat16 and float16 on CPU: an op's tensors are widened to float32 at its boundary, its float32
// kernels run, and its results are rounded back to the input's dtype. So every product and sum
// accumulates in float32, and the result differs from float32 math on the rounded inputs only by
// the final rounding.
//
// Why not reduced-precision kernels: where the CPU has no bf16/fp16 arithmetic (x86 without
// AVX-512 BF16 or AMX, such as the AMD EPYC, Zen 3, these kernels were tuned on), a product of
// half types is float32 work plus conversions, and ATen's own half-type paths there are far
// slower than float32: measured with torch 2.14.1 on 2 threads, a 64 -> 64 3x3 convolution at
// 128x128 took 4081 ms in bf16 against 47 ms in float32, a 16384x180 by 180x540 product 1450 ms
// against 81 ms.
//
// InFloat32<&op>::call has op's signature and registers in its place. It widens only when the
// first floating-point tensor argument is bfloat16 or float16 and every other floating-point tensor
// argument has the same dtype; otherwise it calls op unchanged, whose argument checks then name
// the mismatch (or which runs float32/float64 as before).
#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <utility>

#include "cpu/kept_memory.h"

namespace flexops::cpu {

namespace widening {

inline bool is_half_type(at::ScalarType dtype) { return dtype == at::kBFloat16 || dtype == at::kHalf; }

// The dtype that all floating-point tensor arguments share, as far as seen.
struct SharedDtype {
  std::optional<at::ScalarType> first;
  bool all_same = true;

  void see(const at::Tensor& t) {
    if (!t.defined() || !t.is_floating_point()) return;
    if (!first) {
      first = t.scalar_type();
    } else if (*first != t.scalar_type()) {
      all_same = false;
    }
  }
  void see(const std::optional<at::Tensor>& t) {
    if (t) see(*t);
  }
  template <typename T>
  void see(const T&) {}

  bool half_type() const { return first && all_same && is_half_type(*first); }
};

// t in dtype, in kept memory (cpu/kept_memory.h) as the op's own results are: a fresh copy of a
// large tensor would fault its pages in on every call. A dense t keeps its strides (channels_last
// stays so, as the ops' fake kernels promise); any other becomes contiguous.
inline at::Tensor kept_copy(const at::Tensor& t, at::ScalarType dtype) {
  const at::TensorOptions options = t.options().dtype(dtype);
  at::Tensor copy = t.is_non_overlapping_and_dense() ? kept_empty_strided(t.sizes(), t.strides(), options)
                                                      : kept_empty(t.sizes(), options);
  return copy.copy_(t);
}

inline at::Tensor widen(const at::Tensor& t) {
  return t.defined() && t.is_floating_point() ? kept_copy(t, at::kFloat) : t;
}
inline std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(widen(*t)) : std::nullopt;
}
template <typename T>
const T& widen(const T& value) {
  return value;
}

inline at::Tensor narrow(const at::Tensor& t, at::ScalarType dtype) {
  return t.defined() && t.is_floating_point() ? kept_copy(t, dtype) : t;
}
template <typename... Ts>
std::tuple<Ts...> narrow(const std::tuple<Ts...>& results, at::ScalarType dtype) {
  return std::apply([&](const Ts&... r) { return std::tuple<Ts...>(narrow(r, dtype)...); }, results);
}

}  // namespace widening

template <auto op>
struct InFloat32;

template <typename Result, typename... Args, Result (*op)(Args...)>
struct InFloat32<op> {
  static Result call(Args... args) {
    widening::SharedDtype shared;
    (shared.see(args), ...);
    if (!shared.half_type()) {
      return op(args...);
    }
    return widening::narrow(op(widening::widen(args)...), *shared.first);
  }
};

}  // namespace flexops::cpu
