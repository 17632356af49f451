// Quick CUDA check: every op once on small inputs, CUDA against the CPU backend (the thorough conformance test is
// backend_ops_test). Shapes are chosen so each linear path runs (GEMV at M <= 16, FP8 tensor cores with act_fp8
// at M > 16, SIMT tiles, the per-output fallback). Skips with the reason when there is no CUDA device.
#include <gtest/gtest.h>

#if DSV4_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/backend.h"

namespace dsv4 {
namespace {

class CudaSmoke : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    gpu = make_cuda_backend(0, &why);
    if (!gpu) GTEST_SKIP() << "no CUDA backend: " << why;
    cpu = make_cpu_backend();
  }
  struct T2 {
    Tensor c, g;
  };
  template <typename V>
  T2 up(const std::vector<V>& v, DType dt, std::initializer_list<int64_t> shape) {
    const size_t bytes = v.size() * sizeof(V);
    bufs.push_back(cpu->alloc(bytes ? bytes : 1, BufferUsage::Workspace));
    Tensor c(bufs.back().get(), 0, dt, shape);
    bufs.push_back(gpu->alloc(bytes ? bytes : 1, BufferUsage::Workspace));
    Tensor g(bufs.back().get(), 0, dt, shape);
    EXPECT_EQ(c.nbytes(), int64_t(bytes));
    if (bytes) {
      cpu->upload(c, v.data(), bytes);
      gpu->upload(g, v.data(), bytes);
    }
    return {c, g};
  }
  T2 zeros(DType dt, std::initializer_list<int64_t> shape) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return up(std::vector<uint8_t>(size_t(n * int64_t(dtype_size(dt)))), dt, shape);
  }
  template <typename V>
  std::vector<V> down(Backend& be, const Tensor& t) {
    std::vector<V> v(size_t(t.nbytes()) / sizeof(V));
    be.download(v.data(), t, size_t(t.nbytes()));
    return v;
  }
  void expect_close(const T2& t, double tol, const char* what) {
    auto a = down<float>(*cpu, t.c), b = down<float>(*gpu, t.g);
    double scale = 0;
    for (float v : a) scale = std::max(scale, double(std::fabs(v)));
    size_t bad = 0;
    for (size_t i = 0; i < a.size(); ++i)
      if (!(std::fabs(double(a[i]) - b[i]) <= tol * std::max(scale, 1e-30))) ++bad;
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << a.size() << " values differ beyond " << tol;
  }
  template <typename V>
  void expect_equal(const T2& t, const char* what) {
    auto a = down<V>(*cpu, t.c), b = down<V>(*gpu, t.g);
    size_t bad = 0;
    for (size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], sizeof(V)) != 0;
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << a.size() << " differ";
  }
  std::vector<float> rnd(size_t n, float s = 1.f) {
    std::normal_distribution<float> d(0.f, s);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
  }
  std::vector<uint8_t> codes(size_t n, bool fp4) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) {
      b = uint8_t(rng());
      if (!fp4 && (b & 0x7f) == 0x7f) b ^= 1;
    }
    return v;
  }
  // A weight of format f on both backends.
  struct W2 {
    LinearWeight c, g;
  };
  W2 weight(WeightFormat f, int64_t out, int64_t in, bool f32_scale = false) {
    W2 w;
    w.c.fmt = w.g.fmt = f;
    w.c.out = w.g.out = out;
    w.c.in = w.g.in = in;
    T2 d, s;
    if (f == WeightFormat::F32) {
      d = up(rnd(size_t(out * in), 0.1f), DType::F32, {out, in});
    } else if (f == WeightFormat::BF16) {
      std::vector<uint16_t> h(size_t(out * in));
      for (auto& x : h) x = f32_to_bf16(rnd(1, 0.1f)[0]);
      d = up(h, DType::BF16, {out, in});
    } else if (f == WeightFormat::FP8Block) {
      d = up(codes(size_t(out * in), false), DType::U8, {out, in});
      const int64_t tr = (out + 127) / 128, tc = (in + 127) / 128;
      if (f32_scale) {
        s = up(rnd(size_t(tr * tc), 0.01f), DType::F32, {tr, tc});
      } else {
        std::vector<uint8_t> e(size_t(tr * tc));
        for (auto& b : e) b = uint8_t(118 + rng() % 8);
        s = up(e, DType::U8, {tr, tc});
      }
      w.c.scale_cols = w.g.scale_cols = tc;
    } else {
      d = up(codes(size_t(out * in / 2), true), DType::U8, {out, in / 2});
      std::vector<uint8_t> e(size_t(out * in / 32));
      for (auto& b : e) b = uint8_t(120 + rng() % 8);
      s = up(e, DType::U8, {out, in / 32});
      w.c.scale_cols = w.g.scale_cols = in / 32;
    }
    w.c.data = d.c;
    w.g.data = d.g;
    w.c.scale = s.c;
    w.g.scale = s.g;
    return w;
  }

  std::unique_ptr<Backend> cpu, gpu;
  std::vector<std::unique_ptr<Buffer>> bufs;
  std::mt19937 rng{7};
};

