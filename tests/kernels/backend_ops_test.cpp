// Every backend against the scalar reference (tests/kernels/reference_ops): dense ops. The KV cache ops and MoE
// are in backend_kv_ops_test.cpp. Inputs are random with fixed seeds.
#include <cmath>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "backend_ops_fixture.h"
#include "core/dtype.h"
#include "kernels/quant.h"
#include "kernels/rope_table.h"

using namespace dsv4;
using namespace dsv4::test;

namespace {

std::vector<float> bf16_values(const std::vector<float>& v) {
  std::vector<float> o(v);
  for (auto& x : o) x = round_bf16(x);
  return o;
}

}  // namespace

TEST_P(BackendOps, LinearEveryFormatAndOption) {
  Rng r(1);
  const int64_t M = 3, in = 160, out = 200;  // a partial 128-block of K and of the output tiles
  struct Case {
    WeightFormat fmt;
    bool f32_scale;
  };
  for (Case c : {Case{WeightFormat::F32, false}, Case{WeightFormat::BF16, false}, Case{WeightFormat::FP8Block, false},
                 Case{WeightFormat::FP8Block, true}, Case{WeightFormat::FP4Group32, false}}) {
    auto w = random_weight(r, c.fmt, out, in, c.f32_scale);
    auto x = r.vec(size_t(M * in), -2, 2);
    check_linear_every_option(x, M, w, 1,
                              std::string("linear ") + weight_format_name(c.fmt) + (c.f32_scale ? " f32-scale" : ""));
  }
}

TEST_P(BackendOps, LinearFp8RowSliceInsideATileAndGroups) {
  Rng r(2);
  const int64_t M = 4, in = 256;
  // Rows [64, 264) of a 320-row FP8 weight: the slice starts in the middle of the first 128-row scale tile.
  auto w = random_weight(r, WeightFormat::FP8Block, 320, in);
  LinearWeight lw = upload_weight(w);
  auto x = r.vec(size_t(M * in), -2, 2);
  Tensor xt = up(x, DType::F32, {M, in});
  for (bool act : {false, true}) {
    LinearOpts o;
    o.act_fp8 = act;
    Tensor yt = zeros(DType::F32, {M, 200});
    be->linear(xt, lw.rows(64, 200), yt, o);
    expect_close(down<float>(yt), ref::linear(x, M, w, o, 64, 200), tol("linear"),
                 "fp8 rows(64, 200) act_fp8=" + std::to_string(act));
  }
  // groups = 2: x [M, 2 * in] -> y [M, 320]; each group's activation slice is quantized on its own (give the
  // slices very different magnitudes so a shared scale would differ).
  auto xg = r.vec(size_t(M * 2 * in), -1, 1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = in; k < 2 * in; ++k) xg[size_t(m * 2 * in + k)] *= 300.f;
  for (WeightFormat f : {WeightFormat::FP8Block, WeightFormat::BF16, WeightFormat::FP4Group32}) {
    check_linear_every_option(xg, M, random_weight(r, f, 320, in), 2, std::string("groups=2 ") + weight_format_name(f));
  }
}

// Decode-sized M with a long K and a narrow output: the GPU's GEMV splits K over blocks and the last block of
// each tile sums the splits; every row count template (1, 2, 4, 8, 16 rows).
TEST_P(BackendOps, LinearDecodeSplitK) {
  Rng r(22);
  const int64_t in = 4096, out = 72;
  for (int64_t M : {1, 2, 3, 5, 16})
    for (WeightFormat f : {WeightFormat::FP8Block, WeightFormat::FP4Group32, WeightFormat::BF16}) {
      auto w = random_weight(r, f, out, in);
      auto x = r.vec(size_t(M * in), -2, 2);
      check_linear_every_option(x, M, w, 1, "split-K M=" + std::to_string(M) + " " + weight_format_name(f));
    }
}

