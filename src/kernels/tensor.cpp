#include "kernels/tensor.h"

namespace dsv4 {

const char* buffer_usage_name(BufferUsage u) {
  switch (u) {
    case BufferUsage::Weights: return "weights";
    case BufferUsage::KvCache: return "kv-cache";
    case BufferUsage::Workspace: return "workspace";
    case BufferUsage::Io: return "io";
  }
  return "?";
}

Tensor::Tensor(Buffer* b, int64_t off, DType t, std::initializer_list<int64_t> dims) : buf(b), offset(off), dtype(t) {
  DSV4_CHECK(dims.size() <= size_t(kMaxDims), "tensor with {} dims (at most {})", dims.size(), kMaxDims);
  for (int64_t d : dims) shape[size_t(ndim++)] = d;
  DSV4_CHECK(!b || off + nbytes() <= int64_t(b->size()), "tensor [{}, +{}) outside its {}-byte buffer", off, nbytes(),
             b->size());
}

int64_t Tensor::numel() const {
  if (!ndim) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[size_t(i)];
  return n;
}

Tensor Tensor::rows(int64_t r0, int64_t n) const {
  DSV4_CHECK(ndim >= 1 && r0 >= 0 && n >= 0 && r0 + n <= shape[0], "rows [{}, {}) of a tensor with {} rows", r0,
             r0 + n, ndim ? shape[0] : 0);
  Tensor t = *this;
  t.offset += r0 * row_elems() * int64_t(dtype_size(dtype));
  t.shape[0] = n;
  return t;
}

Tensor Tensor::view(std::initializer_list<int64_t> dims) const { return view(dtype, dims); }

Tensor Tensor::view(DType t, std::initializer_list<int64_t> dims) const {
  Tensor v;
  v.buf = buf;
  v.offset = offset;
  v.dtype = t;
  for (int64_t d : dims) v.shape[size_t(v.ndim++)] = d;
  DSV4_CHECK(v.nbytes() == nbytes(), "view of {} bytes as {} bytes", nbytes(), v.nbytes());
  return v;
}

}  // namespace dsv4
