// CPU backend: linear layers in the checkpoint's own weight formats. Each task de-quantizes a few weight rows
// exactly (AVX2/F16C on x86-64-v3, NEON on aarch64, else the scalar loop that also finishes every row's tail)
// and reuses them for every input row. All three paths give the same bits: tests/kernels runs the same
// assertions on whichever one is compiled (CI runs them natively on x86 and under qemu-aarch64).
#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define DSV4_X86_SIMD 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define DSV4_NEON_SIMD 1
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_internal.h"
#include "kernels/quant.h"

namespace dsv4 {
namespace cpu {

namespace {

int64_t row_bytes(const LinearWeight& w) {
  switch (w.fmt) {
    case WeightFormat::F32: return w.in * 4;
    case WeightFormat::BF16: return w.in * 2;
    case WeightFormat::FP8Block: return w.in;
    case WeightFormat::FP4Group32: return w.in / 2;
  }
  return 0;
}

void check_weight(const LinearWeight& w) {
  DSV4_CHECK(w.valid(), "linear: weight missing");
  const int64_t rb = row_bytes(w);
  DSV4_CHECK(w.data.rows() == w.out && w.data.row_elems() * int64_t(dtype_size(w.data.dtype)) == rb,
             "linear: {} weight data {}x{} {} for [{}, {}]", weight_format_name(w.fmt), w.data.rows(),
             w.data.row_elems(), dtype_name(w.data.dtype), w.out, w.in);
  if (w.fmt == WeightFormat::FP8Block) {
    DSV4_CHECK(w.scale.valid() && (w.scale.dtype == DType::F32 || dtype_size(w.scale.dtype) == 1),
               "linear: FP8 weight without a scale");
    const int64_t tiles = (w.row0 + w.out + w.block - 1) / w.block, cols = (w.in + w.block - 1) / w.block;
    DSV4_CHECK(w.scale.numel() >= (tiles - 1) * w.scale_cols + cols && w.scale_cols >= cols,
               "linear: FP8 scale of {} values for {} tiles x {} (stride {})", w.scale.numel(), tiles, cols,
               w.scale_cols);
  } else if (w.fmt == WeightFormat::FP4Group32) {
    DSV4_CHECK(w.in % 32 == 0 && w.scale.valid() && w.scale_cols >= w.in / 32 &&
                   w.scale.numel() >= (w.out - 1) * w.scale_cols + w.in / 32,
               "linear: FP4 scale of {} values for [{}, {}]", w.scale.valid() ? w.scale.numel() : 0, w.out, w.in);
  }
}

}  // namespace

void dequant_row(const LinearWeight& w, int64_t r, float* dst) {
  const int64_t in = w.in;
  const uint8_t* row = ptr<uint8_t>(w.data) + r * row_bytes(w);
  switch (w.fmt) {
    case WeightFormat::F32: std::memcpy(dst, row, size_t(in) * 4); break;
    case WeightFormat::BF16: {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(row);
      int64_t k = 0;
#ifdef DSV4_X86_SIMD
      for (; k + 8 <= in; k += 8) {  // bf16 -> f32 is a 16-bit shift
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)));
        _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
#elif defined(DSV4_NEON_SIMD)
      for (; k + 8 <= in; k += 8) {  // the same 16-bit shift: widen u16 -> u32 shifted left by 16
        const uint16x8_t v = vld1q_u16(s + k);
        vst1q_f32(dst + k, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)));
        vst1q_f32(dst + k + 4, vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)));
      }