// FP8 weights times activations that are bf16 values (LinearOpts::bf16_input, as wo_a in reference numerics): the
// GPU's bf16 tensor-core path at prefill sizes, grouped and not, a partial M tile, a row slice inside a scale tile;
// f32 block scales (not powers of two: the bf16 path would round weight x scale) must give the same sums.
TEST_P(BackendOps, LinearBf16InputOnFp8Weights) {
  Rng r(23);
  for (int64_t M : {97, 200})
    for (int groups : {1, 2}) {
      const int64_t in = 384, out = 256 * groups;
      const bool f32_scale = M == 200 && groups == 1;
      auto w = random_weight(r, WeightFormat::FP8Block, out, in, f32_scale);
      auto x = r.vec(size_t(M * groups * in), -2, 2);
      for (float& v : x) v = round_bf16(v);
      for (bool ob : {false, true}) {
        LinearOpts o;
        o.out_bf16 = ob;
        o.groups = groups;
        o.bf16_input = true;
        LinearWeight lw = upload_weight(w);
        Tensor xt = up(x, DType::F32, {M, groups * in});
        Tensor yt = zeros(DType::F32, {M, out});
        be->linear(xt, lw, yt, o);
        const std::string what = "bf16 input M=" + std::to_string(M) + " groups=" + std::to_string(groups) +
                                 (f32_scale ? " f32 scales" : "") + (ob ? " out_bf16" : "");
        expect_close(down<float>(yt), ref::linear(x, M, w, o), tol("linear"), what, ob ? 0.01 : 0, 1e-2);
        if (groups == 1) {
          Tensor ys = zeros(DType::F32, {M, 136});
          be->linear(xt, lw.rows(64, 136), ys, o);
          expect_close(down<float>(ys), ref::linear(x, M, w, o, 64, 136), tol("linear"), what + " rows(64, 136)",
                       ob ? 0.01 : 0, 1e-2);
        }
      }
    }
}

// Prefill-sized M: the GPU's tensor-core (FP8 x FP8, act_fp8) and tiled paths, not the decode GEMV.
TEST_P(BackendOps, LinearPrefillSizedRows) {
  Rng r(21);
  const int64_t M = 97, in = 384, out = 264;
  for (WeightFormat f : {WeightFormat::FP8Block, WeightFormat::FP4Group32, WeightFormat::BF16}) {
    auto w = random_weight(r, f, out, in);
    auto x = r.vec(size_t(M * in), -2, 2);
    check_linear_every_option(x, M, w, 1, std::string("M=97 ") + weight_format_name(f));
    // A row slice inside a scale tile at prefill size.
    if (f == WeightFormat::FP8Block) {
      LinearWeight lw = upload_weight(w);
      Tensor xt = up(x, DType::F32, {M, in});
      LinearOpts o;
      o.act_fp8 = true;
      Tensor yt = zeros(DType::F32, {M, 136});
      be->linear(xt, lw.rows(64, 136), yt, o);
      expect_close(down<float>(yt), ref::linear(x, M, w, o, 64, 136), tol("linear"), "M=97 fp8 rows(64, 136) act_fp8");
    }
  }
}

TEST_P(BackendOps, RmsNormWithAndWithoutWeightInPlace) {
  Rng r(3);
  const int64_t rows = 7, D = 96;
  auto x = r.vec(size_t(rows * D), -3, 3), w = r.vec(size_t(D), 0.5, 1.5);
  Tensor xt = up(x, DType::F32, {rows, D}), wt = up(w, DType::F32, {D}), yt = zeros(DType::F32, {rows, D});
  be->rms_norm(xt, D, wt, 1e-6f, yt);
  expect_close(down<float>(yt), ref::rms_norm(x, D, w.data(), 1e-6f), tol("rms_norm"), "rms_norm weighted");
  be->rms_norm(xt, D, Tensor(), 1e-6f, xt);  // x == y, no weight (per-head q norm)
  expect_close(down<float>(xt), ref::rms_norm(x, D, nullptr, 1e-6f), tol("rms_norm"), "rms_norm in place");
  // Widths at and past what the CUDA kernel keeps in registers (8 values x 512 threads), in place.
  for (int64_t wide : {int64_t(4096), int64_t(4100)}) {
    auto xw = r.vec(size_t(2 * wide), -3, 3), ww = r.vec(size_t(wide), 0.5, 1.5);
    Tensor xwt = up(xw, DType::F32, {2, wide}), wwt = up(ww, DType::F32, {wide});
    be->rms_norm(xwt, wide, wwt, 1e-6f, xwt);
    expect_close(down<float>(xwt), ref::rms_norm(xw, wide, ww.data(), 1e-6f), tol("rms_norm"),
                 "rms_norm width " + std::to_string(wide));
  }
}

