// Linear layers in the checkpoint formats, de-quantized in registers (nothing is expanded in memory).
//  - M <= 16, vector-friendly shapes: a GEMV that streams each weight byte once for all M rows (16-byte loads,
//    4 rows per warp, x staged in shared memory, split-K over the grid when the output is narrow).
//  - FP8 weights with act_fp8 and M > 16: FP8 x FP8 tensor cores (mma.sync m16n8k32 e4m3, every target),
//    one 128-wide K block per partial sum, scaled by s_act * s_w as the reference kernel does.
//  - otherwise: an fp32 SIMT tiled GEMM (exact products as the CPU; only the summation order differs), or a
//    plain per-output kernel for shapes the tiles do not fit.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_gemm.cuh"
#include "kernels/cuda/cuda_weights.cuh"

namespace dsv4::cuda {
namespace {

constexpr int kGemvWarps = 8;
// Rows per warp: 4 where the accumulators fit; 2 at MT = 16 (64 accumulators + 4 rows in flight twice would leave
// one block per SM). 8 at MT <= 2 (16 weight loads in flight per lane) measured slower on the H200: decode B = 1
// 46.0 -> 42.2 tok/s (docs/perf-notes.md, v5).
constexpr int gemv_rows_per_warp(int mt) { return mt >= 16 ? 2 : 4; }

// An A/B switch for device runs (bench/gpu/ab_decode.sh), read once: DSV4_CUDA_GEMV_DECODE_MMA=0 turns the
// tensor-core GEMV at 2 <= M <= 16 off (the SIMT GEMV takes those rows; B = 16 168.4 vs 187.0 tok/s with it).
bool gemv_decode_mma() {
  static const bool on = [] {
    const char* v = std::getenv("DSV4_CUDA_GEMV_DECODE_MMA");
    return !v || !*v || std::strcmp(v, "0") != 0;
  }();
  return on;
}
constexpr int kGemvSmemFloats = 16384;  // 64 KB of staged activations per block

// Split K: every block of a tile (one per split, gridDim.y of them) has written its partial sums of rows
// [r0, r0 + rows); the block arriving last sums them in split order (as splitk_reduce_k does) and resets the
// tile's counter, instead of a second kernel. Called by every thread of the block.
__device__ __forceinline__ void splitk_finish(const float* part, unsigned* arrival, int64_t M, int64_t N, int64_t r0,
                                              int rows, int64_t nend, float* y, int64_t ldy, int out_bf16,
                                              bool& last) {
  __threadfence();  // this thread's partials visible device-wide before the block's arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(arrival, 1u) == gridDim.y - 1;
    __threadfence();  // the other splits' partials are read after their arrivals
  }
  __syncthreads();
  if (!last) return;
  for (int i = threadIdx.x; i < rows * int(M); i += blockDim.x) {
    const int m = i / rows;
    const int64_t n = r0 + (i - m * rows);
    if (n >= nend) continue;
    float sum = 0.f;
    for (unsigned p = 0; p < gridDim.y; ++p) sum += __ldcg(&part[(int64_t(p) * M + m) * N + n]);
    y[m * ldy + n] = out_bf16 ? rbf16(sum) : sum;
  }
  if (threadIdx.x == 0) *arrival = 0;
}

// Persistent decode GEMV. grid (blocks per group, splits, groups): a block stages its group's slice of x (one K
// range of <= KR columns, a multiple of 128; MT >= M rows) in shared memory once (stage_x), then streams row tiles
// of output rows (R per warp), the next (tile, chunk) step's weights always in flight. QUANT: the staging
// quantizes each 128-column block (the reference's FP8 activation round trip) on the way in.
template <int FMT, int MT, bool QUANT>
__global__ void __launch_bounds__(256) gemv_k(const float* __restrict__ x, int64_t M, int64_t ldx, DevWeight w,
                                              int64_t npg, int64_t KR, float* __restrict__ y, int64_t ldy,
                                              float* __restrict__ part, unsigned* __restrict__ arrivals,
                                              int out_bf16) {
  extern __shared__ float xs[];  // [MT][KR], permuted
  __shared__ bool last_split;
  constexpr int CH = Chunk<FMT>::n, R = gemv_rows_per_warp(MT), TR = kGemvWarps * R;  // TR rows per tile
  const int64_t K = w.in, N = w.out, g = blockIdx.z;
  const int64_t k0 = int64_t(blockIdx.y) * KR, kl = min(K, k0 + KR) - k0, NC = KR / CH;
  const float* xg = x + g * K + k0;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t nch = kl / CH, steps = (nch + 31) / 32;          // chunk steps per row tile
  const int64_t tiles = (npg + TR - 1) / TR, n_items = ((tiles - blockIdx.x + gridDim.x - 1) / gridDim.x) * steps;
  // Items are (tile, step) pairs walked in order, counted without division (64-bit division is ~70 instructions
  // and ran in every iteration).
  auto row_of = [&](int64_t tile) { return g * npg + (blockIdx.x + tile * gridDim.x) * TR + warp * R; };
  auto advance = [&](int64_t& tile, int64_t& step) {
    if (++step == steps) {
      step = 0;
      ++tile;
    }
  };
  auto fetch = [&](int64_t tile, int64_t step, bool live, uint4* raw, float* sc) {
    const int64_t n0 = row_of(tile), c = lane + step * 32, nend = min(N, (g + 1) * npg);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (live && n0 + r < nend && c < nch) {
        load_chunk<FMT>(w, n0 + r, k0 + c * CH, raw[r], sc[r]);
      } else {
        raw[r] = make_uint4(0, 0, 0, 0);
        sc[r] = 0.f;
      }
    }
  };
  float acc[R][MT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;
  uint4 cur[R];
  float csc[R];
  int64_t tile = 0, step = 0, ntile = 0, nstep = 0;
  fetch(0, 0, n_items > 0, cur, csc);  // the first weights in flight while x is staged
  advance(ntile, nstep);
  stage_x<CH, QUANT>(xs, MT, KR, kl, [&](int m) { return m < M ? xg + m * ldx : nullptr; });
  __syncthreads();
  for (int64_t item = 0; item < n_items; ++item) {
    uint4 nxt[R];
    float nsc[R];
    fetch(ntile, nstep, item + 1 < n_items, nxt, nsc);  // the next step's weights in flight while these multiply
    const int64_t c = lane + step * 32;
    if (c < nch) {
      // A chunk shares one power-of-two scale (FP8: 128 x 128 blocks, FP4: 32 columns), so at few rows its
      // products are summed unscaled and scaled once per chunk (exactly the same products; a multiply per
      // weight was a quarter of the ALU work of a weight-streaming kernel).
      constexpr bool kChunkScale = (FMT == kFP8 || FMT == kFP4) && MT <= 4;
      float cs[R][MT];
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) cs[r][m] = 0.f;
#pragma unroll
      for (int s = 0; s < CH / 4; ++s) {
        float wv[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) decode4<FMT>(cur[r], s, kChunkScale ? 1.f : csc[r], wv[r]);
        const float* xp = &xs[(s * NC + c) * 4];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float4 xv = *reinterpret_cast<const float4*>(xp + m * KR);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            float& t = kChunkScale ? cs[r][m] : acc[r][m];
            t += wv[r][0] * xv.x;
            t += wv[r][1] * xv.y;
            t += wv[r][2] * xv.z;
            t += wv[r][3] * xv.w;
          }
        }
      }
      if constexpr (kChunkScale) {
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int m = 0; m < MT; ++m) acc[r][m] += csc[r] * cs[r][m];
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      cur[r] = nxt[r];
      csc[r] = nsc[r];
    }
    if (step == steps - 1) {  // end of a row tile: reduce across lanes, write, restart
      const int64_t n0 = row_of(tile), nend = min(N, (g + 1) * npg);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          const float v = warp_sum(acc[r][m]);
          acc[r][m] = 0.f;
          const int64_t n = n0 + r;
          if (lane == 0 && n < nend && m < M) {
            if (part)
              part[(int64_t(blockIdx.y) * M + m) * N + n] = v;
            else
              y[m * ldy + n] = out_bf16 ? rbf16(v) : v;
          }
        }
      if (part && arrivals) {
        const int64_t t = blockIdx.x + tile * gridDim.x;
        splitk_finish(part, arrivals + g * tiles + t, M, N, g * npg + t * TR, TR, nend, y, ldy, out_bf16, last_split);
      }
    }
    tile = ntile;
    step = nstep;
    advance(ntile, nstep);
  }
}

