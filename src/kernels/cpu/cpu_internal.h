// The CPU backend's class, shared by its source files (cpu_backend.cpp: memory, guard mode and simple ops;
// cpu_hc.cpp; cpu_linear.cpp; cpu_kv_attention.cpp; cpu_compress.cpp; cpu_moe.cpp). Not for use outside
// src/kernels/cpu.
#pragma once
#include <cmath>
#include <cstdint>
#include <mutex>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/backend.h"
#include "kernels/quant.h"

namespace dsv4 {
namespace cpu {

// The old engine's dot product: one fp32 accumulator, vectorized by the compiler (same order as before).
inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// An op's bf16_out: a pass after the op's own loops, which so stay exactly the code of the unrounded op (with the
// rounding inside rms_norm's row loop, its outputs differed from rms_norm + round_bf16 by an ulp on x86-64-v3).
inline void round_bf16_pass(float* p, int64_t n) {
  parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) { dsv4::round_bf16(p + b, e - b); });
}

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

template <typename T>
inline T* ptr(const Tensor& t) {
  return t.data<T>();
}

inline void check_dtype(const Tensor& t, DType d, const char* what) {
  DSV4_CHECK(t.valid(), "{}: tensor missing", what);
  DSV4_CHECK(t.dtype == d, "{}: dtype {} (expected {})", what, dtype_name(t.dtype), dtype_name(d));
}
inline void check_numel(const Tensor& t, int64_t n, const char* what) {
  DSV4_CHECK(t.numel() == n, "{}: {} elements (expected {})", what, t.numel(), n);
}

// One buffer: mmap'ed (alloc) or wrapped host memory (import_host). In guard mode `pages` (page-aligned) is
// what gets mprotect'ed; for imports `segments` keep the protection each mapping had when imported.
class CpuBuffer;

// Exact fp32 row of a weight in its own format (the old LinearWeight::dequant_row).
void dequant_row(const LinearWeight& w, int64_t r, float* dst);
// y[m * ldy + n] = x[m * ldx + :] . W[n] for m < M; act_fp8: x rows quantized first when W is quantized.
void linear_rows(const float* x, int64_t ldx, int64_t M, const LinearWeight& w, float* y, int64_t ldy,
                 bool act_fp8, bool out_bf16);
// Top k of n scores, highest first, exact ties to the lowest index (k <= n).
void topk_lowest_first(const float* scores, int64_t n, int64_t k, int32_t* out);

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  ~CpuBackend() override;
  std::string name() const override { return "cpu"; }

  std::unique_ptr<Buffer> alloc(size_t bytes, BufferUsage usage) override;
  std::unique_ptr<Buffer> import_host(const void* p, size_t bytes, BufferUsage usage) override;
  void upload(const Tensor& dst, const void* src, size_t bytes, int64_t dst_offset) override;
  void download(void* dst, const Tensor& src, size_t bytes, int64_t src_offset) override;
  void fill(const Tensor& dst, uint8_t byte) override;
  void synchronize() override;
  MemoryInfo memory_info() const override;

  void embed(const Tensor& tokens, const Tensor& table, int hc, const Tensor& X) override;
  void linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) override;
  void rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y,
                bool bf16_out = false) override;
  void rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& freqs, bool inverse,
            bool bf16_out = false) override;
  void round_bf16(const Tensor& x) override;
  void fp8_roundtrip(const Tensor& x, int64_t row, int64_t prefix, int64_t block) override;
  void hadamard_fp4(const Tensor& x, int64_t dim) override;
  void kv_roundtrip(const Tensor& x, const KvCodec& codec) override;
  void scale(const Tensor& x, float alpha) override;
  void gather_rows(const Tensor& x, const Tensor& rows, const Tensor& out) override;
  void hc_pre(const Tensor& X, const HcParams& p, const Tensor& y, const Tensor& post, const Tensor& comb,
              bool bf16_out = false) override;
  void hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc, const Tensor& Xout,
               bool bf16_out = false) override;
  void hc_head(const Tensor& X, const HcParams& p, const Tensor& y) override;
  void window_store(const Tensor& kv, const BatchMeta& meta, const SnapshotList& snaps,
                    const KvLayerView& view) override;
  void store_entries(const Tensor& src, const EntryList& entries, const BatchMeta& meta, const KvLayerView& view,
                     bool indexer) override;
  void arena_copy(const Tensor& arena, const Tensor& copies, int64_t n) override;
  void attention(const AttentionArgs& a) override;
  void index_topk(const IndexTopkArgs& a) override;
  int64_t index_scratch_cols(int64_t max_entries, int64_t k) const override;
  uint64_t host_scratch_bytes(const KvArenaShape& shape, int64_t max_context, int64_t max_rows,
                              int64_t topk) const override;
  // index_topk's tile (entries scored at once per row) when a row sees more entries than one tile.
  static constexpr int64_t kIndexTile = 1024;
  void compress(const CompressArgs& a) override;
  void route(const RouteArgs& a) override;
  void moe(const MoeArgs& a) override;

  // Guard mode: every entry point holds a CallScope; buffers are accessible only while one is open.
  class CallScope {
   public:
    explicit CallScope(const CpuBackend* b) : b_(b) { b_->enter(); }
    ~CallScope() { b_->leave(); }
    CallScope(const CallScope&) = delete;
    CallScope& operator=(const CallScope&) = delete;

   private:
    const CpuBackend* b_;
  };
  bool guarded() const { return guard_; }

 private:
  friend class CpuBuffer;
  // An op: opens the guard scope and counts the call.
  CallScope op() {
    ++counters_.ops;
    return CallScope(this);
  }
  void enter() const;
  void leave() const;
  void register_buffer(CpuBuffer* b);
  void unregister_buffer(CpuBuffer* b);

  bool guard_ = false;
  mutable std::mutex mu_;  // guards depth_ and buffers_
  mutable int depth_ = 0;
  std::set<CpuBuffer*> buffers_;
};

// Byte addresses inside the KV arena of one layer view.
struct ArenaAddr {
  const KvLayerView& v;
  uint8_t* base() const { return ptr<uint8_t>(v.arena); }
  uint8_t* block(int64_t id, int64_t off) const {
    DSV4_CHECK(id >= 0 && id < v.shape.n_blocks && off >= 0, "KV block {} (of {}) at offset {}", id,
               v.shape.n_blocks, off);
    return base() + v.shape.block_offset(id) + off;
  }
  uint8_t* slot(int64_t s, int64_t off) const {
    DSV4_CHECK(s >= 0 && s < v.shape.n_slots && off >= 0, "KV slot {} (of {}) at offset {}", s, v.shape.n_slots,
               off);
    return base() + v.shape.slot_offset(s) + off;
  }
};

// Host views of a BatchMeta (CPU tensors are host memory).
struct MetaView {
  const BatchMeta& m;
  const int32_t* pos() const { return ptr<int32_t>(m.pos); }
  int32_t item(int64_t i, int f) const { return ptr<int32_t>(m.items)[i * BatchMeta::kItemFields + f]; }
  int32_t block(int64_t i, int64_t b) const {
    DSV4_CHECK(b >= 0 && b < m.max_blocks, "block index {} of item {} beyond the table's {}", b, i, m.max_blocks);
    return ptr<int32_t>(m.block_table)[i * m.max_blocks + b];
  }
};

}  // namespace cpu
}  // namespace dsv4
