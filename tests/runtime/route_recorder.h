// Test tool: a backend that forwards every call to another and, after each route op, downloads the experts it
// chose, so a test can count tokens per (layer, expert) by brute force: one read per layer, which the model
// itself never does.
#pragma once
#include <memory>
#include <vector>

#include "kernels/backend.h"

namespace dsv4::test {

class RouteRecorder final : public Backend {
 public:
  explicit RouteRecorder(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {}
  // Every route call's output ([M * k] expert ids), in call order.
  std::vector<std::vector<int32_t>> routes;

  std::string name() const override { return in_->name(); }
  std::unique_ptr<Buffer> alloc(size_t b, BufferUsage u) override { return in_->alloc(b, u); }
  std::unique_ptr<Buffer> import_host(const void* p, size_t b, BufferUsage u) override {
    return in_->import_host(p, b, u);
  }
  void upload(const Tensor& d, const void* s, size_t b, int64_t o) override { fwd([&] { in_->upload(d, s, b, o); }); }
  void download(void* d, const Tensor& s, size_t b, int64_t o) override { fwd([&] { in_->download(d, s, b, o); }); }
  void fill(const Tensor& d, uint8_t b) override { fwd([&] { in_->fill(d, b); }); }
  void synchronize() override { in_->synchronize(); }
  MemoryInfo memory_info() const override { return in_->memory_info(); }
  void embed(const Tensor& t, const Tensor& tab, int hc, const Tensor& X) override {
    fwd([&] { in_->embed(t, tab, hc, X); });
  }
  void linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) override {
    fwd([&] { in_->linear(x, w, y, o); });
  }
  void rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y, bool bf16_out = false) override {
    fwd([&] { in_->rms_norm(x, D, w, eps, y, bf16_out); });
  }
  void rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& f, bool inv, bool bf16_out = false) override {
    fwd([&] { in_->rope(x, H, hd, pos, f, inv, bf16_out); });
  }
  void round_bf16(const Tensor& x) override { fwd([&] { in_->round_bf16(x); }); }
  void fp8_roundtrip(const Tensor& x, int64_t r, int64_t p, int64_t b) override {
    fwd([&] { in_->fp8_roundtrip(x, r, p, b); });
  }
  void hadamard_fp4(const Tensor& x, int64_t d) override { fwd([&] { in_->hadamard_fp4(x, d); }); }
  void kv_roundtrip(const Tensor& x, const KvCodec& c) override { fwd([&] { in_->kv_roundtrip(x, c); }); }
  void scale(const Tensor& x, float a) override { fwd([&] { in_->scale(x, a); }); }
  void gather_rows(const Tensor& x, const Tensor& r, const Tensor& o) override { fwd([&] { in_->gather_rows(x, r, o); }); }
  void hc_pre(const Tensor& X, const HcParams& p, const Tensor& y, const Tensor& post, const Tensor& comb,
              bool bf16_out = false) override {
    fwd([&] { in_->hc_pre(X, p, y, post, comb, bf16_out); });
  }
  void hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc,
               const Tensor& Xo, bool bf16_out = false) override {
    fwd([&] { in_->hc_post(y, X, post, comb, hc, Xo, bf16_out); });
  }
  void hc_head(const Tensor& X, const HcParams& p, const Tensor& y) override { fwd([&] { in_->hc_head(X, p, y); }); }
  void window_store(const Tensor& kv, const BatchMeta& m, const SnapshotList& s, const KvLayerView& v) override {
    fwd([&] { in_->window_store(kv, m, s, v); });
  }
  void store_entries(const Tensor& s, const EntryList& e, const BatchMeta& m, const KvLayerView& v, bool i) override {
    fwd([&] { in_->store_entries(s, e, m, v, i); });
  }
  void arena_copy(const Tensor& a, const Tensor& c, int64_t n) override { fwd([&] { in_->arena_copy(a, c, n); }); }
  void attention(const AttentionArgs& a) override { fwd([&] { in_->attention(a); }); }
  void index_topk(const IndexTopkArgs& a) override { fwd([&] { in_->index_topk(a); }); }
  void compress(const CompressArgs& a) override { fwd([&] { in_->compress(a); }); }
  void route(const RouteArgs& a) override {
    fwd([&] { in_->route(a); });
    std::vector<int32_t> ids(size_t(a.experts.numel()));
    in_->download(ids.data(), a.experts, ids.size() * 4);
    routes.push_back(std::move(ids));
  }
  void moe(const MoeArgs& a) override { fwd([&] { in_->moe(a); }); }

 private:
  template <class F>
  void fwd(F&& f) {
    f();
    counters_ = in_->counters();
  }
  std::unique_ptr<Backend> in_;
};

}  // namespace dsv4::test
