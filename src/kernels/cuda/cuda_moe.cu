// MoE routing and the routed MoE layer as one op. Rows are sorted by expert on the device (counts, offsets, a
// compact list of the experts hit); grouped GEMV kernels then read each hit expert's weights once per 8 of its
// rows (decode FP4 experts: moe_dmma_k, on tensor cores): up = w1 and w3 with the SwiGLU (clamp, routing weight)
// in the epilogue, down = w2 into one output row per (token, choice); a combine sums the choices in expert-id
// order (the host's order) plus the shared expert.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <cub/block/block_scan.cuh>

#include "kernels/cuda/cuda_moe.cuh"
#include "kernels/cuda/cuda_weights.cuh"

namespace dsv4::cuda {
namespace {

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }

// One warp per row; scores in shared memory; top-k by repeated arg-max (value desc, index asc).
constexpr int kRouteWarps = 4, kRouteMaxE = 1024;
__global__ void __launch_bounds__(kRouteWarps * 32) route_k(DevRoute a, int* err) {
  __shared__ float score[kRouteWarps][kRouteMaxE], biased[kRouteWarps][kRouteMaxE];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t m = int64_t(blockIdx.x) * kRouteWarps + warp;
  if (m >= a.M) return;
  const float* lg = a.logits + m * a.E;
  float* sc = score[warp];
  float* bs = biased[warp];
  if (a.score_func == 2) {
    float mx = -INFINITY;
    for (int j = lane; j < a.E; j += 32) mx = fmaxf(mx, lg[j]);
    mx = warp_max(mx);
    float s = 0.f;
    for (int j = lane; j < a.E; j += 32) s += (sc[j] = expf(lg[j] - mx));
    s = warp_sum(s);
    for (int j = lane; j < a.E; j += 32) sc[j] /= s;
  } else {
    for (int j = lane; j < a.E; j += 32) {
      const float x = lg[j];
      sc[j] = a.score_func == 1 ? sigm(x) : sqrtf(x > 20.f ? x : log1pf(expf(x)));
    }
  }
  __syncwarp();
  int32_t* ex = a.experts + m * a.k;
  if (a.tid2eid) {
    const int32_t t = a.tokens[m];
    if (t < 0 || t >= a.vocab) {
      if (lane == 0) report(err, kErrTid, m, t, a.vocab);
      return;
    }
    for (int j = lane; j < a.k; j += 32) {
      const int32_t e = a.tid2eid[int64_t(t) * a.k + j];
      if (e < 0 || e >= a.E) report(err, kErrExpert, m, e, a.E);
      ex[j] = e < 0 || e >= a.E ? 0 : e;
    }
  } else {
    for (int j = lane; j < a.E; j += 32) bs[j] = sc[j] + (a.bias ? a.bias[j] : 0.f);
    __syncwarp();
    for (int c = 0; c < a.k; ++c) {
      float best = -INFINITY;
      int bi = 0x7fffffff;
      for (int j = lane; j < a.E; j += 32) {
        const float v = bs[j];
        if (v > best || (v == best && j < bi)) {
          best = v;
          bi = j;
        }
      }
#pragma unroll
      for (int o = 16; o; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
          best = ov;
          bi = oi;
        }
      }
      if (bi == 0x7fffffff) bi = 0;  // every remaining value NaN: the host's partial_sort order is unspecified too
      if (lane == 0) ex[c] = bi;
      __syncwarp();
      if (lane == 0) bs[bi] = __int_as_float(0x7fc00000);  // NaN: never selected again
      __syncwarp();
    }
  }
  __syncwarp();
  if (lane == 0) {
    float* wt = a.weights + m * a.k;
    float sum = 0.f;
    for (int j = 0; j < a.k; ++j) sum += (wt[j] = sc[ex[j]]);
    for (int j = 0; j < a.k; ++j) wt[j] = (a.normalize && a.score_func != 2 ? wt[j] / sum : wt[j]) * a.route_scale;
  }
}

// ---- MoE workspace: ints first, then float areas.