TEST_P(BackendOps, RopeBothDirectionsLargePositions) {
  Rng r(4);
  const int64_t H = 3, hd = 24;  // rotates the last 16 dims
  auto t = RopeTable::make(16, 160000, 65536, 16, 32, 1);
  std::vector<int32_t> pos{0, 1, 127, 65535, 1000003};
  const int64_t M = int64_t(pos.size());
  auto x = r.vec(size_t(M * H * hd));
  Tensor xt = up(x, DType::F32, {M, H, hd}), pt = up(pos, DType::I32, {M}),
         ft = up(t.freqs, DType::F64, {int64_t(t.freqs.size())});
  for (bool inv : {false, true}) {
    be->rope(xt, H, hd, pt, ft, inv);
    ref::rope(x, H, hd, pos, t.freqs, inv);
    expect_close(down<float>(xt), x, tol("rope"), inv ? "rope inverse" : "rope");
  }
  // F32 frequencies: the angle is taken from the float value of each frequency.
  std::vector<float> f32(t.freqs.begin(), t.freqs.end());
  std::vector<double> f32d(f32.begin(), f32.end());
  be->rope(xt, H, hd, pt, up(f32, DType::F32, {int64_t(f32.size())}), false);
  ref::rope(x, H, hd, pos, f32d, false);
  expect_close(down<float>(xt), x, tol("rope"), "rope f32 freqs");
}

TEST_P(BackendOps, RoundingOps) {
  Rng r(5);
  auto x = r.vec(300, -5, 5);
  x[7] = 1e-7f;
  {
    Tensor t = up(x, DType::F32, {300});
    be->round_bf16(t);
    EXPECT_EQ(down<float>(t), bf16_values(x)) << "round_bf16";
  }
  {
    Tensor t = up(x, DType::F32, {15, 20});
    be->fp8_roundtrip(t, 20, 14, 8);  // prefix 14 of every 20: blocks of 8 then a partial block of 6
    auto ref = x;
    ref::fp8_rows(ref, 20, 14, 8);
    EXPECT_EQ(down<float>(t), ref) << "fp8_roundtrip";
  }
  {
    auto h = r.vec(256, -2, 2);
    Tensor t = up(h, DType::F32, {4, 64});
    be->hadamard_fp4(t, 64);
    auto ref = h;
    ref::hadamard_fp4(ref, 64);
    // The transform's sums may differ in the last bit and round to a neighbouring FP4 code on a tie.
    expect_close(down<float>(t), ref, 1e-6, "hadamard_fp4", 0.02, 0.5);
  }
  {
    Tensor t = up(x, DType::F32, {300});
    be->scale(t, -0.375f);
    auto ref = x;
    for (auto& v : ref) v *= -0.375f;
    EXPECT_EQ(down<float>(t), ref) << "scale";
  }
}

