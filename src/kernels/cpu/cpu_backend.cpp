// CPU backend: memory (mmap'ed buffers, zero-copy imports), guard mode, and the element-wise / row ops.
// OpenMP across rows through core/parallel.h; numerics are the old host engine's, operation for operation.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/quant.h"

namespace dsv4 {
namespace cpu {

namespace {

size_t page_size() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

struct Segment {
  uint8_t* addr;
  size_t len;
  int prot;
};

// The protection of every mapping intersecting [lo, hi), from /proc/self/maps (imports restore it on unlock).
std::vector<Segment> mapping_protections(uint8_t* lo, uint8_t* hi) {
  std::vector<Segment> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t a = 0, b = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %7s", &a, &b, perms) != 3) continue;
    uintptr_t s = std::max(a, uintptr_t(lo)), e = std::min(b, uintptr_t(hi));
    if (s >= e) continue;
    int prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
               (perms[2] == 'x' ? PROT_EXEC : 0);
    out.push_back({reinterpret_cast<uint8_t*>(s), size_t(e - s), prot});
  }
  DSV4_CHECK(!out.empty(), "guard mode: imported memory {} is not mapped", static_cast<void*>(lo));
  return out;
}

}  // namespace

class CpuBuffer final : public Buffer {
 public:
  CpuBuffer(CpuBackend* be, uint8_t* base, size_t size, BufferUsage usage, bool owned, size_t map_len)
      : Buffer(be, base, size, usage), cpu_(be), owned_(owned), map_len_(map_len) {
    if (cpu_->guard_) {
      if (owned_) {
        segments_.push_back({base, map_len, PROT_READ | PROT_WRITE});
      } else if (size > 0) {
        // Whole pages: memory sharing the first or last page with the import is guarded with it.
        const uintptr_t p = page_size(), lo = uintptr_t(base) / p * p, hi = (uintptr_t(base) + size + p - 1) / p * p;
        segments_ = mapping_protections(reinterpret_cast<uint8_t*>(lo), reinterpret_cast<uint8_t*>(hi));
      }
    }
    cpu_->register_buffer(this);
  }
  ~CpuBuffer() override {
    if (cpu_) cpu_->unregister_buffer(this);
    if (owned_) {
      munmap(base_, map_len_);
    } else {
      protect(false);  // the caller's mapping gets its own protection back
    }
  }
  // The backend is being destroyed first: the buffer stays valid plain memory and frees itself alone.
  void orphan() {
    protect(false);
    cpu_ = nullptr;
  }
  // locked: PROT_NONE; unlocked: the protection the memory had.
  void protect(bool locked) {
    for (const Segment& s : segments_)
      DSV4_CHECK(mprotect(s.addr, s.len, locked ? PROT_NONE : s.prot) == 0, "guard mode: mprotect failed: {}",
                 std::strerror(errno));
  }

 private:
  CpuBackend* cpu_;
  bool owned_;
  size_t map_len_;
  std::vector<Segment> segments_;
};

CpuBackend::CpuBackend() {
  const char* g = std::getenv("DSV4_GUARD_BACKEND_MEMORY");
  guard_ = g && *g && std::string(g) != "0";
}

CpuBackend::~CpuBackend() {
  // Buffers normally die before their backend; any left keep working as plain memory.
  std::lock_guard<std::mutex> l(mu_);
  for (CpuBuffer* b : buffers_) b->orphan();
  buffers_.clear();
}

void CpuBackend::enter() const {
  if (!guard_) return;
  std::lock_guard<std::mutex> l(mu_);
  if (depth_++ == 0)
    for (CpuBuffer* b : buffers_) b->protect(false);
}

void CpuBackend::leave() const {
  if (!guard_) return;
  std::lock_guard<std::mutex> l(mu_);
  if (--depth_ == 0)
    for (CpuBuffer* b : buffers_) b->protect(true);
}

void CpuBackend::register_buffer(CpuBuffer* b) {
  std::lock_guard<std::mutex> l(mu_);
  buffers_.insert(b);
  if (guard_ && depth_ == 0) b->protect(true);
}

void CpuBackend::unregister_buffer(CpuBuffer* b) {
  std::lock_guard<std::mutex> l(mu_);
  buffers_.erase(b);
}

std::unique_ptr<Buffer> CpuBackend::alloc(size_t bytes, BufferUsage usage) {
  // Whole pages from mmap: page-aligned (mprotect-able in guard mode) and zero-filled.
  const size_t p = page_size(), len = std::max<size_t>(1, (bytes + p - 1) / p) * p;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  DSV4_CHECK(m != MAP_FAILED, "cpu backend: cannot allocate {} bytes for {}: {}", bytes, buffer_usage_name(usage),
             std::strerror(errno));
  return std::make_unique<CpuBuffer>(this, static_cast<uint8_t*>(m), bytes, usage, true, len);
}

std::unique_ptr<Buffer> CpuBackend::import_host(const void* p, size_t bytes, BufferUsage usage) {
  // Buffer::base() is non-const: ops never write weights, and guard mode restores the original protection.
  return std::make_unique<CpuBuffer>(this, static_cast<uint8_t*>(const_cast<void*>(p)), bytes, usage, false, 0);
}

static void check_range(const Tensor& t, size_t bytes, int64_t off, const char* what) {
  DSV4_CHECK(t.valid(), "{}: no tensor", what);
  DSV4_CHECK(off >= 0 && off + int64_t(bytes) <= t.nbytes(), "{}: [{}, +{}) outside a {}-byte tensor", what, off,
             bytes, t.nbytes());
}

void CpuBackend::upload(const Tensor& dst, const void* src, size_t bytes, int64_t dst_offset) {
  CallScope s(this);
  check_range(dst, bytes, dst_offset, "upload");
  if (bytes) std::memcpy(ptr<uint8_t>(dst) + dst_offset, src, bytes);
  ++counters_.uploads;
  counters_.upload_bytes += bytes;
}

void CpuBackend::download(void* dst, const Tensor& src, size_t bytes, int64_t src_offset) {
  CallScope s(this);
  check_range(src, bytes, src_offset, "download");
  if (bytes) std::memcpy(dst, ptr<uint8_t>(src) + src_offset, bytes);
  ++counters_.downloads;
  counters_.download_bytes += bytes;
}

void CpuBackend::fill(const Tensor& dst, uint8_t byte) {
  CallScope s(this);
  DSV4_CHECK(dst.valid(), "fill: no tensor");
  std::memset(ptr<uint8_t>(dst), byte, size_t(dst.nbytes()));
}

void CpuBackend::synchronize() { CallScope s(this); }  // ops run synchronously on the calling thread

MemoryInfo CpuBackend::memory_info() const {
  MemoryInfo mi;
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == "MemTotal:") mi.total = kb * 1024;
    if (key == "MemAvailable:") mi.free = kb * 1024;
  }
  return mi;
}