MoeWs carve(void* ws, int64_t M, int64_t K, int64_t D, int64_t I, int64_t E) {
  uint8_t* p = static_cast<uint8_t*>(ws);
  auto take = [&](int64_t bytes) {
    uint8_t* r = p;
    p += cdiv(bytes, 256) * 256;
    return r;
  };
  MoeWs w;
  w.offsets = reinterpret_cast<int*>(take((E + 1) * 4));
  w.active = reinterpret_cast<int*>(take(E * 4));
  w.n_active = reinterpret_cast<int*>(take(4));
  w.perm = reinterpret_cast<int*>(take(M * K * 4));
  w.tile_off = reinterpret_cast<int*>(take((E + 1) * 4));
  w.codes = take(M * K * std::max(D, I) * 2);  // e4m3 codes (decode) or their bf16 values (prefill GEMM)
  w.cscale = reinterpret_cast<float*>(take(M * K * cdiv(std::max(D, I), 128) * 4));
  w.h = reinterpret_cast<float*>(take(M * K * I * 4));
  w.y = reinterpret_cast<float*>(take(M * K * D * 4));
  w.hs = reinterpret_cast<float*>(take(2 * M * I * 4));
  w.ys = reinterpret_cast<float*>(take(M * D * 4));
  return w;
}

// One block of kSortThreads (one thread per expert): a shared-memory histogram, block-wide scans for the offsets,
// the tensor-core tiles and the compact active list (expert order), then the scatter. (A serial scan in one
// thread over global memory took 16 us per layer at decode on the H200.)
constexpr int kSortThreads = 1024;
__global__ void __launch_bounds__(kSortThreads) moe_sort_k(const int32_t* experts, int64_t n, int E, MoeWs w, int* err) {
  using Scan = cub::BlockScan<int, kSortThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int cnt[kSortThreads], fill[kSortThreads], off[kSortThreads];
  const int t = int(threadIdx.x);
  cnt[t] = 0;
  fill[t] = 0;
  __syncthreads();
  for (int64_t s = t; s < n; s += kSortThreads) {
    const int e = experts[s];
    if (e < 0 || e >= E) {
      report(err, kErrExpert, s, e, E);
      continue;
    }
    atomicAdd(&cnt[e], 1);
  }
  __syncthreads();
  const int c = t < E ? cnt[t] : 0, tiles = (c + kMmaBM - 1) / kMmaBM, hit = c > 0;
  int o = 0, to = 0, a = 0;
  Scan(scan).ExclusiveSum(c, o);
  __syncthreads();
  Scan(scan).ExclusiveSum(tiles, to);
  __syncthreads();
  Scan(scan).ExclusiveSum(hit, a);
  if (t < E) {
    w.offsets[t] = o;
    w.tile_off[t] = to;
    if (hit) w.active[a] = t;
    off[t] = o;
  }
  if (t == E - 1) {
    w.offsets[E] = o + c;
    w.tile_off[E] = to + tiles;
    *w.n_active = a + hit;
  }
  __syncthreads();
  for (int64_t s = t; s < n; s += kSortThreads) {
    const int e = experts[s];
    if (e < 0 || e >= E) continue;
    w.perm[off[e] + atomicAdd(&fill[e], 1)] = int(s);
  }
}

constexpr int kMoeMaxRows = 8;  // rows of one expert multiplied per pass over its weights

// Rows per warp and staged columns per pass: 4 rows per warp, passes of kMoeKR staged columns, each lane walking
// its chunks with the next chunk's 4 loads in flight while the current ones multiply (few registers, many warps
// per SM). Measured on the H200 against issuing all of a pass's 16 loads per lane before staging: B = 16, 4
// layers, 685 against 959 us per launch (docs/perf-notes.md, v5).
constexpr int kMoeRowsPerWarp = 4;
constexpr int64_t kMoeKR = 2048;
// Output columns per block: UP runs w1 and w3 over the same 16 columns (4 warps each), DOWN 8 warps of w2 rows.
template <bool UP>
constexpr int moe_cols_per_block() { return UP ? 16 : 8 * kMoeRowsPerWarp; }

