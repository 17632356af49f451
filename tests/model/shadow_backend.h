// Test tool: a backend that runs every op on a primary backend (the one under test) and on a shadow (the CPU
// reference), each buffer existing on both. After each op it compares the op's outputs and then copies the
// primary's outputs into the shadow, so every op is judged on identical inputs: the first op whose outputs
// differ is the culprit, not merely where a difference became visible.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/backend.h"

namespace dsv4::test {

class ShadowBackend final : public Backend {
 public:
  struct Stat {
    uint64_t calls = 0;
    double worst = 0;  // relative L2 (floats) or mismatching share (bytes, ints)
    uint64_t first_bad_call = 0;
  };
  ShadowBackend(std::unique_ptr<Backend> primary, std::unique_ptr<Backend> shadow, double tol)
      : p_(std::move(primary)), s_(std::move(shadow)), tol_(tol) {}
  const std::map<std::string, Stat>& stats() const { return stats_; }
  const std::string& first_divergence() const { return first_; }

  std::string name() const override { return p_->name() + "+shadow"; }
  std::unique_ptr<Buffer> alloc(size_t bytes, BufferUsage usage) override {
    auto b = p_->alloc(bytes, usage);
    twin_[b.get()] = s_->alloc(bytes, usage);
    return b;
  }
  std::unique_ptr<Buffer> import_host(const void*, size_t, BufferUsage) override { return nullptr; }
  void upload(const Tensor& d, const void* src, size_t n, int64_t off) override {
    p_->upload(d, src, n, off);
    s_->upload(tw(d), src, n, off);
    counters_ = p_->counters();
  }
  void download(void* dst, const Tensor& src, size_t n, int64_t off) override {
    p_->download(dst, src, n, off);
    counters_ = p_->counters();
  }
  void fill(const Tensor& d, uint8_t b) override {
    p_->fill(d, b);
    s_->fill(tw(d), b);
  }
  void synchronize() override { p_->synchronize(); }
  MemoryInfo memory_info() const override { return p_->memory_info(); }

