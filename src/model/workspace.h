// One preallocated per-step workspace in backend memory, replacing per-call vectors: a bump allocator that
// is reset every step. Tensors of a step get the same addresses whenever the step has the same shape (what
// CUDA graphs need). A measuring workspace (no backend) computes the size a step shape needs.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>

#include "kernels/backend.h"

namespace dsv4 {

class Workspace {
 public:
  Workspace() = default;                   // measuring: tensors have no buffer
  Workspace(Backend& be, uint64_t bytes);  // allocates
  Tensor take(DType t, std::initializer_list<int64_t> shape);
  void reset() { used_ = 0; }
  uint64_t used() const { return used_; }
  uint64_t peak() const { return peak_; }
  uint64_t capacity() const { return capacity_; }
  bool measuring() const { return !buf_; }

 private:
  std::unique_ptr<Buffer> buf_;
  uint64_t capacity_ = 0, used_ = 0, peak_ = 0;
};

}  // namespace dsv4