// UP: block = 16 intermediate columns of one active expert; warps 0-3 run w1, warps 4-7 w3 on the same
// columns, and the epilogue applies the SwiGLU. DOWN: block = 8 x R output columns of w2. MT rows of the expert
// (a template: the accumulators and reductions of rows that do not exist cost nothing); QUANT: the staging
// applies the FP8 activation round trip (x for UP, the hidden for DOWN), so no separate quantization kernel.
template <int FMT, bool UP, int MT, bool QUANT>
__global__ void __launch_bounds__(256) moe_gemv_k(DevMoe a, MoeWs w) {
  extern __shared__ float xs[];  // [MT][KR], permuted as stage_x writes it
  __shared__ float gs[16][MT], us[16][MT];
  constexpr int CH = Chunk<FMT>::n, R = kMoeRowsPerWarp;
  constexpr int64_t KR = kMoeKR, NC = KR / CH;
  if (int(blockIdx.y) >= *w.n_active) return;
  const int e = w.active[blockIdx.y];
  const int r0 = w.offsets[e], r1 = w.offsets[e + 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const DevWeight wt = a.table[int64_t(e) * 3 + (UP ? (warp < 4 ? 0 : 2) : 1)];
  const int64_t K = UP ? a.D : a.inter, N = UP ? a.inter : a.D;
  const int64_t nblk = int64_t(blockIdx.x) * moe_cols_per_block<UP>();
  const int64_t n0 = nblk + (UP ? (warp & 3) : warp) * R;
  const float* src = UP ? a.x : w.h;
  for (int rb = r0; rb < r1; rb += MT) {
    const int nv = min(MT, r1 - rb);
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;
    // acc[r][m] += the R weight rows' 16-byte chunk c (raw, sc) times the staged columns of chunk c.
    auto multiply = [&](const uint4* raw, const float* sc, int64_t c, int nv) {
#pragma unroll
      for (int s = 0; s < CH / 4; ++s) {
        float wv[R][4];
#pragma unroll
        for (int r = 0; r < R; ++r) decode4<FMT>(raw[r], s, sc[r], wv[r]);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m >= nv) break;  // warp-uniform: rows this expert does not have
          const float4 xv = *reinterpret_cast<const float4*>(&xs[m * KR + (s * NC + c) * 4]);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            acc[r][m] += wv[r][0] * xv.x;
            acc[r][m] += wv[r][1] * xv.y;
            acc[r][m] += wv[r][2] * xv.z;
            acc[r][m] += wv[r][3] * xv.w;
          }
        }
      }
    };
    auto fetch = [&](int64_t k0, int64_t c, int64_t nch, uint4* raw, float* sc) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (n0 + r < N && c < nch) {
          load_chunk<FMT>(wt, n0 + r, k0 + c * CH, raw[r], sc[r]);
        } else {
          raw[r] = make_uint4(0, 0, 0, 0);
          sc[r] = 0.f;
        }
      }
    };
    auto stage = [&](int64_t k0, int64_t kl) {
      __syncthreads();  // the previous pass's readers are done with xs
      // Only the expert's nv rows: at decode an expert mostly has one row.
      stage_x<CH, QUANT>(xs, nv, KR, kl, [&](int m) {
        return src + (UP ? int64_t(w.perm[rb + m]) / a.K : int64_t(rb + m)) * K + k0;
      });
      __syncthreads();
    };
    for (int64_t k0 = 0; k0 < K; k0 += KR) {
      const int64_t kl = min(K, k0 + KR) - k0, nch = kl / CH;
      uint4 cur[R];
      float csc[R];
      fetch(k0, lane, nch, cur, csc);  // in flight while x is staged
      stage(k0, kl);
      for (int64_t c = lane; c < nch; c += 32) {
        uint4 nxt[R];
        float nsc[R];
        fetch(k0, c + 32, nch, nxt, nsc);
        multiply(cur, csc, c, nv);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          cur[r] = nxt[r];
          csc[r] = nsc[r];
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        float v = warp_sum(acc[r][m]);
        if (a.out_bf16) v = rbf16(v);
        const int64_t n = n0 + r;
        if (lane == 0 && m < nv && n < N) {
          if (UP) {
            (warp < 4 ? gs : us)[(warp & 3) * 4 + r][m] = v;
          } else {
            w.y[int64_t(w.perm[rb + m]) * a.D + n] = v;
          }
        }
      }
    if (UP) {
      __syncthreads();
      if (threadIdx.x < 16 * MT) {
        const int nn = threadIdx.x / MT, m = threadIdx.x % MT;
        const int64_t n = nblk + nn;
        if (m < nv && n < N) {
          // gs/us hold the outputs already rounded (rounding again is the identity).
          w.h[int64_t(rb + m) * a.inter + n] = moe_hidden(a, gs[nn][m], us[nn][m], a.weights[w.perm[rb + m]]);
        }
      }
    }
  }
}