TEST_P(BackendOps, KvRoundtripEveryCodec) {
  Rng r(6);
  auto x = r.vec(6 * 64, -3, 3);
  for (KvCodec c : {main_codec(KvDtype::F32, 64, 16), main_codec(KvDtype::BF16, 64, 16),
                    main_codec(KvDtype::FP8, 64, 16), main_codec(KvDtype::FP8, 192, 64), index_codec(KvDtype::FP8, 64),
                    index_codec(KvDtype::BF16, 64)}) {
    auto xc = r.vec(size_t(6 * c.dim), -3, 3);
    Tensor t = up(xc, DType::F32, {6, c.dim});
    be->kv_roundtrip(t, c);
    auto ref = xc;
    ref::kv_roundtrip(ref, c);
    EXPECT_EQ(down<float>(t), ref) << "kv_roundtrip " << kv_dtype_name(c.dtype) << " dim " << c.dim
                                   << (c.index_key ? " index" : "");
  }
}

TEST_P(BackendOps, GatherRowsAndEmbed) {
  Rng r(7);
  const int64_t V = 11, D = 40;
  auto table = r.vec(size_t(V * D));
  std::vector<int32_t> rows{3, 0, 10, 3, 7};
  Tensor tt = up(table, DType::F32, {V, D}), rt = up(rows, DType::I32, {5}), ot = zeros(DType::F32, {5, D});
  be->gather_rows(tt, rt, ot);
  EXPECT_EQ(down<float>(ot), ref::gather_rows(table, D, rows));
  // embed from an f32 and a bf16 table, hc = 4 copies
  Tensor X = zeros(DType::F32, {5, 4, D});
  be->embed(rt, tt, 4, X);
  EXPECT_EQ(down<float>(X), ref::embed(rows, table, D, 4)) << "embed f32";
  std::vector<uint16_t> tb(table.size());
  for (size_t i = 0; i < tb.size(); ++i) tb[i] = f32_to_bf16(table[i]);
  Tensor tbt = up(tb, DType::BF16, {V, D});
  be->embed(rt, tbt, 4, X);
  EXPECT_EQ(down<float>(X), ref::embed(rows, bf16_values(table), D, 4)) << "embed bf16";
}

TEST_P(BackendOps, HyperConnections) {
  // Small rows, and long rows at small M (the CUDA kernel then splits each row's dots unevenly over blocks); from
  // 4 rows CUDA tiles the dots: one partial 64-row tile with k steps of 32 that do not divide the row (5 x 1001),
  // two tiles, the second partial (70 x 333), and a full decode-sized batch at the model's width (16 x 4096).
  for (auto [M, D] : {std::pair<int64_t, int>{3, 48}, {2, 1001}, {1, 4096}, {5, 1001}, {70, 333}, {16, 4096}}) {
    SCOPED_TRACE(fmt::format("M {} D {}", M, D));
    Rng r(8);
    const int hc = 4;
    const int64_t rows = (2 + hc) * hc;
    ref::Hc p;
    p.hc = hc;
    p.D = D;
    // Weights shrink with the row length, as a trained model's do, so the mixing logits stay O(1) and the
    // fp32 dot's rounding (which grows with the length and the summation order) stays inside the tolerance.
    const double fn_range = 0.5 * std::sqrt(192.0 / double(hc * D) > 1 ? 1 : 192.0 / double(hc * D));
    p.fn = r.vec(size_t(rows * hc * D), -fn_range, fn_range);
    p.base = r.vec(size_t(rows), -1, 1);
    p.scale = {0.7f, 1.3f, 0.5f};
    auto X = r.vec(size_t(M * hc * D), -2, 2);
    HcParams hp;
    hp.fn = up(p.fn, DType::F32, {rows, hc * D});
    hp.base = up(p.base, DType::F32, {rows});
    hp.scale = up(p.scale, DType::F32, {3});
    hp.hc = hc;
    hp.D = D;
    Tensor Xt = up(X, DType::F32, {M, hc, D}), yt = zeros(DType::F32, {M, D}), postt = zeros(DType::F32, {M, hc}),
           combt = zeros(DType::F32, {M, hc, hc});
    be->hc_pre(Xt, hp, yt, postt, combt);
    std::vector<float> y, post, comb;
    ref::hc_pre(X, M, p, y, post, comb);
    expect_close(down<float>(yt), y, tol("hc"), "hc_pre y");
    expect_close(down<float>(postt), post, tol("hc"), "hc_pre post");
    expect_close(down<float>(combt), comb, tol("hc") * 10, "hc_pre comb");  // 20 Sinkhorn rounds of fp32 divisions
    // hc_post on the reference's own outputs (so only hc_post is measured)
    Tensor Xo = zeros(DType::F32, {M, hc, D}), yin = up(y, DType::F32, {M, D}), pin = up(post, DType::F32, {M, hc}),
           cin = up(comb, DType::F32, {M, hc, hc});
    be->hc_post(yin, Xt, pin, cin, hc, Xo);
    expect_close(down<float>(Xo), ref::hc_post(y, X, post, comb, M, hc, D), tol("hc"), "hc_post");
    // hc_head: 4 rows of fn, one scale
    ref::Hc ph = p;
    ph.fn.resize(size_t(hc * hc * D));
    ph.base.resize(size_t(hc));
    ph.scale = {0.9f};
    HcParams hh = hp;
    hh.fn = up(ph.fn, DType::F32, {hc, hc * D});
    hh.base = up(ph.base, DType::F32, {hc});
    hh.scale = up(ph.scale, DType::F32, {1});
    Tensor yh = zeros(DType::F32, {M, D});
    be->hc_head(Xt, hh, yh);
    expect_close(down<float>(yh), ref::hc_head(X, M, ph), tol("hc"), "hc_head");
  }
}