TEST_F(CudaSmoke, Linear) {
  struct Case {
    WeightFormat f;
    int64_t M, out, in;
    bool act_fp8, out_bf16, f32_scale;
    int groups;
  };
  const Case cases[] = {
      {WeightFormat::F32, 3, 96, 256, false, false, false, 1},     // GEMV f32
      {WeightFormat::BF16, 5, 64, 512, false, true, false, 1},     // GEMV bf16, bf16 output
      {WeightFormat::FP8Block, 1, 256, 1024, true, true, false, 1},  // GEMV fp8, split-K
      {WeightFormat::FP8Block, 16, 200, 384, false, false, true, 1},  // GEMV fp8 f32 scales, partial tiles
      {WeightFormat::FP4Group32, 7, 128, 512, true, false, false, 1},  // GEMV fp4
      {WeightFormat::FP8Block, 40, 256, 512, true, true, false, 1},  // FP8 tensor cores
      {WeightFormat::FP8Block, 70, 256, 256, true, false, false, 2},  // tensor cores, grouped
      {WeightFormat::FP4Group32, 33, 96, 256, true, false, false, 1},  // SIMT tiles
      {WeightFormat::BF16, 20, 128, 128, false, false, false, 2},    // SIMT, grouped
      {WeightFormat::F32, 2, 48, 36, false, false, false, 3},        // per-output fallback
  };
  for (const Case& k : cases) {
    W2 w = weight(k.f, k.out, k.in, k.f32_scale);
    T2 x = up(rnd(size_t(k.M * k.groups * k.in)), DType::F32, {k.M, k.groups * k.in});
    T2 y = zeros(DType::F32, {k.M, k.out});
    LinearOpts o;
    o.act_fp8 = k.act_fp8;
    o.out_bf16 = k.out_bf16;
    o.groups = k.groups;
    if (k.groups > 1) {
      w.c.out = w.g.out = k.out;  // groups split the output rows
    }
    cpu->linear(x.c, w.c, y.c, o);
    gpu->linear(x.g, w.g, y.g, o);
    // bf16 outputs may round the other way when the fp32 sums differ in the last bit: one bf16 ulp.
    expect_close(y, k.out_bf16 ? 8e-3 : 2e-4, weight_format_name(k.f));
  }
}

