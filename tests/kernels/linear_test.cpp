// The optimized de-quantization and linear kernels against plain scalar references. De-quantized rows are
// observed exactly through linear() with one-hot inputs: y[k][r] = W[r][k].
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend_test_util.h"
#include "core/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/linear_weight.h"

using namespace dsv4;
using namespace dsv4::test;

namespace {

// W^T of a weight, exactly: linear() of the identity [in, in].
std::vector<float> dequantized_transpose(Backend& be, const LinearWeight& w) {
  std::vector<float> eye(size_t(w.in * w.in), 0.f);
  for (int64_t k = 0; k < w.in; ++k) eye[size_t(k * w.in + k)] = 1.f;
  Dev x = dev_upload(be, eye, DType::F32, {w.in, w.in});
  Dev y = dev_alloc(be, DType::F32, {w.in, w.out});
  be.linear(x, w, y, {});
  return dev_download<float>(be, y);
}

}  // namespace

// The tests below assert the same bits on every path; this one makes sure the path is the one the target should
// get (x86-64-v3: AVX2/F16C, aarch64: NEON), so they are not silently testing the scalar loop alone.
TEST(LinearWeight, SimdPathMatchesTarget) {
  const std::string path = cpu_dequant_simd_path();
  RecordProperty("dequant_path", path);
  std::printf("CPU de-quantization path: %s\n", path.c_str());
#if defined(__x86_64__) && defined(__AVX2__) && defined(__F16C__)
  EXPECT_EQ(path, "avx2-f16c");
#elif defined(__aarch64__)
  EXPECT_EQ(path, "neon");
#else
  EXPECT_EQ(path, "scalar");
#endif
}

TEST(LinearWeight, Fp8RowDequantEqualsScalarForEveryCode) {
  auto be = make_cpu_backend();
  const int64_t out = 2, in = 300;  // a partial 128-block and a tail that is not a multiple of 8
  std::vector<uint8_t> w(size_t(out * in)), scale{120, 127, 130};  // [1, 3] tiles: both rows share tile 0
  for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t(i * 7 % 256 == 0x7f ? 0 : i * 7 % 256);
  for (auto& b : w)
    if ((b & 0x7f) == 0x7f) b = 0x7e;  // no NaN codes in checkpoints
  Dev wd = dev_upload(*be, w, DType::F8_E4M3, {out, in}), sd = dev_upload(*be, scale, DType::F8_E8M0, {1, 3});
  LinearWeight lw;
  lw.fmt = WeightFormat::FP8Block;
  lw.out = out;
  lw.in = in;
  lw.data = wd.t;
  lw.scale = sd.t;
  lw.scale_cols = 3;
  auto wt = dequantized_transpose(*be, lw);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t k = 0; k < in; ++k)
      ASSERT_EQ(wt[size_t(k * out + r)], e4m3_to_f32(w[size_t(r * in + k)]) * e8m0_to_f32(scale[size_t(k / 128)]))
          << r << "," << k;
}

TEST(LinearWeight, Bf16AndFp4RowsEqualScalar) {
  auto be = make_cpu_backend();
  std::vector<uint16_t> b(77);
  for (size_t i = 0; i < b.size(); ++i) b[i] = f32_to_bf16(std::sin(float(i)) * 100.f);
  Dev bd = dev_upload(*be, b, DType::BF16, {1, 77});
  LinearWeight lw;
  lw.fmt = WeightFormat::BF16;
  lw.out = 1;
  lw.in = 77;
  lw.data = bd.t;
  auto row = dequantized_transpose(*be, lw);
  for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(row[i], bf16_to_f32(b[i]));
  // FP4: byte k holds elements 2k (low nibble) and 2k+1 (high nibble); one E8M0 scale per 32.
  std::vector<uint8_t> p(32), s{126, 129};
  for (size_t i = 0; i < p.size(); ++i) p[i] = uint8_t(i * 37);
  Dev pd = dev_upload(*be, p, DType::U8, {1, 32}), sd = dev_upload(*be, s, DType::F8_E8M0, {1, 2});
  LinearWeight f;
  f.fmt = WeightFormat::FP4Group32;
  f.out = 1;
  f.in = 64;
  f.data = pd.t;
  f.scale = sd.t;
  f.scale_cols = 2;
  auto r4 = dequantized_transpose(*be, f);
  for (int k = 0; k < 64; ++k) {
    uint8_t nib = (k % 2) ? p[size_t(k / 2)] >> 4 : p[size_t(k / 2)] & 15;
    EXPECT_EQ(r4[size_t(k)], e2m1_to_f32(nib) * e8m0_to_f32(s[size_t(k / 32)])) << k;
  }
}

TEST(CpuBackend, LinearMatchesNaiveProduct) {
  auto be = make_cpu_backend();
  const int64_t M = 5, N = 37, K = 256;
  std::vector<uint8_t> w(size_t(N * K)), sc{125, 128};
  for (size_t i = 0; i < w.size(); ++i) w[i] = uint8_t((i * 91 + 3) % 256);
  for (auto& v : w)
    if ((v & 0x7f) == 0x7f) v = 0;
  Dev wd = dev_upload(*be, w, DType::F8_E4M3, {N, K}), sd = dev_upload(*be, sc, DType::F8_E8M0, {1, 2});
  LinearWeight lw;
  lw.fmt = WeightFormat::FP8Block;
  lw.out = N;
  lw.in = K;
  lw.data = wd.t;
  lw.scale = sd.t;
  lw.scale_cols = 2;
  std::vector<float> x(size_t(M * K));
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.1f * float(i));
  Dev xd = dev_upload(*be, x, DType::F32, {M, K}), yd = dev_alloc(*be, DType::F32, {M, N});
  be->linear(xd, lw, yd, {});
  auto y = dev_download<float>(*be, yd);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0;
      for (int64_t k = 0; k < K; ++k)
        ref += double(x[size_t(m * K + k)]) * e4m3_to_f32(w[size_t(n * K + k)]) * e8m0_to_f32(sc[size_t(k / 128)]);
      EXPECT_NEAR(y[size_t(m * N + n)], ref, 1e-3 * (1 + std::fabs(ref))) << m << "," << n;
    }
}