// bf16_out is exactly round_bf16 after the op, on every backend: rms_norm (in place and not, weighted and not,
// the CUDA kernel's register and strided widths), rope (both directions; the unrotated dims are rounded too), and
// hc_pre's y and hc_post at decode and tiled row counts.
TEST_P(BackendOps, Bf16OutputIsTheOpThenRoundBf16) {
  Rng r(21);
  auto same = [&](const Tensor& fused, const Tensor& plain, const std::string& what) {
    be->round_bf16(plain);
    const auto a = down<float>(fused), b = down<float>(plain);
    size_t bad = 0;
    while (bad < a.size() && (a[bad] == b[bad] || (std::isnan(a[bad]) && std::isnan(b[bad])))) ++bad;
    EXPECT_EQ(bad, a.size()) << what << ": first difference at " << bad << " of " << a.size() << ": "
                             << (bad < a.size() ? fmt::format("{} vs {}", a[bad], b[bad]) : "");
    EXPECT_EQ(a, bf16_values(a)) << what << ": not bf16 values";
  };
  for (int64_t D : {int64_t(96), int64_t(4096), int64_t(4100)}) {
    auto x = r.vec(size_t(3 * D), -3, 3), w = r.vec(size_t(D), 0.5, 1.5);
    Tensor wt = up(w, DType::F32, {D});
    for (bool weighted : {true, false}) {
      Tensor xt = up(x, DType::F32, {3, D}), yf = zeros(DType::F32, {3, D}), yp = zeros(DType::F32, {3, D});
      be->rms_norm(xt, D, weighted ? wt : Tensor(), 1e-6f, yf, true);
      be->rms_norm(xt, D, weighted ? wt : Tensor(), 1e-6f, yp);
      same(yf, yp, fmt::format("rms_norm D {} weighted {}", D, weighted));
      Tensor xi = up(x, DType::F32, {3, D});
      be->rms_norm(xi, D, weighted ? wt : Tensor(), 1e-6f, xi, true);
      same(xi, yp, fmt::format("rms_norm in place D {} weighted {}", D, weighted));
    }
  }
  {
    const int64_t H = 5, hd = 40;  // rotates the last 16 dims; 24 stay
    auto t = RopeTable::make(16, 160000, 65536, 16, 32, 1);
    std::vector<int32_t> pos{0, 3, 70000};
    const int64_t M = int64_t(pos.size());
    auto x = r.vec(size_t(M * H * hd), -3, 3);
    Tensor pt = up(pos, DType::I32, {M}), ft = up(t.freqs, DType::F64, {int64_t(t.freqs.size())});
    for (bool inv : {false, true}) {
      Tensor xf = up(x, DType::F32, {M, H, hd}), xp = up(x, DType::F32, {M, H, hd});
      be->rope(xf, H, hd, pt, ft, inv, true);
      be->rope(xp, H, hd, pt, ft, inv);
      same(xf, xp, inv ? "rope inverse" : "rope");
    }
  }
  for (auto [M, D] : {std::pair<int64_t, int>{1, 4096}, {2, 1001}, {70, 333}}) {
    const int hc = 4;
    const int64_t rows = (2 + hc) * hc;
    const double fn_range = 0.5 * std::sqrt(192.0 / double(hc * D) > 1 ? 1 : 192.0 / double(hc * D));
    HcParams hp;
    hp.fn = up(r.vec(size_t(rows * hc * D), -fn_range, fn_range), DType::F32, {rows, hc * D});
    hp.base = up(r.vec(size_t(rows), -1, 1), DType::F32, {rows});
    hp.scale = up(std::vector<float>{0.7f, 1.3f, 0.5f}, DType::F32, {3});
    hp.hc = hc;
    hp.D = D;
    Tensor Xt = up(r.vec(size_t(M * hc * D), -2, 2), DType::F32, {M, hc, D});
    Tensor yf = zeros(DType::F32, {M, D}), yp = zeros(DType::F32, {M, D}), post = zeros(DType::F32, {M, hc}),
           comb = zeros(DType::F32, {M, hc, hc});
    be->hc_pre(Xt, hp, yf, post, comb, true);
    be->hc_pre(Xt, hp, yp, post, comb);
    const std::string at = fmt::format(" M {} D {}", M, D);
    Tensor Xf = zeros(DType::F32, {M, hc, D}), Xp = zeros(DType::F32, {M, hc, D});
    be->hc_post(yp, Xt, post, comb, hc, Xf, true);  // before yp is rounded below
    be->hc_post(yp, Xt, post, comb, hc, Xp);
    same(yf, yp, "hc_pre y" + at);
    same(Xf, Xp, "hc_post" + at);
  }
}

