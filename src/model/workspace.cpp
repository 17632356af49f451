#include "model/workspace.h"

#include <algorithm>

#include "core/error.h"

namespace dsv4 {

Workspace::Workspace(Backend& be, uint64_t bytes) : capacity_(bytes) {
  buf_ = be.alloc(std::max<uint64_t>(bytes, 256), BufferUsage::Workspace);
}

Tensor Workspace::take(DType t, std::initializer_list<int64_t> shape) {
  Tensor probe(nullptr, 0, t, shape);
  const uint64_t off = (used_ + 255) / 256 * 256;  // 256-byte alignment suits every backend's vector loads
  const uint64_t end = off + uint64_t(std::max<int64_t>(probe.nbytes(), 0));
  if (buf_ && end > capacity_)
    fail("step workspace exhausted: {} bytes needed, {} allocated (a step larger than the limits it was sized for)",
         end, capacity_);
  used_ = end;
  peak_ = std::max(peak_, used_);
  if (!buf_) return probe;
  return Tensor(buf_.get(), int64_t(off), t, shape);
}

}  // namespace dsv4