TEST_F(CudaSmoke, RowOps) {
  const int64_t M = 5, D = 320, H = 3, hd = 64;
  T2 x = up(rnd(size_t(M * D)), DType::F32, {M, D}), w = up(rnd(size_t(D)), DType::F32, {D});
  cpu->rms_norm(x.c, D, w.c, 1e-6f, x.c);
  gpu->rms_norm(x.g, D, w.g, 1e-6f, x.g);
  expect_close(x, 1e-5, "rms_norm");

  T2 q = up(rnd(size_t(M * H * hd)), DType::F32, {M, H, hd});
  std::vector<int32_t> pos{0, 1, 17, 1000, 65535};
  std::vector<double> fr(16);
  for (int i = 0; i < 16; ++i) fr[size_t(i)] = std::pow(10000.0, -2.0 * i / 32);
  T2 p = up(pos, DType::I32, {M}), f = up(fr, DType::F64, {16});
  for (bool inv : {false, true}) {
    cpu->rope(q.c, H, hd, p.c, f.c, inv);
    gpu->rope(q.g, H, hd, p.g, f.g, inv);
  }
  expect_close(q, 1e-6, "rope");

  for (int op = 0; op < 4; ++op) {
    T2 v = up(rnd(size_t(M * 256), 3.f), DType::F32, {M, 256});
    if (op == 0) {
      cpu->round_bf16(v.c);
      gpu->round_bf16(v.g);
    } else if (op == 1) {
      cpu->fp8_roundtrip(v.c, 256, 200, 64);
      gpu->fp8_roundtrip(v.g, 256, 200, 64);
    } else if (op == 2) {
      cpu->hadamard_fp4(v.c, 128);
      gpu->hadamard_fp4(v.g, 128);
    } else {
      cpu->scale(v.c, 0.37f);
      gpu->scale(v.g, 0.37f);
    }
    expect_equal<uint32_t>(v, "rounding op");
  }
  for (KvCodec c : {KvCodec{KvDtype::F32, 96, 16, false}, KvCodec{KvDtype::BF16, 96, 16, false},
                    KvCodec{KvDtype::FP8, 96, 16, false}, KvCodec{KvDtype::FP8, 64, 0, true}}) {
    T2 v = up(rnd(size_t(4 * c.dim), 2.f), DType::F32, {4, c.dim});
    cpu->kv_roundtrip(v.c, c);
    gpu->kv_roundtrip(v.g, c);
    expect_equal<uint32_t>(v, "kv_roundtrip");
  }
  T2 tab = up(rnd(size_t(10 * 64)), DType::F32, {10, 64}), rows = up(std::vector<int32_t>{3, 0, 9, 3}, DType::I32, {4});
  T2 g = zeros(DType::F32, {4, 64});
  cpu->gather_rows(tab.c, rows.c, g.c);
  gpu->gather_rows(tab.g, rows.g, g.g);
  expect_equal<uint32_t>(g, "gather_rows");
  std::vector<uint16_t> eb(size_t(10 * 64));
  for (auto& h : eb) h = f32_to_bf16(rnd(1)[0]);
  T2 etab = up(eb, DType::BF16, {10, 64}), toks = up(std::vector<int32_t>{1, 9, 0}, DType::I32, {3}),
     X = zeros(DType::F32, {3, 4, 64});
  cpu->embed(toks.c, etab.c, 4, X.c);
  gpu->embed(toks.g, etab.g, 4, X.g);
  expect_equal<uint32_t>(X, "embed");
}