// e2m1 -> e4m3 for the FP8 tensor cores (every e2m1 value is an e4m3 value).
__device__ __forceinline__ uint32_t e2m1x4_to_e4m3x4(uint32_t nibbles16) {
  // e2m1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 as e4m3 codes, picked by byte permutes (a table lookup per byte);
  // the sign (nibble bit 3) becomes byte bit 7 by selecting 0x00 or 0x80.
  const uint32_t mag = __byte_perm(0x3C383000u, 0x4C484440u, nibbles16 & 0x7777u);
  const uint32_t sgn = __byte_perm(0u, 0x80808080u, (nibbles16 >> 1) & 0x4444u);
  return mag | sgn;
}

// ---- Decode (M <= 64 rows, FP8 activations, FP4 experts): FP8 tensor cores with no weight staging. The
// expert's rows of activation codes (quantize_fp8_codes) are the A tile in shared memory; each warp streams two
// 8-row weight fragments (UP: the same 8 columns of w1 and w3, so the SwiGLU stays in registers; DOWN: 16
// columns of w2) straight from global memory into B fragments. The mma's k32 step must stay inside one 32-column
// FP4 scale group, so the 4 lanes of a row read 4 bytes each of that group (8 values; widened to e4m3 in
// registers), and the A fragment takes the same 8 columns (an 8-byte read). Products are promoted per 32
// columns with the weight's scale and per 128 with the activation's, as the reference de-quantizes. Steps of 128
// columns, S of them in flight per warp (the SIMT GEMV's x staging, syncs and fp32 decode cost more issue slots
// than the FP4 stream leaves at ~34 values per clock per SM). 3 steps keep 4 blocks per SM (127 registers); 6 at
// M <= 4 (fewer warps than the SMs hold) measured no faster on the H200 (B = 1 UP 45.6 -> 47.3 us).
constexpr int kDmmaWarps = 4, kDmmaSteps = 3;
template <bool UP>
constexpr int dmma_cols_per_block() { return kDmmaWarps * (UP ? 8 : 16); }

// E8M0 byte j of four as a float: 2^(b - 127) for b in 1..254 (checkpoint scales; 0 reads as 0, not 2^-127).
__device__ __forceinline__ float e8m0_byte(uint32_t four, int j) {
  return __uint_as_float(((four >> (8 * j)) & 0xffu) << 23);
}

template <bool UP>
__global__ void __launch_bounds__(kDmmaWarps * 32) moe_dmma_k(DevMoe a, MoeWs w, int rt) {
  constexpr int S = kDmmaSteps;
  extern __shared__ __align__(16) uint8_t dsm[];
  if (int(blockIdx.y) >= *w.n_active) return;
  const int e = w.active[blockIdx.y];
  const int r0 = w.offsets[e], r1 = w.offsets[e + 1];
  const int64_t K = UP ? a.D : a.inter, N = UP ? a.inter : a.D, nsteps = K / 128;
  const int64_t ld = K + 32;  // +32 B per row: a half warp's 8-byte A reads land on 32 distinct banks
  uint8_t* xs = dsm;                                        // [rt][ld] activation codes
  float* sa = reinterpret_cast<float*>(dsm + int64_t(rt) * ld);  // [rt][nsteps] their scales
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31), gid = lane >> 2, tig = lane & 3;
  const DevWeight* tw = a.table + int64_t(e) * 3;
  const int64_t nw = int64_t(blockIdx.x) * dmma_cols_per_block<UP>() + warp * (UP ? 8 : 16);
  // Fragment f: 8 weight rows from nf[f]; this lane loads row nf + gid, and its C columns are rows nf + 2 tig, + 1
  // (their scales). Row pointers once: a step's loads are then constant offsets.
  const uint32_t* wrow[2];
  const uint32_t* srow[2][2];
  int64_t nf[2];
  const int64_t scols = K / 32;