__global__ void splitk_reduce_k(const float* part, int splits, int64_t M, int64_t N, float* y, int64_t ldy,
                                int out_bf16) {
  const int64_t total = M * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int p = 0; p < splits; ++p) s += part[int64_t(p) * total + i];
    const int64_t m = i / N, n = i % N;
    y[m * ldy + n] = out_bf16 ? rbf16(s) : s;
  }
}

// Decode on FP8 tensor cores (2 <= M <= 16 rows, FP8 weights with 128 x 128 scales, FP8 activations): the
// M x 16 activation codes are the mma's A tile (rows past M are zero) in shared memory; each warp streams 8
// weight rows as B fragments straight from global memory, 16 contiguous bytes per lane and 64-column round,
// kGemvMmaU rounds in flight. The mma's 32 k-slots of a lane pair with bytes [0, 8) and [8, 16) of its 16 (the
// same slot-to-column map for A and B, so the dot products are unchanged); each 128-column block's products are
// promoted to fp32 with the activation's and the weight's scales, as the reference de-quantizes.
constexpr int kGemvMmaU = 8, kGemvMmaRows = 64;  // rounds in flight; weight rows per block (8 per warp)
constexpr int64_t kGemvMmaMaxKR = 4096;
__global__ void __launch_bounds__(256) gemv_mma_k(const uint8_t* __restrict__ codes, const float* __restrict__ cs,
                                                  int64_t M, int groups, DevWeight w, int64_t npg, int64_t KR,
                                                  float* __restrict__ y, int64_t ldy, float* __restrict__ part,
                                                  unsigned* __restrict__ arrivals, int out_bf16) {
  extern __shared__ __align__(16) uint8_t gsm[];
  __shared__ bool last_split;
  const int64_t ld = KR + 64;  // +64 B per row: the two rows of a quarter warp's 16-byte reads on distinct banks
  const int64_t K = w.in, N = w.out, g = blockIdx.z, nkb = KR / 128;
  uint8_t* xs = gsm;                                                        // [16][ld] codes
  float* sa = reinterpret_cast<float*>(gsm + 16 * ld);                     // [16][nkb] scales
  const int64_t k0 = int64_t(blockIdx.y) * KR, kl = min(K, k0 + KR) - k0;  // kl: a multiple of 128
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int64_t nend = min(N, (g + 1) * npg), nw = g * npg + int64_t(blockIdx.x) * kGemvMmaRows + warp * 8;
  const int64_t n = nw + gid;  // this lane's weight row (B fragment column)
  const bool row_ok = n < nend, warp_ok = nw < nend;
  const uint8_t* wrow = w.data + n * K + k0 + tig * 16;
  // The first rounds of weights in flight while the activations are staged.
  uint4 wv[kGemvMmaU];
#pragma unroll
  for (int u = 0; u < kGemvMmaU; ++u)
    wv[u] = row_ok && u * 64 < kl ? __ldcs(reinterpret_cast<const uint4*>(wrow + u * 64)) : make_uint4(0, 0, 0, 0);
  const int c16 = int(kl / 16), nkbi = int(nkb);
  for (int i = threadIdx.x; i < 16 * c16; i += blockDim.x) {
    const int m = i / c16, c = i - m * c16;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (m < M) v = *reinterpret_cast<const uint4*>(codes + (m * groups + g) * K + k0 + c * 16);
    *reinterpret_cast<uint4*>(xs + m * ld + c * 16) = v;
  }
  for (int i = threadIdx.x; i < 16 * nkbi; i += blockDim.x) {
    const int m = i / nkbi, b = i - m * nkbi;
    sa[i] = m < M && b * 128 < kl ? cs[(m * groups + g) * (K / 128) + k0 / 128 + b] : 0.f;
  }
  __syncthreads();
  const bool two = M > 8;  // rows 8-15 of the A tile exist
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t kk = 0; kk < kl; kk += 64 * kGemvMmaU) {
    uint4 nx[kGemvMmaU];
    const int64_t kn = kk + 64 * kGemvMmaU;
#pragma unroll
    for (int u = 0; u < kGemvMmaU; ++u)  // the next rounds in flight while these multiply
      nx[u] = row_ok && kn + u * 64 < kl ? __ldcs(reinterpret_cast<const uint4*>(wrow + kn + u * 64))
                                         : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < kGemvMmaU; u += 2) {  // one 128-column block: two rounds
      const int64_t kb0 = kk + u * 64;
      if (kb0 >= kl) break;
      const float sw = warp_ok ? fp8_scale(w, nw, k0 + kb0) : 0.f;  // 8-row groups never straddle a scale tile
      float blk[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t kx = kb0 + h * 64 + tig * 16;
        const uint4 xa = *reinterpret_cast<const uint4*>(xs + gid * ld + kx);
        const uint4 xb = two ? *reinterpret_cast<const uint4*>(xs + (gid + 8) * ld + kx) : make_uint4(0, 0, 0, 0);
        const uint4 b = wv[u + h];
        const uint32_t a0[4] = {xa.x, xb.x, xa.y, xb.y}, b0[2] = {b.x, b.y};
        const uint32_t a1[4] = {xa.z, xb.z, xa.w, xb.w}, b1[2] = {b.z, b.w};
        mma_e4m3(blk, a0, b0);
        mma_e4m3(blk, a1, b1);
      }
      const int64_t kb = kb0 / 128;
      // The C fragment's columns are weight rows nw + 2 tig, + 1; its rows tokens gid and gid + 8.
      const float s0 = sa[gid * nkb + kb] * sw, s1 = sa[(gid + 8) * nkb + kb] * sw;
      acc[0] += blk[0] * s0;
      acc[1] += blk[1] * s0;
      acc[2] += blk[2] * s1;
      acc[3] += blk[3] * s1;
    }
