// De-quantization of the checkpoint's weight formats in registers, shared by the linear and MoE kernels.
#pragma once
#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {

template <int FMT>
struct Chunk;  // elements per 16-byte load
template <>
struct Chunk<kF32> {
  static constexpr int n = 4;
};
template <>
struct Chunk<kBF16> {
  static constexpr int n = 8;
};
template <>
struct Chunk<kFP8> {
  static constexpr int n = 16;
};
template <>
struct Chunk<kFP4> {
  static constexpr int n = 32;
};

__device__ __forceinline__ float fp8_scale(const DevWeight& w, int64_t n, int64_t k) {
  // Shifts for power-of-two tiles (128 in every checkpoint): a 64-bit division per chunk costs as much as its FMAs.
  const int64_t i = w.block_shift >= 0 ? ((w.row0 + n) >> w.block_shift) * w.scale_cols + (k >> w.block_shift)
                                       : ((w.row0 + n) / w.block) * w.scale_cols + k / w.block;
  return w.scale_f32 ? static_cast<const float*>(w.scale)[i] : e8m0_to_f32(static_cast<const uint8_t*>(w.scale)[i]);
}
__device__ __forceinline__ float fp4_scale(const DevWeight& w, int64_t n, int64_t k) {
  return e8m0_to_f32(static_cast<const uint8_t*>(w.scale)[n * w.scale_cols + k / 32]);
}
// One de-quantized weight value, as LinearWeight::dequant_row computes it.
__device__ __forceinline__ float wload(const DevWeight& w, int64_t n, int64_t k) {
  switch (w.fmt) {
    case kF32: return reinterpret_cast<const float*>(w.data)[n * w.in + k];
    case kBF16: return bf2f(reinterpret_cast<const uint16_t*>(w.data)[n * w.in + k]);
    case kFP8: return e4m3_to_f32(w.data[n * w.in + k]) * fp8_scale(w, n, k);
    default: {
      const uint8_t b = w.data[n * (w.in / 2) + k / 2];
      return e2m1_to_f32((k & 1) ? (b >> 4) : (b & 15)) * fp4_scale(w, n, k);
    }
  }
}

// 4 consecutive de-quantized values (sub-chunk s) of a 16-byte raw chunk.
template <int FMT>
__device__ __forceinline__ void decode4(const uint4& raw, int s, float sc, float* v) {
  const uint32_t r[4] = {raw.x, raw.y, raw.z, raw.w};
  if constexpr (FMT == kF32) {
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = __uint_as_float(r[j]);
  } else if constexpr (FMT == kBF16) {
    const uint32_t a = r[2 * s], b = r[2 * s + 1];
    v[0] = __uint_as_float(a << 16);
    v[1] = __uint_as_float(a & 0xffff0000u);
    v[2] = __uint_as_float(b << 16);
    v[3] = __uint_as_float(b & 0xffff0000u);
  } else if constexpr (FMT == kFP8) {
    const uint32_t a = r[s];
    const __half2 lo = __half2(__nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(a & 0xffff), __NV_E4M3));
    const __half2 hi = __half2(__nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(a >> 16), __NV_E4M3));
    const float2 f0 = __half22float2(lo), f1 = __half22float2(hi);
    v[0] = f0.x * sc;
    v[1] = f0.y * sc;
    v[2] = f1.x * sc;
    v[3] = f1.y * sc;
  } else {
    // e2m1 nibble -> fp16 bits (sign to bit 15, exponent/mantissa to bits 11..9) is the value * 2^-14.
    const uint32_t a = (r[s >> 1] >> (16 * (s & 1))) & 0xffffu;  // 2 bytes = 4 nibbles
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const uint32_t b = (a >> (8 * j)) & 0xff, lo = b & 15, hi = b >> 4;
      const uint32_t bits = ((lo & 8) << 12) | ((lo & 7) << 9) | ((((hi & 8) << 12) | ((hi & 7) << 9)) << 16);
      __half2 h = *reinterpret_cast<const __half2*>(&bits);
      h = __hmul2(h, __float2half2_rn(16384.f));
      const float2 f = __half22float2(h);
      v[2 * j] = f.x * sc;
      v[2 * j + 1] = f.y * sc;
    }
  }
}

template <int FMT>
__device__ __forceinline__ void load_chunk(const DevWeight& w, int64_t n, int64_t k, uint4& raw, float& sc) {
  if constexpr (FMT == kF32) {
    raw = __ldcs(reinterpret_cast<const uint4*>(w.data + (n * w.in + k) * 4));
    sc = 1.f;
  } else if constexpr (FMT == kBF16) {
    raw = __ldcs(reinterpret_cast<const uint4*>(w.data + (n * w.in + k) * 2));
    sc = 1.f;
  } else if constexpr (FMT == kFP8) {
    raw = __ldcs(reinterpret_cast<const uint4*>(w.data + n * w.in + k));
    sc = fp8_scale(w, n, k);
  } else {
    raw = __ldcs(reinterpret_cast<const uint4*>(w.data + n * (w.in / 2) + k / 2));
    sc = fp4_scale(w, n, k);
  }
}

}  // namespace dsv4::cuda