#pragma unroll
  for (int f = 0; f < 2; ++f) {
    const DevWeight& wt = tw[UP ? (f ? 2 : 0) : 1];
    nf[f] = UP ? nw : nw + 8 * f;
    const int64_t n = nf[f] + gid, c0 = nf[f] + 2 * tig;
    wrow[f] = n < N ? reinterpret_cast<const uint32_t*>(wt.data + n * (K / 2) + tig * 4) : nullptr;
#pragma unroll
    for (int q = 0; q < 2; ++q)
      srow[f][q] = c0 + q < N ? reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(wt.scale) + (c0 + q) * scols) : nullptr;
  }
  auto load = [&](int64_t s, uint32_t (&wr)[2][4], uint32_t (&sc)[2][2]) {
    const bool live = s < nsteps;
#pragma unroll
    for (int f = 0; f < 2; ++f) {
#pragma unroll
      for (int b = 0; b < 4; ++b) wr[f][b] = live && wrow[f] ? __ldg(wrow[f] + s * 16 + b * 4) : 0u;
#pragma unroll
      for (int q = 0; q < 2; ++q) sc[f][q] = live && srow[f][q] ? __ldg(srow[f][q] + s) : 0u;
    }
  };
  for (int rb = r0; rb < r1; rb += rt) {
    const int nv = min(rt, r1 - rb);
    const bool two = nv > 8;  // rows 8-15 of the A tile exist
    uint32_t wr[S][2][4], sc[S][2][2];
#pragma unroll
    for (int u = 0; u < S; ++u) load(u, wr[u], sc[u]);  // in flight while the activations are staged
    __syncthreads();  // the previous pass's readers are done with xs
    const int c16 = int(K / 16);
    for (int i = int(threadIdx.x); i < nv * c16; i += int(blockDim.x)) {
      const int m = i / c16, c = i - m * c16;
      const int64_t src = UP ? int64_t(w.perm[rb + m]) / a.K : int64_t(rb + m);
      *reinterpret_cast<uint4*>(xs + m * ld + c * 16) = *reinterpret_cast<const uint4*>(w.codes + src * K + c * 16);
    }
    for (int i = int(threadIdx.x); i < nv * int(nsteps); i += int(blockDim.x)) {
      const int m = i / int(nsteps), b = i - m * int(nsteps);
      const int64_t src = UP ? int64_t(w.perm[rb + m]) / a.K : int64_t(rb + m);
      sa[i] = w.cscale[src * nsteps + b];
    }
    __syncthreads();
    float acc[2][4] = {};
    const bool lo_ok = gid < nv, hi_ok = gid + 8 < nv;
    auto step = [&](int64_t s, const uint32_t (&wr)[2][4], const uint32_t (&sc)[2][2]) {
      float t[2][4] = {};
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int64_t kx = s * 128 + b * 32 + tig * 8;
        const uint2 xa = lo_ok ? *reinterpret_cast<const uint2*>(xs + gid * ld + kx) : make_uint2(0, 0);
        const uint2 xb = hi_ok ? *reinterpret_cast<const uint2*>(xs + (gid + 8) * ld + kx) : make_uint2(0, 0);
        const uint32_t af[4] = {xa.x, xb.x, xa.y, xb.y};
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          const uint32_t bf[2] = {e2m1x4_to_e4m3x4(wr[f][b] & 0xffffu), e2m1x4_to_e4m3x4(wr[f][b] >> 16)};
          float blk[4] = {0.f, 0.f, 0.f, 0.f};
          mma_e4m3(blk, af, bf);
          const float w0 = e8m0_byte(sc[f][0], b), w1 = e8m0_byte(sc[f][1], b);
          t[f][0] += blk[0] * w0;
          t[f][1] += blk[1] * w1;
          if (two) {
            t[f][2] += blk[2] * w0;
            t[f][3] += blk[3] * w1;
          }
        }
      }
      const float s0 = lo_ok ? sa[gid * nsteps + s] : 0.f, s1 = hi_ok ? sa[(gid + 8) * nsteps + s] : 0.f;
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        acc[f][0] += t[f][0] * s0;
        acc[f][1] += t[f][1] * s0;
        acc[f][2] += t[f][2] * s1;
        acc[f][3] += t[f][3] * s1;
      }
    };
    for (int64_t s0 = 0; s0 < nsteps; s0 += S) {
#pragma unroll
      for (int u = 0; u < S; ++u) {
        if (s0 + u < nsteps) step(s0 + u, wr[u], sc[u]);  // warp-uniform
        load(s0 + u + S, wr[u], sc[u]);  // this slot's next step, the others' still in flight
      }
    }
    // C fragment: rows (tokens) gid and gid + 8, columns (weight rows) nf + 2 tig and + 1.
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int m = gid + (q >> 1) * 8;
      if (m >= nv) continue;
      if constexpr (UP) {
        const int64_t n = nw + 2 * tig + (q & 1);
        if (n >= N) continue;
        w.h[int64_t(rb + m) * a.inter + n] = moe_hidden(a, acc[0][q], acc[1][q], a.weights[w.perm[rb + m]]);
      } else {
#pragma unroll
        for (int f = 0; f < 2; ++f) {
          const int64_t n = nf[f] + 2 * tig + (q & 1);
          if (n >= N) continue;
          const float v = acc[f][q];
          w.y[int64_t(w.perm[rb + m]) * a.D + n] = a.out_bf16 ? rbf16(v) : v;
        }
      }
    }
  }
}

