#include "kernels/quant.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/error.h"

namespace dsv4 {

void fp8_roundtrip(float* x, int64_t n, int64_t block) {
  for (int64_t b = 0; b < n; b += block) {
    int64_t e = std::min(n, b + block);
    float amax = 0;
    for (int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    float s = pow2_scale(amax, 448.f, 1e-4f);
    for (int64_t i = b; i < e; ++i) x[i] = e4m3_to_f32(f32_to_e4m3(std::clamp(x[i] / s, -448.f, 448.f))) * s;
  }
}

void fp4_roundtrip(float* x, int64_t n, int64_t block) {
  const float amin = 6.f * std::ldexp(1.f, -126);
  for (int64_t b = 0; b < n; b += block) {
    int64_t e = std::min(n, b + block);
    float amax = 0;
    for (int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    float s = pow2_scale(amax, 6.f, amin);
    for (int64_t i = b; i < e; ++i) x[i] = e2m1_to_f32(f32_to_e2m1(std::clamp(x[i] / s, -6.f, 6.f))) * s;
  }
}

void hadamard(float* x, int64_t n) {
  DSV4_CHECK(n > 0 && (n & (n - 1)) == 0, "hadamard: length {} is not a power of two", n);
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  float s = 1.f / std::sqrt(float(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void round_bf16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = dsv4::round_bf16(x[i]);
}

}  // namespace dsv4
