#include "kernels/linear_weight.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define DSV4_X86_SIMD 1
#endif

#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"

namespace dsv4 {

LinearWeight LinearWeight::rows(int64_t r0, int64_t n) const {
  DSV4_CHECK(r0 >= 0 && r0 + n <= out, "LinearWeight::rows [{}, {}) out of {}", r0, r0 + n, out);
  LinearWeight w = *this;
  w.out = n;
  switch (fmt) {
    case WeightFormat::F32: w.data = static_cast<const float*>(data) + r0 * in; break;
    case WeightFormat::BF16: w.data = static_cast<const uint16_t*>(data) + r0 * in; break;
    case WeightFormat::FP8Block:
      DSV4_CHECK(r0 % block == 0, "FP8 weight row slice at {} is not on a {}-row tile", r0, block);
      w.data = static_cast<const uint8_t*>(data) + r0 * in;
      if (scale_e8m0) w.scale_e8m0 = scale_e8m0 + (r0 / block) * scale_cols;
      if (scale_f32) w.scale_f32 = scale_f32 + (r0 / block) * scale_cols;
      break;
    case WeightFormat::FP4Group32:
      w.data = static_cast<const uint8_t*>(data) + r0 * (in / 2);
      w.scale_e8m0 = scale_e8m0 + r0 * scale_cols;
      break;
  }
  return w;
}

void LinearWeight::dequant_row(int64_t r, float* dst) const {
  switch (fmt) {
    case WeightFormat::F32: {
      const float* s = static_cast<const float*>(data) + r * in;
      for (int64_t k = 0; k < in; ++k) dst[k] = s[k];
      break;
    }
    case WeightFormat::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(data) + r * in;
      int64_t k = 0;
#ifdef DSV4_X86_SIMD
      for (; k + 8 <= in; k += 8) {  // bf16 -> f32 is a 16-bit shift
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
        _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
#endif
      for (; k < in; ++k) dst[k] = bf16_to_f32(s[k]);
      break;
    }
    case WeightFormat::FP8Block: {
      const uint8_t* s = static_cast<const uint8_t*>(data) + r * in;
      int64_t srow = (r / block) * scale_cols;
      for (int64_t k0 = 0; k0 < in; k0 += block) {
        float sc = scale_f32 ? scale_f32[srow + k0 / block] : e8m0_to_f32(scale_e8m0[srow + k0 / block]);
        int64_t k1 = std::min<int64_t>(in, k0 + block), k = k0;
#ifdef DSV4_X86_SIMD
        // e4m3 -> fp16 by moving the bits into place (exponent bias 7 -> 15 is a factor 2^8, folded into the
        // scale), then the hardware fp16 -> f32 conversion; exact for every finite code incl. subnormals.
        const __m256 scv = _mm256_set1_ps(sc * 256.f);
        for (; k + 8 <= k1; k += 8) {
          __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + k)));
          __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                                   _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7));
          _mm256_storeu_ps(dst + k, _mm256_mul_ps(_mm256_cvtph_ps(h), scv));
        }
#endif
        for (; k < k1; ++k) dst[k] = e4m3_to_f32(s[k]) * sc;
      }
      break;
    }
    case WeightFormat::FP4Group32: {
      const uint8_t* s = static_cast<const uint8_t*>(data) + r * (in / 2);
      const uint8_t* sc = scale_e8m0 + r * scale_cols;
      for (int64_t g = 0; g < in / 32; ++g) {
        float f = e8m0_to_f32(sc[g]);
        for (int64_t j = 0; j < 16; ++j) {
          uint8_t b = s[g * 16 + j];
          dst[g * 32 + 2 * j] = e2m1_to_f32(b & 0xf) * f;
          dst[g * 32 + 2 * j + 1] = e2m1_to_f32(b >> 4) * f;
        }
      }
      break;
    }
  }
}

uint64_t LinearWeight::nbytes() const {
  switch (fmt) {
    case WeightFormat::F32: return uint64_t(out * in * 4);
    case WeightFormat::BF16: return uint64_t(out * in * 2);
    case WeightFormat::FP8Block: return uint64_t(out * in);
    case WeightFormat::FP4Group32: return uint64_t(out * in / 2);
  }
  return 0;
}

}  // namespace dsv4