#pragma unroll
    for (int u = 0; u < kGemvMmaU; ++u) wv[u] = nx[u];
  }
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int64_t m = gid + (q >> 1) * 8, nn = nw + tig * 2 + (q & 1);
    if (m < M && nn < nend) {
      if (part)
        part[(int64_t(blockIdx.y) * M + m) * N + nn] = acc[q];
      else
        y[m * ldy + nn] = out_bf16 ? rbf16(acc[q]) : acc[q];
    }
  }
  if (part && arrivals)
    splitk_finish(part, arrivals + g * gridDim.x + blockIdx.x, M, N, g * npg + int64_t(blockIdx.x) * kGemvMmaRows,
                  kGemvMmaRows, nend, y, ldy, out_bf16, last_split);
}

// fp32 SIMT tiles: 64 x 64 outputs per block, 4 x 4 per thread. Requires each 64-row tile inside one group.
__global__ void __launch_bounds__(256) gemm_simt_k(const float* __restrict__ x, int64_t M, int64_t ldx, DevWeight w,
                                                   int64_t npg, float* __restrict__ y, int64_t ldy, int out_bf16) {
  __shared__ float As[16][68], Bs[16][68];
  const int64_t K = w.in, N = w.out, m0 = int64_t(blockIdx.y) * 64, n0 = int64_t(blockIdx.x) * 64;
  const float* xg = x + (n0 / npg) * K;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int idx = threadIdx.x + i * 256, r = idx >> 4, kk = idx & 15;
      const int64_t k = k0 + kk;
      As[kk][r] = (m0 + r < M && k < K) ? xg[(m0 + r) * ldx + k] : 0.f;
      Bs[kk][r] = (n0 + r < N && k < K) ? wload(w, n0 + r, k) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < 16; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = As[kk][ty * 4 + i];
        b[i] = Bs[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < M && n < N) y[m * ldy + n] = out_bf16 ? rbf16(acc[i][j]) : acc[i][j];
    }
}