  void embed(const Tensor& t, const Tensor& table, int hc, const Tensor& X) override {
    both("embed", [&](Backend& b, bool s) { b.embed(T(t, s), T(table, s), hc, T(X, s)); }, {X});
  }
  void linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) override {
    both(std::string("linear/") + weight_format_name(w.fmt) + (o.act_fp8 ? "/act_fp8" : "") + (o.out_bf16 ? "/out_bf16" : ""),
         [&](Backend& b, bool s) { b.linear(T(x, s), W(w, s), T(y, s), o); }, {y});
  }
  void rms_norm(const Tensor& x, int64_t D, const Tensor& w, float eps, const Tensor& y, bool bf16_out = false) override {
    both("rms_norm", [&](Backend& b, bool s) { b.rms_norm(T(x, s), D, T(w, s), eps, T(y, s), bf16_out); }, {y});
  }
  void rope(const Tensor& x, int64_t H, int64_t hd, const Tensor& pos, const Tensor& f, bool inv, bool bf16_out = false) override {
    both("rope", [&](Backend& b, bool s) { b.rope(T(x, s), H, hd, T(pos, s), T(f, s), inv, bf16_out); }, {x});
  }
  void round_bf16(const Tensor& x) override { both("round_bf16", [&](Backend& b, bool s) { b.round_bf16(T(x, s)); }, {x}); }
  void fp8_roundtrip(const Tensor& x, int64_t row, int64_t prefix, int64_t block) override {
    both("fp8_roundtrip", [&](Backend& b, bool s) { b.fp8_roundtrip(T(x, s), row, prefix, block); }, {x});
  }
  void hadamard_fp4(const Tensor& x, int64_t dim) override {
    both("hadamard_fp4", [&](Backend& b, bool s) { b.hadamard_fp4(T(x, s), dim); }, {x});
  }
  void kv_roundtrip(const Tensor& x, const KvCodec& c) override {
    both("kv_roundtrip", [&](Backend& b, bool s) { b.kv_roundtrip(T(x, s), c); }, {x});
  }
  void scale(const Tensor& x, float a) override { both("scale", [&](Backend& b, bool s) { b.scale(T(x, s), a); }, {x}); }
  void gather_rows(const Tensor& x, const Tensor& r, const Tensor& o) override {
    both("gather_rows", [&](Backend& b, bool s) { b.gather_rows(T(x, s), T(r, s), T(o, s)); }, {o});
  }
  void hc_pre(const Tensor& X, const HcParams& p, const Tensor& y, const Tensor& post, const Tensor& comb,
              bool bf16_out = false) override {
    both("hc_pre", [&](Backend& b, bool s) { b.hc_pre(T(X, s), H(p, s), T(y, s), T(post, s), T(comb, s), bf16_out); }, {y, post, comb});
  }
  void hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc, const Tensor& Xo,
               bool bf16_out = false) override {
    both("hc_post", [&](Backend& b, bool s) { b.hc_post(T(y, s), T(X, s), T(post, s), T(comb, s), hc, T(Xo, s), bf16_out); }, {Xo});
  }
  void hc_head(const Tensor& X, const HcParams& p, const Tensor& y) override {
    both("hc_head", [&](Backend& b, bool s) { b.hc_head(T(X, s), H(p, s), T(y, s)); }, {y});
  }
  void window_store(const Tensor& kv, const BatchMeta& m, const SnapshotList& sn, const KvLayerView& v) override {
    both("window_store", [&](Backend& b, bool s) {
      BatchMeta mm = M(m, s);
      b.window_store(T(kv, s), mm, S(sn, s), V(v, s));
    }, {v.arena});
  }
  void store_entries(const Tensor& src, const EntryList& e, const BatchMeta& m, const KvLayerView& v, bool idx) override {
    both("store_entries", [&](Backend& b, bool s) {
      BatchMeta mm = M(m, s);
      b.store_entries(T(src, s), E(e, s), mm, V(v, s), idx);
    }, {v.arena});
  }
  void arena_copy(const Tensor& arena, const Tensor& copies, int64_t n) override {
    both("arena_copy", [&](Backend& b, bool s) { b.arena_copy(T(arena, s), T(copies, s), n); }, {arena});
  }
  void attention(const AttentionArgs& a) override {
    both("attention/ratio" + std::to_string(a.view.layer.ratio), [&](Backend& b, bool s) {
      AttentionArgs x = a;
      BatchMeta mm = M(*a.meta, s);
      x.q = T(a.q, s), x.kv = T(a.kv, s), x.sink = T(a.sink, s), x.selected = T(a.selected, s);
      x.meta = &mm, x.view = V(a.view, s), x.out = T(a.out, s);
      b.attention(x);
    }, {a.out});
  }
  void index_topk(const IndexTopkArgs& a) override {
    both("index_topk", [&](Backend& b, bool s) {
      IndexTopkArgs x = a;
      BatchMeta mm = M(*a.meta, s);
      x.q = T(a.q, s), x.w = T(a.w, s), x.meta = &mm, x.view = V(a.view, s), x.scratch = T(a.scratch, s), x.out = T(a.out, s);
      b.index_topk(x);
    }, {a.out});
  }
  void compress(const CompressArgs& a) override {
    both("compress/ratio" + std::to_string(a.ratio), [&](Backend& b, bool s) {
      CompressArgs x = a;
      BatchMeta mm = M(*a.meta, s);
      EntryList ee = E(*a.entries, s);
      SnapshotList ss = S(*a.snapshots, s);
      x.u = T(a.u, s), x.g = T(a.g, s), x.ape = T(a.ape, s), x.meta = &mm, x.entries = &ee, x.snapshots = &ss;
      x.view = V(a.view, s), x.out = T(a.out, s);
      b.compress(x);
    }, {a.out, a.view.arena});
  }
  void route(const RouteArgs& a) override {
    both("route", [&](Backend& b, bool s) {
      RouteArgs x = a;
      x.logits = T(a.logits, s), x.bias = T(a.bias, s), x.tid2eid = T(a.tid2eid, s), x.tokens = T(a.tokens, s);
      x.experts = T(a.experts, s), x.weights = T(a.weights, s);
      b.route(x);
    }, {a.experts, a.weights});
  }
  void moe(const MoeArgs& a) override {
    both("moe", [&](Backend& b, bool s) {
      MoeArgs x = a;
      std::vector<ExpertWeights> routed;
      ExpertWeights shared;
      if (s) {
        for (auto& e : *a.routed) routed.push_back({W(e.w1, true), W(e.w2, true), W(e.w3, true)});
        shared = {W(a.shared->w1, true), W(a.shared->w2, true), W(a.shared->w3, true)};
        x.routed = &routed;
        x.shared = &shared;
      }
      x.x = T(a.x, s), x.experts = T(a.experts, s), x.weights = T(a.weights, s), x.scratch = T(a.scratch, s), x.out = T(a.out, s);
      b.moe(x);
    }, {a.out});
  }

 private:
  Tensor tw(const Tensor& t) const {
    if (!t.valid()) return t;
    Tensor r = t;
    r.buf = twin_.at(t.buf).get();
    return r;
  }
  Tensor T(const Tensor& t, bool s) const { return s ? tw(t) : t; }
  LinearWeight W(const LinearWeight& w, bool s) const {
    LinearWeight r = w;
    r.data = T(w.data, s);
    r.scale = T(w.scale, s);
    return r;
  }
  HcParams H(const HcParams& p, bool s) const {
    HcParams r = p;
    r.fn = T(p.fn, s), r.base = T(p.base, s), r.scale = T(p.scale, s);
    return r;
  }
  BatchMeta M(const BatchMeta& m, bool s) const {
    BatchMeta r = m;
    r.pos = T(m.pos, s), r.row_item = T(m.row_item, s), r.items = T(m.items, s), r.block_table = T(m.block_table, s);
    return r;
  }
  EntryList E(const EntryList& e, bool s) const {
    EntryList r = e;
    r.row = T(e.row, s), r.item = T(e.item, s), r.index = T(e.index, s), r.pos = T(e.pos, s);
    return r;
  }
  SnapshotList S(const SnapshotList& e, bool s) const {
    SnapshotList r = e;
    r.item = T(e.item, s), r.end = T(e.end, s);
    return r;
  }
  KvLayerView V(const KvLayerView& v, bool s) const {
    KvLayerView r = v;
    r.arena = T(v.arena, s);
    return r;
  }

  template <typename Fn>
  void both(const std::string& op, Fn&& fn, std::initializer_list<Tensor> outs) {
    fn(*p_, false);
    fn(*s_, true);
    Stat& st = stats_[op];
    ++st.calls;
    double worst = 0;
    for (const Tensor& t : outs) {
      if (!t.valid() || !t.nbytes()) continue;
      std::vector<uint8_t> a(size_t(t.nbytes())), b(a.size());
      p_->download(a.data(), t, a.size());
      s_->download(b.data(), tw(t), b.size());
      double d = 0;
      if (t.dtype == DType::F32) {
        double num = 0, den = 0;
        const float *x = reinterpret_cast<const float*>(a.data()), *y = reinterpret_cast<const float*>(b.data());
        for (size_t i = 0; i < a.size() / 4; ++i) {
          num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
          den += double(y[i]) * y[i];
        }
        d = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
      } else {
        size_t bad = 0;
        for (size_t i = 0; i < a.size(); ++i) bad += a[i] != b[i];
        d = double(bad) / double(a.size());
      }
      worst = std::max(worst, d);
      if (d > 0) s_->upload(tw(t), a.data(), a.size());  // the next op starts from identical inputs
    }
    if (worst > st.worst) st.worst = worst;
    if (worst > tol_ && !st.first_bad_call) st.first_bad_call = st.calls;
    if (worst > tol_ && first_.empty())
      first_ = op + " (call " + std::to_string(st.calls) + ", difference " + std::to_string(worst) + ")";
    counters_ = p_->counters();
  }

  std::unique_ptr<Backend> p_, s_;
  double tol_;
  std::unordered_map<const Buffer*, std::unique_ptr<Buffer>> twin_;
  std::map<std::string, Stat> stats_;
  std::string first_;
};

}  // namespace dsv4::test
