// Device helpers shared by the kernels: the scalar number formats bit-identical to core/dtype.h and
// kernels/quant.h (same rounding, same saturation), the KV codec, error reports, reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace dsv4::cuda {

__device__ __forceinline__ void report(int* err, int code, int64_t a, int64_t b = 0, int64_t c = 0) {
  if (err && atomicCAS(err, 0, code) == 0) {
    err[1] = int(a);
    err[2] = int(b);
    err[3] = int(c);
  }
}

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
// True the first time it is called for the current device with this mask: function attributes (shared-memory
// limits) are per device.
inline bool first_on_device(unsigned long long& mask) {
  int d = 0;
  DSV4_CUDA_CHECK(cudaGetDevice(&d));
  const unsigned long long bit = 1ull << (d & 63);
  if (mask & bit) return false;
  mask |= bit;
  return true;
}
// Raises fn's dynamic shared-memory limit to all the current device lets a block opt into beside fn's static
// shared memory (227 KB in all on sm_90/100, 99 KB on sm_120/121) and returns that limit; a kernel never asks for
// a size another target lacks.
// The shared memory a block of the current device may opt into.
inline int smem_optin() {
  int d = 0, optin = 0;
  DSV4_CUDA_CHECK(cudaGetDevice(&d));
  DSV4_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d));
  return optin;
}
inline int allow_max_dynamic_smem(const void* fn) {
  const int optin = smem_optin();
  cudaFuncAttributes fa{};
  DSV4_CUDA_CHECK(cudaFuncGetAttributes(&fa, fn));
  const int limit = optin - int(fa.sharedSizeBytes);
  DSV4_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, limit));
  return limit;
}
inline unsigned grid1d(int64_t n, int threads, int64_t cap = 1 << 20) {
  int64_t g = cdiv(n, threads);
  return unsigned(g < 1 ? 1 : (g > cap ? cap : g));
}

// ---- bf16 (core/dtype.h f32_to_bf16: NaN -> quiet, else round to nearest even)
__device__ __forceinline__ uint16_t f2bf(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }
__device__ __forceinline__ float rbf16(float f) { return bf2f(f2bf(f)); }
// Two floats that are bf16 values already, as a bf16 pair (cvt.rn.bf16x2.f32: one instruction).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- e4m3
__device__ __forceinline__ float e4m3_to_f32(uint8_t b) {
  const uint32_t s = uint32_t(b & 0x80) << 24;
  const int e = (b >> 3) & 0xf, m = b & 7;
  if (e == 0xf && m == 7) return __uint_as_float(s | 0x7fc00000u);
  if (e == 0) {
    const float v = float(m) * 0.001953125f;  // m/8 * 2^-6
    return s ? -v : v;
  }
  return __uint_as_float(s | (uint32_t(e - 7 + 127) << 23) | (uint32_t(m) << 20));
}
// Four e4m3 codes (a word, byte 0 first) as floats scaled by sc, by the hardware pair conversion (e4m3x2 ->
// f16x2, exact) instead of a decode per byte.
__device__ __forceinline__ void e4m3x4_to_f32(uint32_t w, float sc, float* v) {
  const float2 f0 = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w & 0xffff), __NV_E4M3)));
  const float2 f1 = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w >> 16), __NV_E4M3)));
  v[0] = f0.x * sc, v[1] = f0.y * sc, v[2] = f1.x * sc, v[3] = f1.y * sc;
}
__device__ __forceinline__ uint8_t f32_to_e4m3(float f) {
  if (isnan(f)) return 0x7f;
  const uint8_t sign = signbit(f) ? 0x80 : 0;
  const float a = fabsf(f);
  if (a >= 448.f) return sign | 0x7e;
  if (a < 0.015625f) return sign | uint8_t(rintf(a * 512.f));
  uint32_t u = __float_as_uint(a);
  u += 0x7ffffu + ((u >> 20) & 1u);
  const int e = int(u >> 23) - 127;
  return sign | uint8_t(((e + 7) << 3) | ((u >> 20) & 7u));
}

// ---- e8m0
__device__ __forceinline__ float e8m0_to_f32(uint8_t b) {
  if (b == 255) return __uint_as_float(0x7fc00000u);
  if (b == 0) return __uint_as_float(0x00400000u);  // 2^-127
  return __uint_as_float(uint32_t(b) << 23);
}