TEST_F(CudaSmoke, HyperConnections) {
  const int hc = 4, D = 256;
  const int64_t M = 3, flat = hc * D;
  T2 X = up(rnd(size_t(M * flat)), DType::F32, {M, hc, D});
  HcParams pc, pg;
  T2 fn = up(rnd(size_t(24 * flat), 0.02f), DType::F32, {24, flat}), base = up(rnd(24, 0.5f), DType::F32, {24}),
     sc = up(std::vector<float>{0.7f, 1.1f, 0.9f}, DType::F32, {3});
  pc.fn = fn.c, pc.base = base.c, pc.scale = sc.c, pc.D = D;
  pg.fn = fn.g, pg.base = base.g, pg.scale = sc.g, pg.D = D;
  T2 y = zeros(DType::F32, {M, D}), post = zeros(DType::F32, {M, hc}), comb = zeros(DType::F32, {M, hc, hc});
  cpu->hc_pre(X.c, pc, y.c, post.c, comb.c);
  gpu->hc_pre(X.g, pg, y.g, post.g, comb.g);
  expect_close(y, 1e-4, "hc_pre y");
  expect_close(post, 1e-4, "hc_pre post");
  expect_close(comb, 1e-4, "hc_pre comb");
  T2 Xo = zeros(DType::F32, {M, hc, D});
  cpu->hc_post(y.c, X.c, post.c, comb.c, hc, Xo.c);
  gpu->hc_post(y.g, X.g, post.g, comb.g, hc, Xo.g);
  expect_close(Xo, 1e-4, "hc_post");
  T2 fh = up(rnd(size_t(4 * flat), 0.02f), DType::F32, {4, flat}), bh = up(rnd(4, 0.5f), DType::F32, {4}),
     sh = up(std::vector<float>{0.8f}, DType::F32, {1});
  pc.fn = fh.c, pc.base = bh.c, pc.scale = sh.c;
  pg.fn = fh.g, pg.base = bh.g, pg.scale = sh.g;
  T2 yh = zeros(DType::F32, {M, D});
  cpu->hc_head(X.c, pc, yh.c);
  gpu->hc_head(X.g, pg, yh.g);
  expect_close(yh, 1e-4, "hc_head");
}

TEST_F(CudaSmoke, RouteAndMoe) {
  const int64_t M = 6, E = 16, K = 3, D = 256, I = 128;
  T2 lg = up(rnd(size_t(M * E)), DType::F32, {M, E}), bias = up(rnd(size_t(E), 0.1f), DType::F32, {E});
  T2 ex = zeros(DType::I32, {M, K}), wt = zeros(DType::F32, {M, K});
  RouteArgs rc, rg;
  rc.logits = lg.c, rc.bias = bias.c, rc.experts = ex.c, rc.weights = wt.c, rc.k = int(K), rc.route_scale = 1.5f;
  rg = rc;
  rg.logits = lg.g, rg.bias = bias.g, rg.experts = ex.g, rg.weights = wt.g;
  cpu->route(rc);
  gpu->route(rg);
  expect_equal<int32_t>(ex, "route experts");
  expect_close(wt, 1e-5, "route weights");

  std::vector<ExpertWeights> rcpu(static_cast<size_t>(E)), rgpu(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    W2 a = weight(WeightFormat::FP4Group32, I, D), b = weight(WeightFormat::FP4Group32, D, I),
       c = weight(WeightFormat::FP4Group32, I, D);
    rcpu[size_t(e)] = {a.c, b.c, c.c};
    rgpu[size_t(e)] = {a.g, b.g, c.g};
  }
  W2 s1 = weight(WeightFormat::FP8Block, I, D), s2 = weight(WeightFormat::FP8Block, D, I),
     s3 = weight(WeightFormat::FP8Block, I, D);
  ExpertWeights shc{s1.c, s2.c, s3.c}, shg{s1.g, s2.g, s3.g};
  T2 x = up(rnd(size_t(M * D)), DType::F32, {M, D}), out = zeros(DType::F32, {M, D});
  T2 scratch = zeros(DType::U8, {moe_scratch_bytes(M, K, D, I)});
  MoeArgs mc;
  mc.x = x.c, mc.experts = ex.c, mc.weights = wt.c, mc.routed = &rcpu, mc.shared = &shc, mc.inter = I;
  mc.swiglu_limit = 10.f, mc.lin.act_fp8 = true, mc.lin.out_bf16 = true, mc.round_hidden = true, mc.round_out = true;
  mc.scratch = scratch.c, mc.out = out.c;
  MoeArgs mg = mc;
  mg.x = x.g, mg.experts = ex.g, mg.weights = wt.g, mg.routed = &rgpu, mg.shared = &shg, mg.scratch = scratch.g,
  mg.out = out.g;
  cpu->moe(mc);
  gpu->moe(mg);
  expect_close(out, 2e-2, "moe (bf16 roundings)");
}