// Any shape, any grouping: one thread per output.
__global__ void gemm_naive_k(const float* x, int64_t M, int64_t ldx, DevWeight w, int64_t npg, float* y, int64_t ldy,
                             int out_bf16) {
  const int64_t total = M * w.out;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / w.out, n = i % w.out;
    const float* xr = x + m * ldx + (n / npg) * w.in;
    float s = 0.f;
    for (int64_t k = 0; k < w.in; ++k) s += xr[k] * wload(w, n, k);
    y[m * ldy + n] = out_bf16 ? rbf16(s) : s;
  }
}

// Per-128 FP8 quantization of the rows of each group slice (quant.cpp fp8_roundtrip). One warp per block.
// Per-128 FP8 round trip of [M, groups x K] into any of: the values (xq), their bf16 copies (xb: exact, an e4m3
// code times a power of two), the codes and the scales.
__global__ void quant_k(const float* x, int64_t M, int groups, int64_t K, int64_t ldx, float* xq, uint8_t* codes,
                        float* scales, uint16_t* xb = nullptr) {
  const int64_t nb = (K + 127) / 128, total = M * groups * nb;
  const int lane = threadIdx.x & 31;
  for (int64_t wb = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; wb < total;
       wb += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int64_t row = wb / nb, b = (wb % nb) * 128, e = min(K, b + 128);
    const int64_t m = row / groups, g = row % groups;
    const float* src = x + m * ldx + g * K;
    const int64_t dst = (m * groups + g) * K;  // dense [M, groups * K]
    float amax = 0.f;
    for (int64_t i = b + lane; i < e; i += 32) amax = amax_step(amax, src[i]);
    const float s = pow2_scale(warp_max(amax), 448.f, 1e-4f);
    for (int64_t i = b + lane; i < e; i += 32) {
      const uint8_t c = f32_to_e4m3(clampf(src[i] / s, -448.f, 448.f));
      if (xq) xq[dst + i] = e4m3_to_f32(c) * s;
      if (xb) xb[dst + i] = f2bf(e4m3_to_f32(c) * s);
      if (codes) codes[dst + i] = c;
    }
    if (scales && lane == 0) scales[row * nb + b / 128] = s;
  }
}

// ---- FP8 tensor cores: C[64 x 128] per block, 8 warps as 2 (m) x 4 (n), each 32 x 32 = 2 x 4 mma tiles.
// A: e4m3 codes [M, K] + scale [M, K/128]; B: the weight's e4m3 [N, K] (K-major = mma "col") + its tile scales.

