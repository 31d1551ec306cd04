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
// Where the CPU does have them (half_type_products below), the forwards whose bulk is matrix
// products and convolutions (tunable_conv2d, deform_conv2d) run in the half type instead: oneDNN
// then multiplies with the CPU's bf16/fp16 dot-product instructions, accumulating in float32.
//
// InFloat32<&op>::call has op's signature and registers in its place. It widens only when the
// first floating-point tensor argument is bfloat16 or float16 and every other floating-point tensor
// argument has the same dtype; otherwise it calls op unchanged, whose argument checks then name
// the mismatch (or which runs float32/float64 as before). InFloat32<&op, true> calls op unchanged
// also where half_type_products says the CPU multiplies in that half type: op then serves it.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <optional>
#include <string_view>
#include <tuple>
#include <utility>

#include "cpu/kept_memory.h"

namespace flexops::cpu {

namespace widening {

inline bool is_half_type(at::ScalarType dtype) { return dtype == at::kBFloat16 || dtype == at::kHalf; }

// What PyTorch's own check answers (torch.ops.mkldnn._is_mkldnn_bf16_supported and _fp16_).
inline bool onednn_says(const char* check) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(check, "").typed<bool()>().call();
}

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

// Whether oneDNN multiplies `dtype` (bfloat16 or float16) with this CPU's own instructions (AVX-512
// and its BF16 or FP16 extensions, AMX), as PyTorch's check says. The environment variable
// FLEXOPS_CPU_HALF_PRODUCTS, read on every call, overrides it: "native" or "float32" ("auto" or
// unset: the check). flexops.nn.dense asks it once, at import (flexops._C.cpu_half_type_products).
// The tests force each path on any CPU; on one without the instructions ATen's portable loops serve
// "native" products, correctly but slowly.
inline bool half_type_products(at::ScalarType dtype) {
  if (const char* forced = std::getenv("FLEXOPS_CPU_HALF_PRODUCTS")) {
    const std::string_view choice(forced);
    if (choice == "native") return true;
    if (choice == "float32") return false;
    TORCH_CHECK(choice.empty() || choice == "auto",
                "FLEXOPS_CPU_HALF_PRODUCTS must be native, float32 or auto, not '", choice, "'");
  }
  static const bool bf16 = widening::onednn_says("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = widening::onednn_says("mkldnn::_is_mkldnn_fp16_supported");
  return dtype == at::kBFloat16 ? bf16 : dtype == at::kHalf && fp16;
}

template <auto op, bool native_products = false>
struct InFloat32;

template <typename Result, typename... Args, Result (*op)(Args...), bool native_products>
struct InFloat32<op, native_products> {
  static Result call(Args... args) {
    widening::SharedDtype shared;
    (shared.see(args), ...);
    if (!shared.half_type() || (native_products && half_type_products(*shared.first))) {
      return op(args...);
    }
    return widening::narrow(op(widening::widen(args)...), *shared.first);
  }
};

}  // namespace flexops::cpu