__global__ void swiglu_k(const float* g, const float* u, int64_t n, float limit, bool round, float* h) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float gv = g[i], uv = u[i];
    if (limit > 0) {
      uv = clampf(uv, -limit, limit);
      gv = fminf(gv, limit);
    }
    float hv = gv / (1.f + expf(-gv)) * uv * 1.f;
    h[i] = round ? rbf16(hv) : hv;
  }
}

// out[m] = sum over choices in expert-id order (stable for repeated ids) + shared, then the optional bf16 round.
__global__ void moe_combine_k(DevMoe a, MoeWs w, bool has_shared) {
  const int64_t total = a.M * a.D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / a.D, d = i % a.D;
    int order[16];
    const int K = int(a.K);
    for (int j = 0; j < K; ++j) order[j] = j;
    for (int j = 1; j < K; ++j) {  // insertion sort by expert id, stable
      const int o = order[j], eo = a.experts[m * K + o];
      int q = j - 1;
      while (q >= 0 && a.experts[m * K + order[q]] > eo) {
        order[q + 1] = order[q];
        --q;
      }
      order[q + 1] = o;
    }
    float acc = 0.f;
    for (int j = 0; j < K; ++j) acc += w.y[(m * K + order[j]) * a.D + d];
    float v = has_shared ? acc + w.ys[i] : acc;
    a.out[i] = a.round_out ? rbf16(v) : v;
  }
}

template <int FMT, bool UP, int MT, bool Q>
void launch_moe_gemv(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_active) {
  constexpr size_t sm = size_t(MT) * size_t(kMoeKR) * 4;
  static unsigned long long attr = 0;
  if (first_on_device(attr)) {
    const int limit = allow_max_dynamic_smem(reinterpret_cast<const void*>(moe_gemv_k<FMT, UP, MT, Q>));
    DSV4_CUDA_REQUIRE(size_t(limit) >= sm, "moe on CUDA: the device's shared memory per block is too small");
  }
  const unsigned tiles = unsigned(cdiv(UP ? a.inter : a.D, moe_cols_per_block<UP>()));
  moe_gemv_k<FMT, UP, MT, Q><<<dim3(tiles, max_active), 256, sm, L.stream>>>(a, w);
  DSV4_CUDA_LAUNCHED();
}