__global__ void __launch_bounds__(256) gemm_fp8_mma_k(const uint8_t* __restrict__ ac, const float* __restrict__ as,
                                                      int64_t M, int groups, DevWeight w, int64_t npg,
                                                      float* __restrict__ y, int64_t ldy, int out_bf16) {
  __shared__ __align__(16) uint8_t As[kMmaBM * kMmaLd];
  __shared__ __align__(16) uint8_t Bs[kMmaBN * kMmaLd];
  __shared__ float sa[kMmaBM], sw[kMmaBN];
  const int64_t K = w.in, N = w.out, m0 = int64_t(blockIdx.y) * kMmaBM, n0 = int64_t(blockIdx.x) * kMmaBN;
  const int64_t g = n0 / npg, lda = int64_t(groups) * K, nkb = K / kMmaBK;
  const uint8_t* ag = ac + g * K;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wm = warp >> 2, wn = warp & 3;
  const int gid = lane >> 2, tig = lane & 3;
  float acc[2][4][4] = {};
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kMmaBK;
    for (int i = threadIdx.x; i < kMmaBM * 8; i += 256) {  // 8 x 16 B per row
      const int r = i >> 3, c = i & 7;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (m0 + r < M) v = *reinterpret_cast<const uint4*>(ag + (m0 + r) * lda + k0 + c * 16);
      *reinterpret_cast<uint4*>(&As[r * kMmaLd + c * 16]) = v;
    }
    for (int i = threadIdx.x; i < kMmaBN * 8; i += 256) {
      const int r = i >> 3, c = i & 7;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (n0 + r < N) v = __ldcs(reinterpret_cast<const uint4*>(w.data + (n0 + r) * K + k0 + c * 16));
      *reinterpret_cast<uint4*>(&Bs[r * kMmaLd + c * 16]) = v;
    }
    if (threadIdx.x < kMmaBM)
      sa[threadIdx.x] = m0 + threadIdx.x < M ? as[(m0 + threadIdx.x) * (groups * nkb) + g * nkb + kb] : 0.f;
    if (threadIdx.x < kMmaBN) sw[threadIdx.x] = n0 + threadIdx.x < N ? fp8_scale(w, n0 + threadIdx.x, k0) : 0.f;
    __syncthreads();
    float blk[2][4][4] = {};
#pragma unroll
    for (int ks = 0; ks < kMmaBK; ks += 32) {
      uint32_t af[2][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint8_t* p = &As[(wm * 32 + i * 16 + gid) * kMmaLd + ks + tig * 4];
        af[i][0] = *reinterpret_cast<const uint32_t*>(p);
        af[i][1] = *reinterpret_cast<const uint32_t*>(p + 8 * kMmaLd);
        af[i][2] = *reinterpret_cast<const uint32_t*>(p + 16);
        af[i][3] = *reinterpret_cast<const uint32_t*>(p + 8 * kMmaLd + 16);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint8_t* p = &Bs[(wn * 32 + j * 8 + gid) * kMmaLd + ks + tig * 4];
        bf[j][0] = *reinterpret_cast<const uint32_t*>(p);
        bf[j][1] = *reinterpret_cast<const uint32_t*>(p + 16);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_e4m3(blk[i][j], af[i], bf[j]);
    }
    // Promote this K block to fp32 with its scales (the reference's per-block scaling).
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = wm * 32 + i * 16 + gid + (e >> 1) * 8, c = wn * 32 + j * 8 + tig * 2 + (e & 1);
          acc[i][j][e] += blk[i][j][e] * (sa[r] * sw[c]);
        }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + wm * 32 + i * 16 + gid + (e >> 1) * 8, n = n0 + wn * 32 + j * 8 + tig * 2 + (e & 1);
        if (m < M && n < N) y[m * ldy + n] = out_bf16 ? rbf16(acc[i][j][e]) : acc[i][j][e];
      }
}

__global__ void reduce_sum_k(const float4* x, int64_t n4, float* out) {
  float s = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 v = __ldcs(x + i);
    s += (v.x + v.y) + (v.z + v.w);
  }
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) atomicAdd(out, s);
}

// A dense mma loop (8 independent accumulators). FP8: on sm_90 ptxas emulates the e4m3 mma with f16 tensor-core
// instructions, and this loop of loop-invariant fragments measures a rate (1.6 PFLOP/s on an H200, 2.5x the bf16
// loop) that no kernel converting real fragments reaches; it is not the FP8 (wgmma-only) peak. BF16: the native
// m16n8k16.
template <bool kBf16>
__global__ void mma_peak_k(float* sink, int iters) {
  uint32_t a[4] = {0x38383838u ^ threadIdx.x, 0x30303030u, 0x38383838u, 0x34343434u}, b[2] = {0x38383838u, 0x3030u};
  float c[8][4] = {};
  for (int it = 0; it < iters; ++it)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if constexpr (kBf16)
        mma_bf16(c[j], a, b);
      else
        mma_e4m3(c[j], a, b);
    }
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j) s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
  if (s == 12345.f) sink[0] = s;  // keeps the loop alive
}

struct Plan {
  int kind = 0;  // 0 naive, 1 gemv, 2 simt, 3 mma, 4 decode mma, 5 bf16 mma over FP8 weights
  int mt = 0, splits = 1;
  int64_t KR = 0, npg = 0;
};

