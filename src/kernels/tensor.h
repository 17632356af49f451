// Tensors in a backend's memory. A Buffer is one allocation made by a backend (host memory for the CPU
// backend, device memory for CUDA); a Tensor is a typed, row-major view into one. Code above the backend
// (graph, runner, scheduler) passes tensors around but never dereferences their memory: only backend calls
// do (the CPU backend's guard mode, DSV4_GUARD_BACKEND_MEMORY=1, enforces it with mprotect).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "core/dtype.h"
#include "core/error.h"

namespace dsv4 {

enum class BufferUsage : uint8_t { Weights, KvCache, Workspace, Io };
const char* buffer_usage_name(BufferUsage u);

class Backend;

// One backend allocation. Owned through std::unique_ptr<Buffer>; the backend frees it.
class Buffer {
 public:
  virtual ~Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* base() const { return base_; }  // a device address: only backends may dereference it
  size_t size() const { return size_; }
  BufferUsage usage() const { return usage_; }
  Backend* backend() const { return backend_; }

 protected:
  Buffer(Backend* be, uint8_t* base, size_t size, BufferUsage usage)
      : backend_(be), base_(base), size_(size), usage_(usage) {}
  Backend* backend_;
  uint8_t* base_;
  size_t size_;
  BufferUsage usage_;
};

struct Tensor {
  static constexpr int kMaxDims = 4;
  Buffer* buf = nullptr;
  int64_t offset = 0;  // bytes from buf->base()
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};

  Tensor() = default;
  Tensor(Buffer* b, int64_t off, DType t, std::initializer_list<int64_t> dims);

  bool valid() const { return buf != nullptr; }
  int64_t numel() const;
  int64_t nbytes() const { return numel() * int64_t(dtype_size(dtype)); }
  int64_t dim(int i) const { return shape[size_t(i)]; }
  int64_t rows() const { return ndim ? shape[0] : 0; }
  int64_t row_elems() const { return ndim ? numel() / shape[0] : 0; }
  // Rows [r0, r0 + n) along the first dimension.
  Tensor rows(int64_t r0, int64_t n) const;
  // The same bytes with another shape (element count must match).
  Tensor view(std::initializer_list<int64_t> dims) const;
  Tensor view(DType t, std::initializer_list<int64_t> dims) const;

  // For backend implementations only.
  template <typename T>
  T* data() const {
    return reinterpret_cast<T*>(buf->base() + offset);
  }
};

}  // namespace dsv4