TEST_P(BackendOps, CountersCountOpsAndTransfers) {
  const auto c0 = be->counters();
  Tensor t = zeros(DType::F32, {8});  // a fill
  be->upload(t, std::vector<float>(8, 1.f).data(), 32);
  be->scale(t, 2.f);
  std::vector<float> h(8);
  be->download(h.data(), t, 32);
  const auto c1 = be->counters();
  EXPECT_EQ(c1.ops - c0.ops, 1u);
  EXPECT_EQ(c1.uploads - c0.uploads, 1u);
  EXPECT_EQ(c1.upload_bytes - c0.upload_bytes, 32u);
  EXPECT_EQ(c1.downloads - c0.downloads, 1u);
  EXPECT_EQ(c1.download_bytes - c0.download_bytes, 32u);
  EXPECT_EQ(h, std::vector<float>(8, 2.f));
  const MemoryInfo mi = be->memory_info();
  EXPECT_GT(mi.total, 0u);
  EXPECT_LE(mi.free, mi.total);
}

TEST(BackendFactory, CpuAutoAndCuda) {
  EXPECT_EQ(make_backend("cpu")->name(), "cpu");
  std::string why;
  auto cuda = make_cuda_backend(0, &why);
  auto a = make_backend("auto");  // cuda when make_cuda_backend gives one, else the CPU
  EXPECT_EQ(a->name(), cuda ? cuda->name() : std::string("cpu"));
  if (!cuda) {
    EXPECT_FALSE(why.empty());
    EXPECT_THROW(make_backend("cuda"), Error);
  }
  EXPECT_THROW(make_backend("tpu"), Error);
}