// ---- e2m1
__device__ __forceinline__ float e2m1_to_f32(uint8_t n) {
  const float mag[8] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  float v = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) v = (n & 7) == i ? mag[i] : v;  // select chain: no local-memory table
  return (n & 8) ? -v : v;
}
__device__ __forceinline__ uint8_t f32_to_e2m1(float f) {
  const float t[8] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  const uint8_t sign = signbit(f) ? 8 : 0;
  const float a = fabsf(f);
  if (isnan(f)) return 7;
  if (a >= 6.f) return sign | 7;
  // Same nearest-code search as the host (ties to the even code), unrolled over the 7 intervals.
  int lo = 0;
#pragma unroll
  for (int i = 1; i < 8; ++i) lo = t[i] <= a ? i : lo;
  const int hi = lo + 1;
  float tl = 0.f, th = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    tl = i == lo ? t[i] : tl;
    th = i == hi ? t[i] : th;
  }
  const float dl = a - tl, dh = th - a;
  int code = (dl < dh) ? lo : (dh < dl) ? hi : ((lo & 1) ? hi : lo);
  return sign | uint8_t(code);
}

// 2^ceil(log2(max(amax, amin) / qmax)) exactly as the host: float quotient, log2 rounded to float, ceil.
__device__ __forceinline__ float pow2_scale(float amax, float qmax, float amin) {
  const float a = amax < amin ? amin : amax;
  const float l = float(log2(double(a / qmax)));
  return ldexpf(1.f, int(ceilf(l)));
}
__device__ __forceinline__ float clampf(float v, float lo, float hi) { return v < lo ? lo : (hi < v ? hi : v); }
__device__ __forceinline__ float amax_step(float m, float v) {
  const float a = fabsf(v);
  return m < a ? a : m;
}
__device__ __forceinline__ float fp8_rt(float x, float s) {
  return e4m3_to_f32(f32_to_e4m3(clampf(x / s, -448.f, 448.f))) * s;
}

// ---- FP8 tensor cores (mma.sync m16n8k32 e4m3, fp32 accumulate; sm_89 and later). Tiles staged in shared memory
// as rows of kMmaBK bytes padded to kMmaLd (+16 B: conflict-free fragment loads).
constexpr int kMmaBM = 64, kMmaBN = 128, kMmaBK = 128, kMmaLd = kMmaBK + 16;
__device__ __forceinline__ void mma_e4m3(float* c, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ---- asynchronous copies and fragment loads (sm_80 and later), bf16 mma.sync (m16n8k16, fp32 accumulate)
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
#endif
}
// 8 and 4 bytes through L1 (the .cg form takes 16 only): entries not 16-byte aligned, per-row scales beside a tile.
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 8 : 0));
#endif
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 4 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
// Four 8 x 16-byte matrices; thread t addresses row t % 8 of matrix t / 8 and gets 4 bytes of each (row t / 4,
// bytes 4 (t % 4)...): for 8-bit data exactly the mma's A and B fragment registers.
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#endif
}
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, const uint32_t* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// ---- reductions
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum; every thread gets the result. `sh` needs 32 floats.
__device__ __forceinline__ float block_sum(float v, float* sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : 0.f;
  r = warp_sum(r);
  return r;
}