template <int FMT, bool UP, bool Q>
void moe_gemv_mt(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_active) {
  // Rows of one expert per pass. At decode (M <= 16 tokens, each picking distinct experts) a hit expert has ~1-2
  // rows, so 2 keeps the loads in flight deep; an expert with more rows takes more passes over its (L2-warm) weights.
  if (a.M <= 1)
    launch_moe_gemv<FMT, UP, 1, Q>(L, a, w, max_active);
  else if (a.M <= 16)
    launch_moe_gemv<FMT, UP, 2, Q>(L, a, w, max_active);
  else
    launch_moe_gemv<FMT, UP, kMoeMaxRows, Q>(L, a, w, max_active);
}

// Rows up to which the decode kernel (moe_dmma_k) takes FP4 experts; an A/B switch for device runs, read once:
// DSV4_CUDA_MOE_DECODE_MMA=N sets it (0: the SIMT GEMV at M <= 16 and the grouped GEMM above, as before it).
// Up to 64 rows a hit expert mostly has 1-4 of them, which the grouped GEMM's 64-row tiles would mostly waste.
int64_t moe_decode_mma_rows() {
  static const int64_t rows = [] {
    const char* v = std::getenv("DSV4_CUDA_MOE_DECODE_MMA");
    return v && *v ? std::strtoll(v, nullptr, 10) : int64_t(64);
  }();
  return rows;
}

bool moe_dmma_fits(const DevMoe& a) {  // (every expert's data is 16-byte aligned: the backend checks it)
  return a.act_fp8 && a.M <= moe_decode_mma_rows() && a.w1.fmt == kFP4 && a.D % 128 == 0 && a.inter % 128 == 0 &&
         a.scales4;
}

template <bool UP>
void launch_dmma_half(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_active, int rt) {
  const int64_t K = UP ? a.D : a.inter;
  const size_t sm = size_t(rt) * size_t(K + 32) + size_t(rt) * size_t(K / 128) * 4;
  static unsigned long long attr = 0;
  static int limit = 0;
  if (first_on_device(attr)) limit = allow_max_dynamic_smem(reinterpret_cast<const void*>(moe_dmma_k<UP>));
  DSV4_CUDA_REQUIRE(sm <= size_t(limit), "moe on CUDA: the decode tensor-core staging does not fit shared memory");
  const unsigned tiles = unsigned(cdiv(UP ? a.inter : a.D, dmma_cols_per_block<UP>()));
  moe_dmma_k<UP><<<dim3(tiles, max_active), kDmmaWarps * 32, sm, L.stream>>>(a, w, rt);
  DSV4_CUDA_LAUNCHED();
}

void launch_dmma(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_active) {
  // Rows of one expert per pass: the A tile's 16 (every row at M <= 16: distinct experts per token).
  const int rt = int(std::min<int64_t>(a.M, 16));
  quantize_fp8_codes(L, a.x, a.M, a.D, a.D, w.codes, w.cscale);
  launch_dmma_half<true>(L, a, w, max_active, rt);
  quantize_fp8_codes(L, w.h, a.M * a.K, a.inter, a.inter, w.codes, w.cscale);
  launch_dmma_half<false>(L, a, w, max_active, rt);
}