// One step of one sequence from position 0 through the KV ops of a ratio-4 layer: window ring and block-end
// snapshot, compressor (pool, snapshot, rings), entry stores, indexer top-k, attention, arena copy.
TEST_F(CudaSmoke, KvLayerStep) {
  KvLayerView v;
  KvArenaShape& s = v.shape;
  s.block_tokens = 16;
  s.window = 8;
  s.with_tail = true;
  s.main = KvCodec{KvDtype::FP8, 64, 16, false};
  s.index = KvCodec{KvDtype::FP8, 32, 0, true};
  s.main_d = 64;
  s.index_d = 32;
  const int64_t mb = s.main.bytes(), ib = s.index.bytes(), per = 4;
  KvLayerOffsets& o = v.layer;
  o.ratio = 4;
  o.comp_off = 0;
  o.idx_off = per * mb;
  o.tail_off = o.idx_off + per * ib;
  o.cstate_off = (o.tail_off + s.window * mb + 15) / 16 * 16;
  o.istate_off = o.cstate_off + 4 * KvArenaShape::ring_token_floats(4, 64) * 4;
  s.block_bytes = o.istate_off + 4 * KvArenaShape::ring_token_floats(4, 32) * 4;
  s.n_blocks = 3;
  s.slots_offset = s.n_blocks * s.block_bytes;
  o.ring_off = 0;
  o.cring_off = s.window * mb;
  o.iring_off = o.cring_off + 8 * KvArenaShape::ring_token_floats(4, 64) * 4;
  s.slot_bytes = o.iring_off + 8 * KvArenaShape::ring_token_floats(4, 32) * 4;
  s.n_slots = 2;
  T2 arena = zeros(DType::U8, {s.arena_bytes()});
  const int64_t M = 18;  // positions 0..17: entries 0..3 complete, one block end (16)
  std::vector<int32_t> pos(M), ri(M, 0);
  for (int64_t m = 0; m < M; ++m) pos[size_t(m)] = int32_t(m);
  T2 tpos = up(pos, DType::I32, {M}), tri = up(ri, DType::I32, {M}),
     items = up(std::vector<int32_t>{0, 0, int32_t(M), 1}, DType::I32, {1, 4}),
     table = up(std::vector<int32_t>{2, 0}, DType::I32, {1, 2});
  auto meta = [&](bool g) {
    BatchMeta b;
    b.M = M, b.n_items = 1, b.max_blocks = 2;
    b.pos = g ? tpos.g : tpos.c, b.row_item = g ? tri.g : tri.c, b.items = g ? items.g : items.c;
    b.block_table = g ? table.g : table.c;
    return b;
  };
  BatchMeta bc = meta(false), bg = meta(true);
  T2 sn_item = up(std::vector<int32_t>{0}, DType::I32, {1}), sn_end = up(std::vector<int32_t>{16}, DType::I32, {1});
  SnapshotList sc{1, sn_item.c, sn_end.c}, sg{1, sn_item.g, sn_end.g};
  auto view = [&](bool g) {
    KvLayerView w = v;
    w.arena = g ? arena.g : arena.c;
    return w;
  };
  T2 kv = up(rnd(size_t(M * 64)), DType::F32, {M, 64});
  cpu->window_store(kv.c, bc, sc, view(false));
  gpu->window_store(kv.g, bg, sg, view(true));
  expect_equal<uint8_t>(arena, "window_store");

  // Compressors (main d = 64, indexer d = 32) on entries 0..3.
  const int64_t n = 4;
  T2 er = up(std::vector<int32_t>{3, 7, 11, 15}, DType::I32, {n}), ei = up(std::vector<int32_t>(4, 0), DType::I32, {n}),
     ej = up(std::vector<int32_t>{0, 1, 2, 3}, DType::I32, {n}), ep = up(std::vector<int32_t>{0, 4, 8, 12}, DType::I32, {n});
  EntryList lc{n, er.c, ei.c, ej.c, ep.c}, lg{n, er.g, ei.g, ej.g, ep.g};
  for (bool indexer : {false, true}) {
    const int d = indexer ? 32 : 64;
    T2 u = up(rnd(size_t(M * 2 * d)), DType::F32, {M, 2 * d}), g = up(rnd(size_t(M * 2 * d)), DType::F32, {M, 2 * d}),
       ape = up(rnd(size_t(4 * 2 * d)), DType::F32, {4, 2 * d}), out = zeros(DType::F32, {n, d});
    CompressArgs cc;
    cc.ratio = 4, cc.coff = 2, cc.d = d, cc.indexer = indexer, cc.u = u.c, cc.g = g.c, cc.ape = ape.c, cc.meta = &bc;
    cc.entries = &lc, cc.snapshots = &sc, cc.view = view(false), cc.out = out.c;
    CompressArgs cg = cc;
    cg.u = u.g, cg.g = g.g, cg.ape = ape.g, cg.meta = &bg, cg.entries = &lg, cg.snapshots = &sg, cg.view = view(true);
    cg.out = out.g;
    cpu->compress(cc);
    gpu->compress(cg);
    expect_close(out, 1e-4, "compress");
    // Store the CPU's entries on both, so the arenas stay identical.
    auto host = down<float>(*cpu, out.c);
    T2 same = up(host, DType::F32, {n, d});
    cpu->store_entries(same.c, lc, bc, view(false), indexer);
    gpu->store_entries(same.g, lg, bg, view(true), indexer);
  }
  expect_equal<uint8_t>(arena, "compress rings/snapshots + store_entries");

  const int64_t IH = 4, ID = 32, k = 3;
  T2 iq = up(rnd(size_t(M * IH * ID)), DType::F32, {M, IH, ID}), iw = up(rnd(size_t(M * IH)), DType::F32, {M, IH});
  T2 scr = zeros(DType::F32, {M, 8}), sel = zeros(DType::I32, {M, k});
  IndexTopkArgs tc;
  tc.q = iq.c, tc.w = iw.c, tc.meta = &bc, tc.view = view(false), tc.heads = IH, tc.dim = ID, tc.k = k;
  tc.scratch = scr.c, tc.out = sel.c;
  IndexTopkArgs tg = tc;
  tg.q = iq.g, tg.w = iw.g, tg.meta = &bg, tg.view = view(true), tg.scratch = scr.g, tg.out = sel.g;
  cpu->index_topk(tc);
  gpu->index_topk(tg);
  expect_equal<int32_t>(sel, "index_topk");

  const int64_t H = 4;
  T2 q = up(rnd(size_t(M * H * 64)), DType::F32, {M, H, 64}), sink = up(rnd(size_t(H)), DType::F32, {H}),
     ao = zeros(DType::F32, {M, H, 64});
  AttentionArgs ac;
  ac.q = q.c, ac.kv = kv.c, ac.sink = sink.c, ac.selected = sel.c, ac.meta = &bc, ac.view = view(false), ac.H = H;
  ac.scale = 0.125f, ac.probs_bf16 = true, ac.out = ao.c;
  AttentionArgs ag = ac;
  ag.q = q.g, ag.kv = kv.g, ag.sink = sink.g, ag.selected = sel.g, ag.meta = &bg, ag.view = view(true), ag.out = ao.g;
  cpu->attention(ac);
  gpu->attention(ag);
  expect_close(ao, 1e-3, "attention");

  T2 cp = up(std::vector<int64_t>{0, 2 * s.block_bytes, s.block_bytes}, DType::I64, {1, 3});
  cpu->arena_copy(arena.c, cp.c, 1);
  gpu->arena_copy(arena.g, cp.g, 1);
  expect_equal<uint8_t>(arena, "arena_copy");
}

}  // namespace
}  // namespace dsv4

#else
TEST(CudaSmoke, Skipped) { GTEST_SKIP() << "built without CUDA (nvcc not found at configure time)"; }
#endif
