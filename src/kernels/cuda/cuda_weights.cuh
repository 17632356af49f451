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
    e4m3x4_to_f32(r[s], sc, v);
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

// Stages `rows` rows of activations (row m starts at rowp(m), columns [0, kl); nullptr: a zero row) into xs as
// [m][sub-chunk][chunk][4], so lanes reading consecutive 16-byte weight chunks read consecutive float4s. One warp
// per 128-column task, four tasks' loads issued together (the staging is latency-bound). QUANT applies the
// reference's per-128 FP8 activation round trip on the way in (kl and the row starts are 128-aligned in K).
// Shared by the decode GEMV and the MoE kernels.
template <int CH, bool QUANT, class RowPtr>
__device__ __forceinline__ void stage_x(float* xs, int rows, int64_t KR, int64_t kl, RowPtr rowp) {
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31), nwarps = int(blockDim.x >> 5);
  const int64_t NC = KR / CH;
  const int segs = int((kl + 127) / 128), tasks = rows * segs;
  for (int t0 = warp * 4; t0 < tasks; t0 += nwarps * 4) {
    float v[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int t = t0 + j, m = t / segs;
      const int64_t base = int64_t(t - m * segs) * 128;
      const float* p = t < tasks ? rowp(m) : nullptr;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t k = base + lane * 4 + e;
        v[j][e] = (p && k < kl) ? p[k] : 0.f;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int t = t0 + j, m = t / segs;
      if (t >= tasks) break;  // warp-uniform
      const int64_t base = int64_t(t - m * segs) * 128;
      if constexpr (QUANT) {
        float amax = 0.f;
#pragma unroll
        for (int e = 0; e < 4; ++e) amax = amax_step(amax, v[j][e]);
        const float sc = pow2_scale(warp_max(amax), 448.f, 1e-4f);
#pragma unroll
        for (int e = 0; e < 4; ++e) v[j][e] = fp8_rt(v[j][e], sc);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t k = base + lane * 4 + e;
        if (k < KR) xs[m * KR + (((k % CH) / 4) * NC + k / CH) * 4 + (k & 3)] = k < kl ? v[j][e] : 0.f;
      }
    }
  }
}

}  // namespace dsv4::cuda