// ---------------------------------------------------------------------------------------------- simple ops

void CpuBackend::embed(const Tensor& tokens, const Tensor& table, int hc, const Tensor& X) {
  auto s = op();
  check_dtype(tokens, DType::I32, "embed tokens");
  const int64_t M = tokens.numel(), V = table.rows(), D = table.row_elems();
  check_numel(X, M * hc * D, "embed X");
  DSV4_CHECK(table.dtype == DType::BF16 || table.dtype == DType::F32, "embed: table dtype {}",
             dtype_name(table.dtype));
  const int32_t* tok = ptr<int32_t>(tokens);
  float* x = ptr<float>(X);
  for (int64_t m = 0; m < M; ++m) DSV4_CHECK(tok[m] >= 0 && tok[m] < V, "embed: token {} of {}", tok[m], V);
  parallel_for(M, 4, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      float* row = x + m * hc * D;
      if (table.dtype == DType::BF16) {
        const uint16_t* src = ptr<uint16_t>(table) + int64_t(tok[m]) * D;
        for (int64_t i = 0; i < D; ++i) row[i] = bf16_to_f32(src[i]);
      } else {
        std::memcpy(row, ptr<float>(table) + int64_t(tok[m]) * D, size_t(D) * 4);
      }
      for (int h = 1; h < hc; ++h) std::memcpy(row + h * D, row, size_t(D) * 4);
    }
  });
}

void CpuBackend::rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y, bool bf16_out) {
  auto s = op();
  check_dtype(x, DType::F32, "rms_norm x");
  check_dtype(y, DType::F32, "rms_norm y");
  DSV4_CHECK(D > 0 && x.numel() % D == 0 && y.numel() == x.numel(), "rms_norm: {} -> {} values, rows of {}",
             x.numel(), y.numel(), D);
  if (w.valid()) check_numel(w, D, "rms_norm weight");
  const int64_t M = x.numel() / D;
  const float* xp = ptr<float>(x);
  float* yp = ptr<float>(y);
  const float* wp = w.valid() ? ptr<float>(w) : nullptr;
  parallel_for(M, 16, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const float* xm = xp + m * D;
      float* ym = yp + m * D;
      float ss = dot(xm, xm, D);
      float r = 1.f / std::sqrt(ss / float(D) + eps);
      if (wp)
        for (int64_t i = 0; i < D; ++i) ym[i] = xm[i] * r * wp[i];
      else
        for (int64_t i = 0; i < D; ++i) ym[i] = xm[i] * r;
    }
  });
  if (bf16_out) round_bf16_pass(yp, M * D);
}