Plan plan(const LinearCall& c, int num_sms) {
  Plan p;
  const DevWeight& w = c.w;
  p.npg = w.out / (c.groups > 0 ? c.groups : 1);
  const int ch = w.fmt == kF32 ? 4 : w.fmt == kBF16 ? 8 : w.fmt == kFP8 ? 16 : 32;
  const bool aligned = reinterpret_cast<uintptr_t>(w.data) % 16 == 0 && w.in % ch == 0 &&
                       (w.fmt != kFP8 || w.block % 16 == 0);
  if (gemv_decode_mma() && c.M >= 2 && c.M <= 16 && aligned && c.act_fp8 && w.fmt == kFP8 && w.block == kMmaBK &&
      w.in % kMmaBK == 0 && p.npg % 8 == 0 && w.row0 % 8 == 0) {
    p.kind = 4;
    const int64_t blocks = cdiv(p.npg, kGemvMmaRows) * c.groups;
    int64_t splits = cdiv(w.in, kGemvMmaMaxKR);
    while (blocks * splits < 2 * num_sms && w.in / (splits * 2) >= 512) splits *= 2;
    p.KR = cdiv(cdiv(w.in, splits), kMmaBK) * kMmaBK;
    p.splits = int(cdiv(w.in, p.KR));
    return p;
  }
  if (c.M <= 16 && aligned) {
    p.kind = 1;
    p.mt = c.M <= 1 ? 1 : c.M <= 2 ? 2 : c.M <= 4 ? 4 : c.M <= 8 ? 8 : 16;
    const int64_t cap = kGemvSmemFloats / p.mt;  // columns of x that fit the staging buffer (a multiple of 128)
    int64_t splits = cdiv(w.in, cap);
    const int64_t blocks = cdiv(p.npg, kGemvWarps * gemv_rows_per_warp(p.mt)) * c.groups;
    // Narrow outputs: more K splits until the grid covers the machine twice (each split >= 256 columns).
    while (blocks * splits < 2 * num_sms && w.in / (splits * 2) >= 256) splits *= 2;
    p.KR = cdiv(cdiv(w.in, splits), 128) * 128;
    p.splits = int(cdiv(w.in, p.KR));
    return p;
  }
  if (c.act_fp8 && w.fmt == kFP8 && w.block == kMmaBK && w.in % kMmaBK == 0 && c.M > 16 &&
      (c.groups == 1 || p.npg % kMmaBN == 0)) {
    p.kind = 3;
    return p;
  }
  if (!c.act_fp8 && c.bf16_input && c.M > 16 && gemm_w8_bf16_fits(w, p.npg, c.groups)) {
    p.kind = 5;
    return p;
  }
  if (c.groups == 1 || p.npg % 64 == 0) {
    p.kind = 2;
    return p;
  }
  p.kind = 0;
  return p;
}

template <int FMT, int MT, bool Q>
void launch_gemv(const Launch& L, const LinearCall& c, const Plan& p, float* part, unsigned* arrivals) {
  const size_t sm = size_t(MT) * size_t(p.KR) * 4;
  static unsigned long long attr_set = 0;  // per instantiation and device
  if (first_on_device(attr_set)) {
    DSV4_CUDA_CHECK(cudaFuncSetAttribute(gemv_k<FMT, MT, Q>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         kGemvSmemFloats * 4));
  }
  static int per_sm = 0;  // resident blocks per SM for this instantiation
  if (!per_sm) {
    DSV4_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_k<FMT, MT, Q>, 256, sm));
    if (per_sm < 1) per_sm = 1;
  }
  const int64_t tiles = cdiv(p.npg, kGemvWarps * gemv_rows_per_warp(MT)), want = int64_t(per_sm) * L.num_sms / (int64_t(p.splits) * c.groups);
  dim3 grid(unsigned(std::max<int64_t>(1, std::min(tiles, want))), unsigned(p.splits), unsigned(c.groups));
  gemv_k<FMT, MT, Q><<<grid, 256, sm, L.stream>>>(c.x, c.M, c.ldx, c.w, p.npg, p.KR, c.y, c.ldy,
                                                    p.splits > 1 ? part : nullptr, arrivals, c.out_bf16);
  DSV4_CUDA_LAUNCHED();
}

template <int FMT, bool Q>
void gemv_mt(const Launch& L, const LinearCall& c, const Plan& p, float* part, unsigned* arrivals) {
  switch (p.mt) {
    case 1: launch_gemv<FMT, 1, Q>(L, c, p, part, arrivals); break;
    case 2: launch_gemv<FMT, 2, Q>(L, c, p, part, arrivals); break;
    case 4: launch_gemv<FMT, 4, Q>(L, c, p, part, arrivals); break;
    case 8: launch_gemv<FMT, 8, Q>(L, c, p, part, arrivals); break;
    default: launch_gemv<FMT, 16, Q>(L, c, p, part, arrivals); break;
  }
}

}  // namespace