#endif
      for (; k < in; ++k) dst[k] = bf16_to_f32(s[k]);
      break;
    }
    case WeightFormat::FP8Block: {
      const uint8_t* s = row;
      // A slice may start inside a tile: row r of the slice is row row0 + r of its first scale tile.
      const int64_t srow = ((w.row0 + r) / w.block) * w.scale_cols;
      const bool f32 = w.scale_is_f32();
      for (int64_t k0 = 0; k0 < in; k0 += w.block) {
        const int64_t si = srow + k0 / w.block;
        float sc = f32 ? ptr<float>(w.scale)[si] : e8m0_to_f32(ptr<uint8_t>(w.scale)[si]);
        int64_t k1 = std::min<int64_t>(in, k0 + w.block), k = k0;
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
#elif defined(DSV4_NEON_SIMD)
        // The same bit move into fp16, then NEON's fp16 -> f32 conversion (FCVTL, base ARMv8 ASIMD).
        const float32x4_t scv = vdupq_n_f32(sc * 256.f);
        for (; k + 8 <= k1; k += 8) {
          const uint16x8_t b = vmovl_u8(vld1_u8(s + k));
          const uint16x8_t h = vorrq_u16(vshlq_n_u16(vandq_u16(b, vdupq_n_u16(0x80)), 8),
                                         vshlq_n_u16(vandq_u16(b, vdupq_n_u16(0x7f)), 7));
          const float16x8_t hf = vreinterpretq_f16_u16(h);
          vst1q_f32(dst + k, vmulq_f32(vcvt_f32_f16(vget_low_f16(hf)), scv));
          vst1q_f32(dst + k + 4, vmulq_f32(vcvt_high_f32_f16(hf), scv));
        }
#endif
        for (; k < k1; ++k) dst[k] = e4m3_to_f32(s[k]) * sc;
      }
      break;
    }
    case WeightFormat::FP4Group32: {
      const uint8_t* s = row;
      const uint8_t* sc = ptr<uint8_t>(w.scale) + r * w.scale_cols;
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

void linear_rows(const float* x, int64_t ldx, int64_t M, const LinearWeight& w, float* y, int64_t ldy, bool act_fp8,
                 bool out_bf16) {
  const int64_t K = w.in, N = w.out;
  std::vector<float> xq;
  if (act_fp8 && w.quantized()) {  // the reference quantizes activations only in front of FP8/FP4 GEMMs
    xq.resize(size_t(M * K));
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(xq.data() + m * K, x + m * ldx, size_t(K) * 4);
      dsv4::fp8_roundtrip(xq.data() + m * K, K, 128);
    }
    x = xq.data();
    ldx = K;
  }
  constexpr int64_t R = 4;
  parallel_for((N + R - 1) / R, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * std::max<int64_t>(M, 1) / 256)),
               [&](int64_t b, int64_t e) {
                 std::vector<float> wrow(size_t(R * K));
                 for (int64_t t = b; t < e; ++t) {
                   int64_t n0 = t * R, nr = std::min(R, N - n0);
                   for (int64_t r = 0; r < nr; ++r) dequant_row(w, n0 + r, wrow.data() + r * K);
                   for (int64_t m = 0; m < M; ++m) {
                     const float* xm = x + m * ldx;
                     for (int64_t r = 0; r < nr; ++r) y[m * ldy + n0 + r] = dot(xm, wrow.data() + r * K, K);
                   }
                 }
               });
  if (out_bf16)
    for (int64_t m = 0; m < M; ++m) dsv4::round_bf16(y + m * ldy, N);
}

void CpuBackend::linear(const Tensor& x, const LinearWeight& w, const Tensor& y, LinearOpts o) {
  auto s = op();
  check_weight(w);
  check_dtype(x, DType::F32, "linear x");
  check_dtype(y, DType::F32, "linear y");
  const int64_t G = o.groups;
  DSV4_CHECK(G >= 1 && w.out % G == 0, "linear: {} groups of {} output rows", G, w.out);
  const int64_t M = x.rows(), gout = w.out / G;
  DSV4_CHECK(x.row_elems() == G * w.in && y.rows() == M && y.row_elems() == w.out,
             "linear: x [{}, {}] . W [{}, {}] x {} groups -> y [{}, {}]", M, x.row_elems(), w.out, w.in, G, y.rows(),
             y.row_elems());
  if (M == 0) return;
  // Group g: x columns [g * in, (g + 1) * in) times W rows [g * gout, (g + 1) * gout) into y columns of the same
  // rows, each group a linear of its own (its activation rows quantized on their own slice).
  for (int64_t g = 0; g < G; ++g)
    linear_rows(ptr<float>(x) + g * w.in, G * w.in, M, G == 1 ? w : w.rows(g * gout, gout), ptr<float>(y) + g * gout,
                w.out, o.act_fp8, o.out_bf16);
}

}  // namespace cpu

const char* cpu_dequant_simd_path() {
#if defined(DSV4_X86_SIMD)
  return "avx2-f16c";
#elif defined(DSV4_NEON_SIMD)
  return "neon";
#else
  return "scalar";
#endif
}

}  // namespace dsv4