template <int FMT>
void launch_grouped(const Launch& L, const DevMoe& a, const MoeWs& w, unsigned max_active) {
  if constexpr (FMT == kFP4) {
    if (moe_dmma_fits(a)) {
      launch_dmma(L, a, w, max_active);
      return;
    }
  }
  if constexpr (FMT == kFP4 || FMT == kFP8) {
    if (moe_gemm_fits(a)) {
      moe_grouped_gemm(L, a, w);
      return;
    }
  }
  if (a.act_fp8) {
    moe_gemv_mt<FMT, true, true>(L, a, w, max_active);
    moe_gemv_mt<FMT, false, true>(L, a, w, max_active);
  } else {
    moe_gemv_mt<FMT, true, false>(L, a, w, max_active);
    moe_gemv_mt<FMT, false, false>(L, a, w, max_active);
  }
}

}  // namespace

void route(const Launch& L, const DevRoute& a) {
  if (!a.M) return;
  DSV4_CUDA_REQUIRE(a.E <= kRouteMaxE && a.k <= a.E, "route on CUDA: more than 1024 experts, or k > E");
  route_k<<<unsigned(cdiv(a.M, kRouteWarps)), kRouteWarps * 32, 0, L.stream>>>(a, L.err);
  DSV4_CUDA_LAUNCHED();
}

int64_t moe_ws_bytes(int64_t M, int64_t K, int64_t D, int64_t I, int64_t E, int) {
  auto r = [](int64_t b) { return cdiv(b, 256) * 256; };
  // carve()'s areas in its order: offsets, active, n_active, perm, tile_off, codes, ...
  return r((E + 1) * 4) + r(E * 4) + r(4) + r(M * K * 4) + r((E + 1) * 4) + r(M * K * std::max(D, I) * 2) +
         r(M * K * cdiv(std::max(D, I), 128) * 4) + r(M * K * I * 4) + r(M * K * D * 4) + r(2 * M * I * 4) +
         r(M * D * 4) + 256;
}

void moe(const Launch& L, const DevMoe& a, void* ws, void* lin_ws) {
  if (!a.M) return;
  DSV4_CUDA_REQUIRE(a.K <= 16, "moe on CUDA: more than 16 experts per token");
  const MoeWs w = carve(ws, a.M, a.K, a.D, a.inter, a.E);
  DSV4_CUDA_REQUIRE(a.E >= 1 && a.E <= kSortThreads, "moe on CUDA: 1 to 1024 routed experts");
  moe_sort_k<<<1, kSortThreads, 0, L.stream>>>(a.experts, a.M * a.K, int(a.E), w, L.err);
  DSV4_CUDA_LAUNCHED();
  const bool quant = a.act_fp8 && (a.w1.fmt == kFP8 || a.w1.fmt == kFP4);
  DevMoe b = a;
  b.act_fp8 = quant;
  const unsigned max_active = unsigned(a.M * a.K < a.E ? a.M * a.K : a.E);
  switch (a.w1.fmt) {
    case kF32: launch_grouped<kF32>(L, b, w, max_active); break;
    case kBF16: launch_grouped<kBF16>(L, b, w, max_active); break;
    case kFP8: launch_grouped<kFP8>(L, b, w, max_active); break;
    default: launch_grouped<kFP4>(L, b, w, max_active); break;
  }
  if (a.shared) {
    LinearCall c;
    c.M = a.M;
    c.act_fp8 = a.act_fp8;
    c.out_bf16 = a.out_bf16;
    c.x = a.x;
    c.ldx = a.D;
    c.w = a.shared[0];
    c.y = w.hs;
    c.ldy = a.inter;
    linear(L, c, lin_ws);
    c.w = a.shared[2];
    c.y = w.hs + a.M * a.inter;
    linear(L, c, lin_ws);
    swiglu_k<<<grid1d(a.M * a.inter, 256), 256, 0, L.stream>>>(w.hs, w.hs + a.M * a.inter, a.M * a.inter,
                                                                 a.swiglu_limit, a.round_hidden, w.hs);
    DSV4_CUDA_LAUNCHED();
    c.x = w.hs;
    c.ldx = a.inter;
    c.w = a.shared[1];
    c.y = w.ys;
    c.ldy = a.D;
    linear(L, c, lin_ws);
  }
  moe_combine_k<<<grid1d(a.M * a.D, 256), 256, 0, L.stream>>>(a, w, a.shared != nullptr);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace dsv4::cuda
