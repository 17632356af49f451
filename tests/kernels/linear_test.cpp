// The optimized de-quantization and linear kernels against plain scalar references.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"
#include "kernels/backend.h"
#include "kernels/linear_weight.h"

using namespace dsv4;

TEST(LinearWeight, Fp8RowDequantEqualsScalarForEveryCode) {
  const int64_t out = 2, in = 300;  // a partial 128-block and a tail that is not a multiple of 8
  std::vector<uint8_t> w(size_t(out * in)), scale{120, 127, 130, 134, 140, 100};  // [1, 3] tiles... two rows share
  for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t(i * 7 % 256 == 0x7f ? 0 : i * 7 % 256);
  for (auto& b : w)
    if ((b & 0x7f) == 0x7f) b = 0x7e;  // no NaN codes in checkpoints
  LinearWeight lw;
  lw.fmt = WeightFormat::FP8Block;
  lw.out = out;
  lw.in = in;
  lw.data = w.data();
  lw.scale_e8m0 = scale.data();
  lw.scale_cols = 3;
  std::vector<float> row(static_cast<size_t>(in));
  for (int64_t r = 0; r < out; ++r) {
    lw.dequant_row(r, row.data());
    for (int64_t k = 0; k < in; ++k)
      ASSERT_EQ(row[size_t(k)], e4m3_to_f32(w[size_t(r * in + k)]) * e8m0_to_f32(scale[size_t(k / 128)]))
          << r << "," << k;
  }
}

TEST(LinearWeight, Bf16AndFp4RowsEqualScalar) {
  std::vector<uint16_t> b(77);
  for (size_t i = 0; i < b.size(); ++i) b[i] = f32_to_bf16(std::sin(float(i)) * 100.f);
  LinearWeight lw;
  lw.fmt = WeightFormat::BF16;
  lw.out = 1;
  lw.in = 77;
  lw.data = b.data();
  std::vector<float> row(77);
  lw.dequant_row(0, row.data());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(row[i], bf16_to_f32(b[i]));
  // FP4: byte k holds elements 2k (low nibble) and 2k+1 (high nibble); one E8M0 scale per 32.
  std::vector<uint8_t> p(32), s{126, 129};
  for (size_t i = 0; i < p.size(); ++i) p[i] = uint8_t(i * 37);
  LinearWeight f;
  f.fmt = WeightFormat::FP4Group32;
  f.out = 1;
  f.in = 64;
  f.data = p.data();
  f.scale_e8m0 = s.data();
  f.scale_cols = 2;
  std::vector<float> r4(64);
  f.dequant_row(0, r4.data());
  for (int k = 0; k < 64; ++k) {
    uint8_t nib = (k % 2) ? p[size_t(k / 2)] >> 4 : p[size_t(k / 2)] & 15;
    EXPECT_EQ(r4[size_t(k)], e2m1_to_f32(nib) * e8m0_to_f32(s[size_t(k / 32)])) << k;
  }
}

TEST(CpuBackend, LinearMatchesNaiveProduct) {
  auto be = make_cpu_backend();
  const int64_t M = 5, N = 37, K = 256;
  std::vector<uint8_t> w(size_t(N * K)), sc(size_t(1 * 2));
  for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t((i * 91 + 3) % 256);
  for (auto& v : w)
    if ((v & 0x7f) == 0x7f) v = 0;
  sc = {125, 128};
  LinearWeight lw;
  lw.fmt = WeightFormat::FP8Block;
  lw.out = N;
  lw.in = K;
  lw.data = w.data();
  lw.scale_e8m0 = sc.data();
  lw.scale_cols = 2;
  std::vector<float> x(size_t(M * K)), y(size_t(M * N));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.1f * float(i));
  be->linear(x.data(), M, lw, y.data(), {});
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k)
        ref += double(x[size_t(m * K + k)]) * e4m3_to_f32(w[size_t(n * K + k)]) * e8m0_to_f32(sc[size_t(k / 128)]);
      EXPECT_NEAR(y[size_t(m * N + n)], ref, 1e-3 * (1 + std::fabs(ref))) << m << "," << n;
    }
}
