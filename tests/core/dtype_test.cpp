#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/dtype.h"

using namespace dsv4;

// Independent decoding of an OCP e4m3fn byte from its bit fields.
static double e4m3_by_fields(int b) {
  int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
  return s ? -v : v;
}

TEST(DType, E4M3AllCodes) {
  int nans = 0;
  for (int b = 0; b < 256; ++b) {
    float v = e4m3_to_f32(uint8_t(b));
    if ((b & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(v)) << b;
      ++nans;
      continue;
    }
    EXPECT_EQ(double(v), e4m3_by_fields(b)) << "code " << b;
    // Every finite code encodes back to itself (-0 keeps its sign bit).
    EXPECT_EQ(f32_to_e4m3(v), uint8_t(b)) << "code " << b;
  }
  EXPECT_EQ(nans, 2);
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.f, -9));  // smallest subnormal
}

TEST(DType, E4M3Rounding) {
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(1000.f)), 448.f);   // saturates
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(-1000.f)), -448.f);
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(1.0625f)), 1.f);    // tie between 1 and 1.125 -> even mantissa (1)
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(1.1875f)), 1.25f);  // tie between 1.125 and 1.25 -> even (1.25)
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(1.07f)), 1.125f);
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(300.f)), 288.f);    // 256 + 32 steps: 288 is nearest
  EXPECT_EQ(e4m3_to_f32(f32_to_e4m3(std::ldexp(1.f, -10))), 0.f);  // half the smallest subnormal: tie -> 0
}

TEST(DType, E4M3FastEncoderEqualsReferenceSearch) {
  // Every code's value, the midpoints between neighbours (ties), and a dense sweep of random floats.
  std::vector<float> xs;
  for (int b = 0; b < 0x7f; ++b) {
    xs.push_back(e4m3_to_f32(uint8_t(b)));
    if (b + 1 < 0x7f) xs.push_back(0.5f * (e4m3_to_f32(uint8_t(b)) + e4m3_to_f32(uint8_t(b + 1))));
  }
  uint32_t s = 7;
  for (int i = 0; i < 200000; ++i) {
    s = s * 1664525u + 1013904223u;
    xs.push_back(std::ldexp(float(s >> 8) / float(1 << 24), int(s % 30) - 15));
  }
  xs.push_back(447.99f);
  xs.push_back(1e-30f);
  for (float x : xs)
    for (float v : {x, -x}) ASSERT_EQ(f32_to_e4m3(v), f32_to_e4m3_reference(v)) << v;
}

TEST(DType, E8M0) {
  EXPECT_EQ(e8m0_to_f32(127), 1.f);
  EXPECT_EQ(e8m0_to_f32(128), 2.f);
  EXPECT_EQ(e8m0_to_f32(120), std::ldexp(1.f, -7));
  EXPECT_EQ(e8m0_to_f32(0), std::ldexp(1.f, -127));
  EXPECT_EQ(e8m0_to_f32(254), std::ldexp(1.f, 127));
  EXPECT_TRUE(std::isnan(e8m0_to_f32(255)));
  for (int b = 1; b < 255; ++b) EXPECT_EQ(e8m0_to_f32(uint8_t(b)), std::ldexp(1.f, b - 127));
}

TEST(DType, E2M1) {
  const float mags[8] = {0, .5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 16; ++c) {
    float v = e2m1_to_f32(uint8_t(c));
    EXPECT_EQ(std::fabs(v), mags[c & 7]);
    EXPECT_EQ(std::signbit(v), bool(c & 8));
    EXPECT_EQ(f32_to_e2m1(v), uint8_t(c));
  }
  EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(2.5f)), 2.f);   // tie 2|3 -> even code (2 = code 4)
  EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(5.f)), 4.f);    // tie 4|6 -> even code (4 = code 6)
  EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(0.25f)), 0.f);  // tie 0|0.5 -> 0
  EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(0.75f)), 1.f);  // tie .5|1 -> even (1 = code 2)
  EXPECT_EQ(e2m1_to_f32(f32_to_e2m1(-9.f)), -6.f);
}

TEST(DType, BF16) {
  EXPECT_EQ(round_bf16(1.f), 1.f);
  EXPECT_EQ(round_bf16(1.f + std::ldexp(1.f, -8)), 1.f);  // tie -> even
  EXPECT_EQ(round_bf16(1.f + 3 * std::ldexp(1.f, -8)), 1.f + std::ldexp(1.f, -6));
  EXPECT_EQ(f32_to_bf16(-2.f), 0xc000);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
}

TEST(DType, Names) {
  DType t;
  ASSERT_TRUE(parse_dtype("F8_E8M0", &t));
  EXPECT_EQ(t, DType::F8_E8M0);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_FALSE(parse_dtype("F4", &t));
}