int64_t linear_ws_bytes(const LinearCall& c, int num_sms) {
  const Plan p = plan(c, num_sms);
  int64_t b = 0;
  const int64_t xin = c.M * int64_t(c.groups) * c.w.in;
  const bool q = c.act_fp8 && (c.w.fmt == kFP8 || c.w.fmt == kFP4);
  if (q && p.kind == 2 || (q && p.kind == 0)) b += xin * 4;                           // quantized x (f32)
  if (q && (p.kind == 3 || p.kind == 4)) b += cdiv(xin, 256) * 256 + c.M * c.groups * cdiv(c.w.in, 128) * 4;  // codes + scales
  if (p.kind == 4 && p.splits > 1) b += 256 + int64_t(p.splits) * c.M * c.w.out * 4;
  if (p.kind == 1 && p.splits > 1) b += int64_t(p.splits) * c.M * c.w.out * 4;
  if (p.kind == 5) b += gemm_w8_bf16_ws_bytes(c.M, c.groups, c.w);
  return cdiv(b, 256) * 256 + 512;
}

void quantize_fp8_codes(const Launch& L, const float* x, int64_t M, int64_t K, int64_t ldx, uint8_t* codes,
                        float* scales) {
  if (!M || !K) return;
  quant_k<<<grid1d(M * cdiv(K, 128) * 32, 256), 256, 0, L.stream>>>(x, M, 1, K, ldx, nullptr, codes, scales);
  DSV4_CUDA_LAUNCHED();
}

void quantize_fp8_bf16(const Launch& L, const float* x, int64_t M, int64_t K, int64_t ldx, uint16_t* values) {
  if (!M || !K) return;
  quant_k<<<grid1d(M * cdiv(K, 128) * 32, 256), 256, 0, L.stream>>>(x, M, 1, K, ldx, nullptr, nullptr, nullptr,
                                                                      values);
  DSV4_CUDA_LAUNCHED();
}

