// One hand-checked example per rounding site of the reference numerics, plus RoPE/YaRN and Sinkhorn.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend_test_util.h"
#include "kernels/backend.h"
#include "kernels/quant.h"
#include "kernels/rope_table.h"

using namespace dsv4;
using namespace dsv4::test;

TEST(Quant, Fp8ActivationPer128) {
  // Block 0: amax 3.0 -> 3/448 = 0.0067 -> s = 2^-7; x/s = 384*1 = 128 (exact), 1.3/s = 166.4 -> e4m3 160
  // (step 16 in [128, 256)); block 1: amax 1e-6 < 1e-4 -> s = 2^ceil(log2(1e-4/448)) = 2^-22.
  std::vector<float> x(256, 0.f);
  x[0] = 1.f;
  x[1] = 1.3f;
  x[2] = -3.f;
  x[128] = 1e-6f;
  fp8_roundtrip(x.data(), 256, 128);
  EXPECT_EQ(x[0], 1.f);
  EXPECT_EQ(x[1], 160.f / 128.f);
  EXPECT_EQ(x[2], -3.f);
  // 1e-6 / 2^-22 = 4.194 -> nearest e4m3 4.0 (step 0.5 in [4, 8)) -> 4 * 2^-22
  EXPECT_EQ(x[128], std::ldexp(4.f, -22));
}

TEST(Quant, Fp8KvNopePer64) {
  // 64-wide blocks: amax 448 -> s = 1, values already on the grid stay; 100 -> 96 (step 8 in [64,128): 96|104, 100 tie -> even 96)
  std::vector<float> x(128, 0.f);
  x[0] = 448.f;
  x[1] = 100.f;
  x[64] = 0.5f;   // block 1 amax 0.5 -> s = 2^ceil(log2(0.5/448)) = 2^-9; 0.5/s = 256 exact
  x[65] = 0.3f;   // 0.3 * 512 = 153.6 -> 160 (step 16 in [128,256)) -> 160/512 = 0.3125
  fp8_roundtrip(x.data(), 128, 64);
  EXPECT_EQ(x[0], 448.f);
  EXPECT_EQ(x[1], 96.f);
  EXPECT_EQ(x[64], 0.5f);
  EXPECT_EQ(x[65], 0.3125f);
}

TEST(Quant, HadamardThenFp4Per32) {
  // Hadamard of e0 in 4 dims = [.5 .5 .5 .5]; orthonormal (applying twice is the identity).
  std::vector<float> h{1, 0, 0, 0};
  hadamard(h.data(), 4);
  for (float v : h) EXPECT_FLOAT_EQ(v, 0.5f);
  hadamard(h.data(), 4);
  EXPECT_FLOAT_EQ(h[0], 1.f);
  EXPECT_NEAR(h[1], 0.f, 1e-7);
  // FP4 block of 32: amax 5 -> s = 2^ceil(log2(5/6)) = 1; 5 -> tie 4|6 -> 4; 2.4 -> 2; -0.8 -> -1.
  std::vector<float> x(32, 0.f);
  x[0] = 5.f;
  x[1] = 2.4f;
  x[2] = -0.8f;
  fp4_roundtrip(x.data(), 32, 32);
  EXPECT_EQ(x[0], 4.f);
  EXPECT_EQ(x[1], 2.f);
  EXPECT_EQ(x[2], -1.f);
  // amax 0.9 -> s = 2^ceil(log2(0.15)) = 2^-2; 0.9/0.25 = 3.6 -> 4 -> 1.0
  std::vector<float> y(32, 0.f);
  y[5] = 0.9f;
  fp4_roundtrip(y.data(), 32, 32);
  EXPECT_EQ(y[5], 1.f);
}

TEST(Quant, Bf16Activations) {
  std::vector<float> x{1.00390625f, 3.14159265f};
  round_bf16(x.data(), 2);
  EXPECT_EQ(x[0], 1.f);          // 1 + 2^-8 is a tie -> even
  EXPECT_EQ(x[1], 3.140625f);
}

TEST(Rope, YarnCorrectionRange) {
  // base 160000, 64 dims, original 65536, factor 16: pairs 0..15 keep omega, >= 25 use omega/16.
  auto t = RopeTable::make(64, 160000, 65536, 16, 32, 1);
  auto plain = RopeTable::make(64, 160000, 0, 1, 32, 1);
  ASSERT_EQ(t.freqs.size(), 32u);
  for (int i = 0; i <= 15; ++i) EXPECT_DOUBLE_EQ(t.freqs[size_t(i)], plain.freqs[size_t(i)]) << i;
  for (int i = 25; i < 32; ++i) EXPECT_DOUBLE_EQ(t.freqs[size_t(i)], plain.freqs[size_t(i)] / 16) << i;
  // i = 20: ramp (20-15)/10 = 0.5 -> omega * (0.5 + 0.5/16)
  EXPECT_NEAR(t.freqs[20], plain.freqs[20] * (0.5 + 0.5 / 16), 1e-15);
  EXPECT_DOUBLE_EQ(plain.freqs[1], std::pow(160000.0, -2.0 / 64));
}