// ---- KV codec (kv_format.cpp), one warp per vector. Bytes identical to KvCodec::encode.
__device__ __forceinline__ void codec_encode_warp(const DevCodec& c, const float* x, uint8_t* dst, int lane) {
  if (c.dtype == 0) {
    for (int i = lane; i < c.dim; i += 32) reinterpret_cast<float*>(dst)[i] = x[i];
    return;
  }
  if (c.dtype == 1) {
    for (int i = lane; i < c.dim; i += 32) {
      const uint16_t h = f2bf(x[i]);
      dst[2 * i] = uint8_t(h & 0xff);
      dst[2 * i + 1] = uint8_t(h >> 8);
    }
    return;
  }
  if (c.index_key) {
    float amax = 0.f;
    for (int i = lane; i < c.dim; i += 32) amax = amax_step(amax, x[i]);
    amax = warp_max(amax);  // max is order-independent
    const float s = pow2_scale(amax, 448.f, 1e-4f);
    for (int i = lane; i < c.dim; i += 32) dst[i] = f32_to_e4m3(clampf(x[i] / s, -448.f, 448.f));
    if (lane == 0) {
      const uint32_t b = __float_as_uint(s);
      for (int k = 0; k < 4; ++k) dst[c.dim + k] = uint8_t(b >> (8 * k));
    }
    return;
  }
  const int nope = c.dim - c.rope, nsc = (nope + 63) / 64;
  uint8_t* scales = dst + nope + 2 * c.rope;
  for (int b = 0; b < nope; b += 64) {
    const int e = min(nope, b + 64);
    float amax = 0.f;
    for (int i = b + lane; i < e; i += 32) amax = amax_step(amax, x[i]);
    amax = warp_max(amax);
    const float s = pow2_scale(amax, 448.f, 1e-4f);
    if (lane == 0) scales[b / 64] = uint8_t(__float_as_uint(s) >> 23);  // s = 2^k, normal: biased exponent
    for (int i = b + lane; i < e; i += 32) dst[i] = f32_to_e4m3(clampf(x[i] / s, -448.f, 448.f));
  }
  for (int i = lane; i < c.rope; i += 32) {
    const uint16_t h = f2bf(x[nope + i]);
    dst[nope + 2 * i] = uint8_t(h & 0xff);
    dst[nope + 2 * i + 1] = uint8_t(h >> 8);
  }
  for (int i = nsc + lane; i < c.bytes - (nope + 2 * c.rope); i += 32) scales[i] = 0;
}
// Element i of an encoded vector.
__device__ __forceinline__ float codec_decode(const DevCodec& c, const uint8_t* src, int i) {
  if (c.dtype == 0) return reinterpret_cast<const float*>(src)[i];
  if (c.dtype == 1) return bf2f(uint16_t(src[2 * i] | (uint16_t(src[2 * i + 1]) << 8)));
  if (c.index_key) {
    const uint32_t b = uint32_t(src[c.dim]) | (uint32_t(src[c.dim + 1]) << 8) | (uint32_t(src[c.dim + 2]) << 16) |
                       (uint32_t(src[c.dim + 3]) << 24);
    return e4m3_to_f32(src[i]) * __uint_as_float(b);
  }
  const int nope = c.dim - c.rope;
  if (i < nope) return e4m3_to_f32(src[i]) * e8m0_to_f32(src[nope + 2 * c.rope + i / 64]);
  const int r = i - nope;
  return bf2f(uint16_t(src[nope + 2 * r] | (uint16_t(src[nope + 2 * r + 1]) << 8)));
}

// A step item's (start position, first row, rows, KV slot), from the device table.
struct Item {
  int start, row0, len, slot;
};
__device__ __forceinline__ Item item_of(const DevMeta& m, int i) {
  const int32_t* p = m.items + int64_t(i) * 4;
  return {p[0], p[1], p[2], p[3]};
}

// Address of item i's block for position-derived block index bi (checks the table and the arena).
__device__ __forceinline__ uint8_t* block_ptr(const DevMeta& m, const DevView& v, int item, int64_t bi, int* err) {
  if (bi < 0 || bi >= m.max_blocks) {
    report(err, kErrBlockIndex, item, bi, m.max_blocks);
    return nullptr;
  }
  const int32_t b = m.block_table[int64_t(item) * m.max_blocks + bi];
  if (b < 0 || b >= v.n_blocks) {
    report(err, kErrBlock, item, bi, b);
    return nullptr;
  }
  return v.arena + int64_t(b) * v.block_bytes;
}
__device__ __forceinline__ uint8_t* slot_ptr(const DevView& v, int slot, int* err) {
  if (slot < 0 || slot >= v.n_slots) {
    report(err, kErrSlot, slot, v.n_slots);
    return nullptr;
  }
  return v.arena + v.slots_offset + int64_t(slot) * v.slot_bytes;
}

// Copies n scattered rows of `bytes` bytes (row r from src[r]; zeros where src[r] is null) into shared memory at
// dst + r * bytes: warp per row, each lane's loads of a row issued together. Paged KV rows sit in different
// blocks, so a warp decoding one row element by element from global memory waits one latency per element; staged
// this way a tile costs a few. 4-byte words when `bytes` allows (the arena's regions are 64-byte aligned). No
// division in the loops (64-bit division is ~70 instructions on the GPU).
__device__ __forceinline__ void stage_rows(const uint8_t* const* src, int n, int bytes, uint8_t* dst) {
  constexpr int U = 8;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31), nwarps = int(blockDim.x >> 5);
  const bool words = (bytes & 3) == 0;
  const int per = words ? bytes / 4 : bytes;
  for (int r = warp; r < n; r += nwarps) {
    const uint8_t* s = src[r];
    for (int base = lane; base < per; base += 32 * U) {
      uint32_t v[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int i = base + 32 * u;
        v[u] = (!s || i >= per) ? 0u : words ? __ldg(reinterpret_cast<const uint32_t*>(s) + i) : uint32_t(__ldg(s + i));
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int i = base + 32 * u;
        if (i >= per) break;
        if (words)
          reinterpret_cast<uint32_t*>(dst + r * bytes)[i] = v[u];
        else
          dst[r * bytes + i] = uint8_t(v[u]);
      }
    }
  }
}

}  // namespace dsv4::cuda
