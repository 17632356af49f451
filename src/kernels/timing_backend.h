// A backend that forwards to another and times every op: synchronize, run, synchronize, wall clock. The
// per-op breakdown of the benchmarks where no profiler runs (the device machines have no Nsight Systems).
// Synchronizing after each op adds its latency to every op, so the total is above an untimed step's: the
// benchmarks report the untimed step time and use this for the shares.
#pragma once
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace dsv4 {

struct OpTime {
  uint64_t calls = 0;
  double seconds = 0;
};

class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {}
  const std::map<std::string, OpTime>& times() const { return times_; }
  void reset_times() { times_.clear(); }
  // Disabled: plain forwarding, no synchronization (to time whole steps without the profiler's cost).
  void set_enabled(bool on) { enabled_ = on; }
  Backend& inner() { return *in_; }

  std::string name() const override { return in_->name(); }
  std::unique_ptr<Buffer> alloc(size_t bytes, BufferUsage usage) override { return in_->alloc(bytes, usage); }
  std::unique_ptr<Buffer> import_host(const void* p, size_t bytes, BufferUsage usage) override {
    return in_->import_host(p, bytes, usage);
  }
  void upload(const Tensor& dst, const void* src, size_t bytes, int64_t off) override {
    in_->upload(dst, src, bytes, off);
    counters_ = in_->counters();
  }
  void download(void* dst, const Tensor& src, size_t bytes, int64_t off) override {
    in_->download(dst, src, bytes, off);
    counters_ = in_->counters();
  }
  void fill(const Tensor& dst, uint8_t byte) override { in_->fill(dst, byte); }
  void synchronize() override { in_->synchronize(); }
  MemoryInfo memory_info() const override { return in_->memory_info(); }

  void embed(const Tensor& t, const Tensor& table, int hc, const Tensor& X) override {
    timed("embed", [&] { in_->embed(t, table, hc, X); });
  }
  void linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) override {
    timed(std::string("linear/") + weight_format_name(w.fmt) + (x.rows() <= 16 ? "/M<=16" : "/M>16"),
          [&] { in_->linear(x, w, y, o); });
  }
  void rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y, bool bf16_out = false) override {
    timed("rms_norm", [&] { in_->rms_norm(x, D, w, eps, y, bf16_out); });
  }
  void rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& f, bool inv, bool bf16_out = false) override {
    timed("rope", [&] { in_->rope(x, H, hd, pos, f, inv, bf16_out); });
  }
  void round_bf16(const Tensor& x) override { timed("round_bf16", [&] { in_->round_bf16(x); }); }
  void fp8_roundtrip(const Tensor& x, int64_t row, int64_t prefix, int64_t block) override {
    timed("fp8_roundtrip", [&] { in_->fp8_roundtrip(x, row, prefix, block); });
  }
  void hadamard_fp4(const Tensor& x, int64_t dim) override { timed("hadamard_fp4", [&] { in_->hadamard_fp4(x, dim); }); }
  void kv_roundtrip(const Tensor& x, const KvCodec& c) override { timed("kv_roundtrip", [&] { in_->kv_roundtrip(x, c); }); }
  void scale(const Tensor& x, float a) override { timed("scale", [&] { in_->scale(x, a); }); }
  void gather_rows(const Tensor& x, const Tensor& r, const Tensor& o) override {
    timed("gather_rows", [&] { in_->gather_rows(x, r, o); });
  }
  void hc_pre(const Tensor& X, const HcParams& p, const Tensor& y, const Tensor& post, const Tensor& comb,
              bool bf16_out = false) override {
    timed("hc_pre", [&] { in_->hc_pre(X, p, y, post, comb, bf16_out); });
  }
  void hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc,
               const Tensor& Xout, bool bf16_out = false) override {
    timed("hc_post", [&] { in_->hc_post(y, X, post, comb, hc, Xout, bf16_out); });
  }
  void hc_head(const Tensor& X, const HcParams& p, const Tensor& y) override {
    timed("hc_head", [&] { in_->hc_head(X, p, y); });
  }
  void window_store(const Tensor& kv, const BatchMeta& m, const SnapshotList& s, const KvLayerView& v) override {
    timed("window_store", [&] { in_->window_store(kv, m, s, v); });
  }
  void store_entries(const Tensor& src, const EntryList& e, const BatchMeta& m, const KvLayerView& v, bool idx) override {
    timed("store_entries", [&] { in_->store_entries(src, e, m, v, idx); });
  }
  void arena_copy(const Tensor& arena, const Tensor& copies, int64_t n) override {
    timed("arena_copy", [&] { in_->arena_copy(arena, copies, n); });
  }
  void attention(const AttentionArgs& a) override {
    timed(std::string("attention/ratio") + std::to_string(a.view.layer.ratio), [&] { in_->attention(a); });
  }
  void index_topk(const IndexTopkArgs& a) override { timed("index_topk", [&] { in_->index_topk(a); }); }
  int64_t index_scratch_cols(int64_t max_entries, int64_t k) const override {
    return in_->index_scratch_cols(max_entries, k);
  }
  uint64_t host_scratch_bytes(const KvArenaShape& shape, int64_t max_context, int64_t max_rows,
                              int64_t topk) const override {
    return in_->host_scratch_bytes(shape, max_context, max_rows, topk);
  }
  void compress(const CompressArgs& a) override {
    timed(std::string("compress/ratio") + std::to_string(a.ratio), [&] { in_->compress(a); });
  }
  void route(const RouteArgs& a) override { timed("route", [&] { in_->route(a); }); }
  void moe(const MoeArgs& a) override { timed("moe", [&] { in_->moe(a); }); }

 private:
  template <typename Fn>
  void timed(const std::string& op, Fn&& fn) {
    if (!enabled_) {
      fn();
      counters_ = in_->counters();
      return;
    }
    in_->synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    in_->synchronize();
    OpTime& t = times_[op];
    ++t.calls;
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    counters_ = in_->counters();
  }
  std::unique_ptr<Backend> in_;
  std::map<std::string, OpTime> times_;
  bool enabled_ = true;
};

}  // namespace dsv4