TEST(Rope, InterleavedPairsOnLastDims) {
  auto be = make_cpu_backend();
  auto t = RopeTable::make(4, 10000, 0, 1, 32, 1);
  Dev xd = dev_upload(*be, std::vector<float>{7, 8, 1, 0, 0, 1}, DType::F32, {1, 1, 6});  // hd 6: dims 0,1 untouched
  Dev pd = dev_upload(*be, std::vector<int32_t>{3}, DType::I32, {1});
  Dev fd = dev_upload(*be, t.freqs, DType::F64, {2});
  be->rope(xd, 1, 6, pd, fd, false);
  auto x = dev_download<float>(*be, xd);
  EXPECT_EQ(x[0], 7.f);
  EXPECT_EQ(x[1], 8.f);
  EXPECT_NEAR(x[2], std::cos(3.0), 1e-6);
  EXPECT_NEAR(x[3], std::sin(3.0), 1e-6);
  double w1 = 1.0 / 100.0;  // 10000^(-2/4)
  EXPECT_NEAR(x[4], -std::sin(3 * w1), 1e-6);
  EXPECT_NEAR(x[5], std::cos(3 * w1), 1e-6);
  be->rope(xd, 1, 6, pd, fd, true);  // inverse restores
  x = dev_download<float>(*be, xd);
  EXPECT_NEAR(x[2], 1.f, 1e-6);
  EXPECT_NEAR(x[5], 1.f, 1e-6);
}

TEST(HyperConnections, SinkhornDoublyStochastic) {
  auto be = make_cpu_backend();
  const int hc = 4, D = 32, rows = (2 + hc) * hc;
  std::vector<float> fn(static_cast<size_t>(rows * hc * D)), base(static_cast<size_t>(rows)), scale{0.7f, 1.3f, 0.5f}, X(size_t(hc * D));
  uint32_t s = 12345;
  auto rnd = [&] { s = s * 1664525u + 1013904223u; return float(s >> 8) / float(1 << 24) * 2.f - 1.f; };
  for (auto& v : fn) v = rnd();
  for (auto& v : base) v = 2 * rnd();
  for (auto& v : X) v = 3 * rnd();
  Dev fnd = dev_upload(*be, fn, DType::F32, {rows, hc * D}), based = dev_upload(*be, base, DType::F32, {rows}),
      scd = dev_upload(*be, scale, DType::F32, {3}), Xd = dev_upload(*be, X, DType::F32, {1, hc, D});
  HcParams p{fnd.t, based.t, scd.t, hc, D, 20, 1e-6f, 1e-6f};
  Dev yd = dev_alloc(*be, DType::F32, {1, D}), postd = dev_alloc(*be, DType::F32, {1, hc}),
      combd = dev_alloc(*be, DType::F32, {1, hc, hc});
  be->hc_pre(Xd, p, yd, postd, combd);
  auto post = dev_download<float>(*be, postd), comb = dev_download<float>(*be, combd);
  for (int j = 0; j < hc; ++j) {
    float r = 0, c = 0;
    for (int k = 0; k < hc; ++k) {
      r += comb[size_t(j * hc + k)];
      c += comb[size_t(k * hc + j)];
      EXPECT_GT(comb[size_t(j * hc + k)], 0.f);
    }
    EXPECT_NEAR(r, 1.f, 1e-5) << "row " << j;
    EXPECT_NEAR(c, 1.f, 1e-5) << "col " << j;
  }
  for (float v : post) {
    EXPECT_GT(v, 0.f);
    EXPECT_LT(v, 2.f);
  }
}

// Top-k is part of route (and index_topk): sigmoid is monotonic, so equal logits are exact ties.
TEST(Backend, TopkTiesLowestIndexFirst) {
  auto be = make_cpu_backend();
  Dev lg = dev_upload(*be, std::vector<float>{0, 3, 0, 3, 1, 0, 0}, DType::F32, {1, 7});
  auto top = [&](int k) {
    RouteArgs a;
    a.logits = lg.t;
    a.k = k;
    a.score_func = 1;
    Dev ex = dev_alloc(*be, DType::I32, {1, k}), wt = dev_alloc(*be, DType::F32, {1, k});
    a.experts = ex.t;
    a.weights = wt.t;
    be->route(a);
    return dev_download<int32_t>(*be, ex);
  };
  EXPECT_EQ(top(4), (std::vector<int32_t>{1, 3, 4, 0}));
  EXPECT_EQ(top(6), (std::vector<int32_t>{1, 3, 4, 0, 2, 5}));
}
