// Kept blocks for the CPU tensors flexops allocates (see kept_memory.h).
#include "cpu/kept_memory.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstdlib>
#include <iterator>
#include <mutex>
#include <string>
#include <vector>

namespace flexops::cpu {
namespace {

// Blocks below glibc's initial mmap threshold come from its heap, already mapped.
constexpr size_t kKeptMinBytes = size_t(128) << 10;
constexpr size_t kMaxKeptBlocks = 64;

size_t kept_limit_bytes() {
  const char* text = std::getenv("FLEXOPS_KEPT_CPU_MB");
  if (text == nullptr || *text == '\0') {
    return size_t(1024) << 20;
  }
  char* end = nullptr;
  const unsigned long long megabytes = std::strtoull(text, &end, 10);
  TORCH_CHECK(*end == '\0' && text[0] != '-',
              "FLEXOPS_KEPT_CPU_MB must be a whole number of megabytes (0 keeps none), got '", text, "'");
  return static_cast<size_t>(megabytes) << 20;
}

class KeptAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (bytes < kKeptMinBytes || limit_ == 0) {
      void* data = c10::alloc_cpu(bytes);
      return {data, data, &c10::free_cpu, cpu};
    }
    void* data = take(bytes);
    return {data, new Block{this, {data, bytes}}, &give_back, cpu};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_bytes_;
  }

 private:
  struct Kept {
    void* data;
    size_t bytes;
  };
  struct Block {  // a DataPtr's context
    KeptAllocator* owner;
    Kept memory;
  };

  // A kept block of exactly this size (the most recently returned one), else a new one.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {
        if (it->bytes == bytes) {
          void* data = it->data;
          kept_bytes_ -= bytes;
          kept_.erase(std::next(it).base());
          return data;
        }
      }
    }
    return c10::alloc_cpu(bytes);
  }

  // The DataPtr's deleter: the block joins the kept ones; the oldest go past the limits.
  static void give_back(void* context) {
    auto* block = static_cast<Block*>(context);
    KeptAllocator& self = *block->owner;
    std::vector<void*> freed;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      self.kept_.push_back(block->memory);
      self.kept_bytes_ += block->memory.bytes;
      while (self.kept_.size() > kMaxKeptBlocks || self.kept_bytes_ > self.limit_) {
        freed.push_back(self.kept_.front().data);
        self.kept_bytes_ -= self.kept_.front().bytes;
        self.kept_.erase(self.kept_.begin());
      }
    }
    delete block;
    for (void* data : freed) c10::free_cpu(data);
  }

  const size_t limit_ = kept_limit_bytes();
  std::mutex mutex_;
  std::vector<Kept> kept_;  // oldest first
  size_t kept_bytes_ = 0;
};

// Never destroyed: tensors can outlive static destructors at interpreter exit.
KeptAllocator& allocator() {
  static auto* instance = new KeptAllocator();
  return *instance;
}

}  // namespace

at::Tensor kept_empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                      at::MemoryFormat format) {
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), format);
}

at::Tensor kept_empty_strided(at::IntArrayRef sizes, at::IntArrayRef strides, const at::TensorOptions& options) {
  return at::detail::empty_strided_generic(sizes, strides, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           c10::typeMetaToScalarType(options.dtype()));
}

at::Tensor kept_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return kept_empty(sizes, options).zero_();
}

size_t kept_bytes() { return allocator().kept_bytes(); }

namespace {

at::Tensor kept_empty_like(const at::Tensor& like, at::IntArrayRef size) {
  for (const int64_t extent : size) {
    TORCH_CHECK(extent >= 0, "kept_empty_like: sizes must be >= 0, got ", size);
  }
  return kept_empty(size, like.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) { m.impl("kept_empty_like", &kept_empty_like); }

}  // namespace flexops::cpu