void CpuBackend::rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& freqs, bool inverse,
                      bool bf16_out) {
  auto s = op();
  check_dtype(x, DType::F32, "rope x");
  check_dtype(pos, DType::I32, "rope pos");
  // F64 frequencies reproduce the old engine exactly (angles in double); F32 is accepted too.
  DSV4_CHECK(freqs.dtype == DType::F64 || freqs.dtype == DType::F32, "rope: freqs dtype {}", dtype_name(freqs.dtype));
  const int64_t M = pos.numel(), half = freqs.numel(), off = hd - 2 * half;
  check_numel(x, M * H * hd, "rope x");
  DSV4_CHECK(off >= 0, "rope: {} frequencies for head dim {}", half, hd);
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    f[size_t(i)] = freqs.dtype == DType::F64 ? ptr<double>(freqs)[i] : double(ptr<float>(freqs)[i]);
  const int32_t* pp = ptr<int32_t>(pos);
  float* xp = ptr<float>(x);
  parallel_for(M, 8, [&](int64_t b, int64_t e) {
    std::vector<float> c(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t m = b; m < e; ++m) {
      for (int64_t i = 0; i < half; ++i) {
        double ang = double(pp[m]) * f[size_t(i)];
        c[size_t(i)] = float(std::cos(ang));
        sn[size_t(i)] = float(inverse ? -std::sin(ang) : std::sin(ang));
      }
      for (int64_t h = 0; h < H; ++h) {
        float* v = xp + (m * H + h) * hd + off;
        for (int64_t i = 0; i < half; ++i) {
          float re = v[2 * i], im = v[2 * i + 1];
          v[2 * i] = re * c[size_t(i)] - im * sn[size_t(i)];
          v[2 * i + 1] = re * sn[size_t(i)] + im * c[size_t(i)];
        }
      }
    }
  });
  if (bf16_out) round_bf16_pass(xp, M * H * hd);  // every value, as round_bf16 after rope
}

void CpuBackend::round_bf16(const Tensor& x) {
  auto s = op();
  check_dtype(x, DType::F32, "round_bf16");
  float* p = ptr<float>(x);
  round_bf16_pass(p, x.numel());
}

void CpuBackend::fp8_roundtrip(const Tensor& x, int64_t row, int64_t prefix, int64_t block) {
  auto s = op();
  check_dtype(x, DType::F32, "fp8_roundtrip");
  DSV4_CHECK(row > 0 && x.numel() % row == 0 && prefix >= 0 && prefix <= row && block > 0,
             "fp8_roundtrip: {} values, rows of {}, prefix {}, block {}", x.numel(), row, prefix, block);
  float* p = ptr<float>(x);
  parallel_for(x.numel() / row, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) dsv4::fp8_roundtrip(p + r * row, prefix, block);
  });
}

void CpuBackend::hadamard_fp4(const Tensor& x, int64_t dim) {
  auto s = op();
  check_dtype(x, DType::F32, "hadamard_fp4");
  DSV4_CHECK(dim > 0 && x.numel() % dim == 0, "hadamard_fp4: {} values, vectors of {}", x.numel(), dim);
  float* p = ptr<float>(x);
  parallel_for(x.numel() / dim, 16, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      hadamard(p + r * dim, dim);
      fp4_roundtrip(p + r * dim, dim, 32);
    }
  });
}

void CpuBackend::kv_roundtrip(const Tensor& x, const KvCodec& codec) {
  auto s = op();
  check_dtype(x, DType::F32, "kv_roundtrip");
  DSV4_CHECK(codec.dim > 0 && x.numel() % codec.dim == 0, "kv_roundtrip: {} values, vectors of {}", x.numel(),
             codec.dim);
  if (codec.dtype == KvDtype::F32) return;  // encode + decode is a copy
  float* p = ptr<float>(x);
  parallel_for(x.numel() / codec.dim, 16, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> tmp(size_t(codec.bytes()));
    for (int64_t r = b; r < e; ++r) {
      codec.encode(p + r * codec.dim, tmp.data());
      codec.decode(tmp.data(), p + r * codec.dim);
    }
  });
}

void CpuBackend::scale(const Tensor& x, float alpha) {
  auto s = op();
  check_dtype(x, DType::F32, "scale");
  float* p = ptr<float>(x);
  parallel_for(x.numel(), 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] *= alpha;
  });
}

void CpuBackend::gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) {
  auto s = op();
  check_dtype(rows, DType::I32, "gather_rows rows");
  const int64_t n = rows.numel(), rb = x.row_elems() * int64_t(dtype_size(x.dtype));
  DSV4_CHECK(out.dtype == x.dtype && out.nbytes() == n * rb, "gather_rows: {} rows of {} bytes into {} bytes", n, rb,
             out.nbytes());
  const int32_t* r = ptr<int32_t>(rows);
  for (int64_t i = 0; i < n; ++i) DSV4_CHECK(r[i] >= 0 && r[i] < x.rows(), "gather_rows: row {} of {}", r[i], x.rows());
  parallel_for(n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(ptr<uint8_t>(out) + i * rb, ptr<uint8_t>(x) + r[i] * rb, size_t(rb));
  });
}

}  // namespace cpu

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<cpu::CpuBackend>(); }

void cpu_backend_with_access(Backend& be, const std::function<void()>& fn) {
  auto* c = dynamic_cast<cpu::CpuBackend*>(&be);
  DSV4_CHECK(c, "cpu_backend_with_access: backend '{}' is not the CPU backend", be.name());
  cpu::CpuBackend::CallScope s(c);
  fn();
}

bool cpu_backend_guarded(const Backend& be) {
  auto* c = dynamic_cast<const cpu::CpuBackend*>(&be);
  return c && c->guarded();
}

}  // namespace dsv4