void linear(const Launch& L, const LinearCall& c, void* ws) {
  if (!c.M || !c.w.out) return;
  const Plan p = plan(c, L.num_sms);
  const DevWeight& w = c.w;
  const float* x = c.x;
  int64_t ldx = c.ldx;
  uint8_t* wsp = static_cast<uint8_t*>(ws);
  auto take = [&](int64_t bytes) {
    uint8_t* r = wsp;
    wsp += cdiv(bytes, 256) * 256;
    return r;
  };
  const bool q = c.act_fp8 && (w.fmt == kFP8 || w.fmt == kFP4);
  const int64_t nb = cdiv(w.in, 128);
  if (p.kind == 3) {
    uint8_t* codes = take(c.M * c.groups * w.in);
    float* sc = reinterpret_cast<float*>(take(c.M * c.groups * nb * 4));
    quant_k<<<grid1d(c.M * c.groups * nb * 32, 256), 256, 0, L.stream>>>(x, c.M, c.groups, w.in, ldx, nullptr, codes,
                                                                         sc);
    DSV4_CUDA_LAUNCHED();
    if (gemm_fp8_tc_enabled() && gemm_fp8_tc_fits(p.npg, c.groups)) {
      gemm_fp8_tc(L, codes, sc, c.M, c.groups, w, p.npg, c.y, c.ldy, c.out_bf16);
      return;
    }
    dim3 grid(unsigned(cdiv(w.out, kMmaBN)), unsigned(cdiv(c.M, kMmaBM)));
    gemm_fp8_mma_k<<<grid, 256, 0, L.stream>>>(codes, sc, c.M, c.groups, w, p.npg, c.y, c.ldy, c.out_bf16);
    DSV4_CUDA_LAUNCHED();
    return;
  }
  if (p.kind == 5) {
    gemm_w8_bf16(L, c.x, c.ldx, c.M, c.groups, w, p.npg, c.y, c.ldy, c.out_bf16,
                 take(gemm_w8_bf16_ws_bytes(c.M, c.groups, w)));
    return;
  }
  if (p.kind == 4) {
    uint8_t* codes = take(c.M * c.groups * w.in);
    float* sc = reinterpret_cast<float*>(take(c.M * c.groups * nb * 4));
    float* part = p.splits > 1 ? reinterpret_cast<float*>(take(int64_t(p.splits) * c.M * w.out * 4)) : nullptr;
    quant_k<<<grid1d(c.M * c.groups * nb * 32, 256), 256, 0, L.stream>>>(x, c.M, c.groups, w.in, ldx, nullptr, codes,
                                                                         sc);
    DSV4_CUDA_LAUNCHED();
    const int64_t tiles = cdiv(p.npg, kGemvMmaRows);
    unsigned* arrivals = p.splits > 1 && L.arrivals && tiles * c.groups <= L.n_arrivals ? L.arrivals : nullptr;
    const size_t sm = size_t(16 * (p.KR + 64)) + size_t(16 * (p.KR / 128) * 4);
    static unsigned long long attr = 0;
    static int smem_max = 0;
    if (first_on_device(attr)) smem_max = allow_max_dynamic_smem(reinterpret_cast<const void*>(gemv_mma_k));
    DSV4_CUDA_REQUIRE(sm <= size_t(smem_max), "linear on CUDA: the decode tensor-core GEMV's staging does not fit");
    dim3 grid(unsigned(tiles), unsigned(p.splits), unsigned(c.groups));
    gemv_mma_k<<<grid, 256, sm, L.stream>>>(codes, sc, c.M, c.groups, w, p.npg, p.KR, c.y, c.ldy, part, arrivals,
                                            c.out_bf16);
    DSV4_CUDA_LAUNCHED();
    if (p.splits > 1 && !arrivals) {
      splitk_reduce_k<<<grid1d(c.M * w.out, 256), 256, 0, L.stream>>>(part, p.splits, c.M, w.out, c.y, c.ldy,
                                                                       c.out_bf16);
      DSV4_CUDA_LAUNCHED();
    }
    return;
  }
  if (p.kind == 1) {
    float* part = p.splits > 1 ? reinterpret_cast<float*>(take(int64_t(p.splits) * c.M * w.out * 4)) : nullptr;
    // Split K reduces in the GEMV's last-arriving block where the tiles have counters, else in a second kernel.
    const int64_t tiles = cdiv(p.npg, int64_t(kGemvWarps) * gemv_rows_per_warp(p.mt)) * c.groups;
    unsigned* arrivals = p.splits > 1 && L.arrivals && tiles <= L.n_arrivals ? L.arrivals : nullptr;
    switch (w.fmt) {
      case kF32: gemv_mt<kF32, false>(L, c, p, part, arrivals); break;
      case kBF16: gemv_mt<kBF16, false>(L, c, p, part, arrivals); break;
      case kFP8:
        if (q)
          gemv_mt<kFP8, true>(L, c, p, part, arrivals);
        else
          gemv_mt<kFP8, false>(L, c, p, part, arrivals);
        break;
      default:
        if (q)
          gemv_mt<kFP4, true>(L, c, p, part, arrivals);
        else
          gemv_mt<kFP4, false>(L, c, p, part, arrivals);
        break;
    }
    if (p.splits > 1 && !arrivals) {
      splitk_reduce_k<<<grid1d(c.M * w.out, 256), 256, 0, L.stream>>>(part, p.splits, c.M, w.out, c.y, c.ldy,
                                                                       c.out_bf16);
      DSV4_CUDA_LAUNCHED();
    }
    return;
  }
  if (q) {
    float* xq = reinterpret_cast<float*>(take(c.M * c.groups * w.in * 4));
    quant_k<<<grid1d(c.M * c.groups * nb * 32, 256), 256, 0, L.stream>>>(x, c.M, c.groups, w.in, ldx, xq, nullptr,
                                                                         nullptr);
    DSV4_CUDA_LAUNCHED();
    x = xq;
    ldx = int64_t(c.groups) * w.in;
  }
  if (p.kind == 2) {
    DSV4_CUDA_REQUIRE(cdiv(c.M, 64) < 65536, "linear: too many rows");
    dim3 grid(unsigned(cdiv(w.out, 64)), unsigned(cdiv(c.M, 64)));
    gemm_simt_k<<<grid, 256, 0, L.stream>>>(x, c.M, ldx, w, p.npg, c.y, c.ldy, c.out_bf16);
    DSV4_CUDA_LAUNCHED();
    return;
  }
  gemm_naive_k<<<grid1d(c.M * w.out, 256), 256, 0, L.stream>>>(x, c.M, ldx, w, p.npg, c.y, c.ldy, c.out_bf16);
  DSV4_CUDA_LAUNCHED();
}

void reduce_sum(const Launch& L, const float* x, int64_t n, float* out) {
  DSV4_CUDA_CHECK(cudaMemsetAsync(out, 0, 4, L.stream));
  reduce_sum_k<<<unsigned(L.num_sms * 8), 512, 0, L.stream>>>(reinterpret_cast<const float4*>(x), n / 4, out);
  DSV4_CUDA_LAUNCHED();
}

double fp8_mma_peak(const Launch& L, float* sink, int iters) {
  const int blocks = L.num_sms * 8, threads = 256;
  mma_peak_k<false><<<blocks, threads, 0, L.stream>>>(sink, iters);
  DSV4_CUDA_LAUNCHED();
  return double(blocks) * (threads / 32) * iters * 8 * (2.0 * 16 * 8 * 32);
}
double bf16_mma_peak(const Launch& L, float* sink, int iters) {
  const int blocks = L.num_sms * 8, threads = 256;
  mma_peak_k<true><<<blocks, threads, 0, L.stream>>>(sink, iters);
  DSV4_CUDA_LAUNCHED();
  return double(blocks) * (threads / 32) * iters * 8 * (2.0 * 16 * 8 * 16);
}

}  // namespace dsv4::cuda
