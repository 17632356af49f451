// Test helpers: host vectors to and from backend tensors (through upload/download only, so the same test
// runs on every backend and in guard mode).
#pragma once
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "kernels/backend.h"

namespace dsv4::test {

// A tensor with its own buffer.
struct Dev {
  std::unique_ptr<Buffer> buf;
  Tensor t;
  operator const Tensor&() const { return t; }
};

inline Dev dev_alloc(Backend& be, DType dt, std::initializer_list<int64_t> shape) {
  Dev d;
  Tensor probe(nullptr, 0, dt, shape);
  d.buf = be.alloc(size_t(std::max<int64_t>(probe.nbytes(), 1)), BufferUsage::Workspace);
  d.t = Tensor(d.buf.get(), 0, dt, shape);
  be.fill(d.t, 0);
  return d;
}

template <typename T>
Dev dev_upload(Backend& be, const std::vector<T>& v, DType dt, std::initializer_list<int64_t> shape) {
  Dev d = dev_alloc(be, dt, shape);
  DSV4_CHECK(int64_t(v.size() * sizeof(T)) == d.t.nbytes(), "dev_upload: {} bytes for a {}-byte tensor",
             v.size() * sizeof(T), d.t.nbytes());
  be.upload(d.t, v.data(), v.size() * sizeof(T));
  return d;
}

template <typename T>
std::vector<T> dev_download(Backend& be, const Tensor& t) {
  std::vector<T> v(size_t(t.nbytes()) / sizeof(T));
  be.download(v.data(), t, v.size() * sizeof(T));
  return v;
}

// Deterministic uniform numbers in [lo, hi) (a fixed LCG: identical on every platform).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 6364136223846793005ULL + 1442695040888963407ULL) {}
  uint32_t next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return uint32_t(s >> 33);
  }
  float uni(float lo = -1.f, float hi = 1.f) { return lo + (hi - lo) * float(next() >> 8) / float(1 << 23); }
  int64_t below(int64_t n) { return int64_t(next() % uint32_t(n)); }
  std::vector<float> vec(size_t n, float lo = -1.f, float hi = 1.f) {
    std::vector<float> v(n);
    for (auto& x : v) x = uni(lo, hi);
    return v;
  }
};

}  // namespace dsv4::test
