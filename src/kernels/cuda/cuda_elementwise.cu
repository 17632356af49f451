// Row and elementwise ops: embed, rms_norm, rope, the rounding simulations, the KV codec round trip, gathers
// and the mHC sites. Memory-bound one-pass kernels; per-row reductions use one block per row.
#include <algorithm>

#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {
namespace {

__global__ void embed_k(const int32_t* tok, int64_t M, const void* table, int bf16, int64_t V, int64_t D, int hc,
                        float* X, int* err) {
  const int64_t n = M * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / D, d = i % D;
    const int32_t t = tok[m];
    if (t < 0 || t >= V) {
      report(err, kErrToken, m, t, V);
      continue;
    }
    const float v = bf16 ? bf2f(static_cast<const uint16_t*>(table)[int64_t(t) * D + d])
                         : static_cast<const float*>(table)[int64_t(t) * D + d];
    for (int h = 0; h < hc; ++h) X[(m * hc + h) * D + d] = v;
  }
}

// One block per row. Rows up to kNormPT values per thread stay in registers, every load (x and w) issued
// before the reduction: at decode a norm is one block, so its time is the latency of its dependent load rounds
// (a strided loop took ~9 us for 4,096 values). Per-thread sums in index order, then block_sum, as before.
constexpr int kNormPT = 8;
__global__ void rms_norm_k(const float* x, int64_t D, const float* w, float eps, float* y, int bf16) {
  __shared__ float sh[32];
  const float* xr = x + blockIdx.x * D;
  float* yr = y + blockIdx.x * D;
  const int64_t nt = blockDim.x;
  float ss = 0.f;
  if (D <= kNormPT * nt) {
    float v[kNormPT], wv[kNormPT];
#pragma unroll
    for (int j = 0; j < kNormPT; ++j) {
      const int64_t i = threadIdx.x + j * nt;
      v[j] = i < D ? xr[i] : 0.f;
      wv[j] = w && i < D ? w[i] : 1.f;
    }
#pragma unroll
    for (int j = 0; j < kNormPT; ++j) ss += v[j] * v[j];
    ss = block_sum(ss, sh);
    const float r = 1.f / sqrtf(ss / float(D) + eps);
#pragma unroll
    for (int j = 0; j < kNormPT; ++j) {
      const int64_t i = threadIdx.x + j * nt;
      if (i < D) {
        const float o = w ? v[j] * r * wv[j] : v[j] * r;
        yr[i] = bf16 ? rbf16(o) : o;
      }
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < D; i += nt) ss += xr[i] * xr[i];
  ss = block_sum(ss, sh);
  const float r = 1.f / sqrtf(ss / float(D) + eps);
  __syncthreads();  // x == y: every read of the sum above is done
  for (int64_t i = threadIdx.x; i < D; i += nt) {
    const float o = w ? xr[i] * r * w[i] : xr[i] * r;
    yr[i] = bf16 ? rbf16(o) : o;
  }
}

// One thread per (row, pair, head lane): the angle in double as the host, then heads hb, hb + hs, ... of the row.
// hs > 1 spreads a short batch's heads over more threads (one row of 64 heads was one block). bf16: every value of
// the row rounded (thread i also rounds the unrotated dims i, i + half, ... of its heads).
__global__ void rope_k(float* x, int64_t M, int64_t H, int64_t hd, const int32_t* pos, const void* freqs, int f64,
                       int64_t half, int inverse, int64_t hs, int bf16) {
  const int64_t mh = M * half, n = mh * hs;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t hb = t / mh, m = (t % mh) / half, i = t % half;
    const double f = f64 ? static_cast<const double*>(freqs)[i] : double(static_cast<const float*>(freqs)[i]);
    const double ang = double(pos[m]) * f;
    const float c = float(cos(ang)), s0 = float(sin(ang)), s = inverse ? -s0 : s0;
    for (int64_t h = hb; h < H; h += hs) {
      float* v = x + (m * H + h) * hd + (hd - 2 * half) + 2 * i;
      const float re = v[0], im = v[1];
      v[0] = bf16 ? rbf16(re * c - im * s) : re * c - im * s;
      v[1] = bf16 ? rbf16(re * s + im * c) : re * s + im * c;
      if (bf16) {
        float* row = x + (m * H + h) * hd;
        for (int64_t j = i; j < hd - 2 * half; j += half) row[j] = rbf16(row[j]);
      }
    }
  }
}

// 16-byte accesses where x is 16-byte aligned (the scalar form ran at ~0.8 TB/s on an H200): n4 float4s, then
// the tail.
__global__ void round_bf16_k(float* x, int64_t n) {
  const int64_t n4 = reinterpret_cast<uintptr_t>(x) % 16 == 0 ? n / 4 : 0, stride = int64_t(gridDim.x) * blockDim.x;
  float4* x4 = reinterpret_cast<float4*>(x);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n4; i += stride) {
    float4 v = x4[i];
    v.x = rbf16(v.x), v.y = rbf16(v.y), v.z = rbf16(v.z), v.w = rbf16(v.w);
    x4[i] = v;
  }
  for (int64_t i = n4 * 4 + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += stride) x[i] = rbf16(x[i]);
}
__global__ void scale_k(float* x, int64_t n, float a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= a;
}

// One warp per block of values (quant.cpp fp8_roundtrip on each row's prefix).
__global__ void fp8_rt_k(float* x, int64_t rows, int64_t row, int64_t prefix, int64_t block) {
  const int64_t nb = (prefix + block - 1) / block, total = rows * nb;
  const int lane = threadIdx.x & 31;
  for (int64_t wb = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; wb < total;
       wb += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int64_t r = wb / nb, b = (wb % nb) * block, e = min(prefix, b + block);
    float* v = x + r * row;
    float amax = 0.f;
    for (int64_t i = b + lane; i < e; i += 32) amax = amax_step(amax, v[i]);
    const float s = pow2_scale(warp_max(amax), 448.f, 1e-4f);
    for (int64_t i = b + lane; i < e; i += 32) v[i] = fp8_rt(v[i], s);
  }
}

// One block per vector: the Sylvester butterflies in shared memory (each stage's sums are independent, so the
// values are the host's exactly), the 1/sqrt(n) factor, then the FP4 round trip per 32.
__global__ void hadamard_fp4_k(float* x, int64_t dim, float norm) {
  extern __shared__ float v[];
  float* g = x + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] = g[i];
  __syncthreads();
  for (int64_t h = 1; h < dim; h *= 2) {
    for (int64_t p = threadIdx.x; p < dim / 2; p += blockDim.x) {
      const int64_t j = (p / h) * 2 * h + p % h;
      const float a = v[j], b = v[j + h];
      v[j] = a + b;
      v[j + h] = a - b;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v[i] *= norm;
  __syncthreads();
  const float amin = 6.f * 1.1754943508222875e-38f;  // 6 * 2^-126
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int64_t b = int64_t(w) * 32; b < dim; b += int64_t(nw) * 32) {
    const int64_t i = b + lane;
    const float xv = i < dim ? v[i] : 0.f;
    const float s = pow2_scale(warp_max(i < dim ? fabsf(xv) : 0.f), 6.f, amin);
    if (i < dim) g[i] = e2m1_to_f32(f32_to_e2m1(clampf(xv / s, -6.f, 6.f))) * s;
  }
}

// One warp per row: encode into shared memory, decode back.
__global__ void kv_rt_k(float* x, int64_t rows, DevCodec c) {
  extern __shared__ uint8_t kvbuf[];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x >> 5) + w;
  if (r >= rows) return;
  uint8_t* b = kvbuf + int64_t(w) * ((c.bytes + 15) / 16 * 16);
  float* v = x + r * c.dim;
  codec_encode_warp(c, v, b, lane);
  __syncwarp();
  for (int i = lane; i < c.dim; i += 32) v[i] = codec_decode(c, b, i);
}

__global__ void gather_k(const uint8_t* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows, int64_t n,
                         uint8_t* out, int* err) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int32_t s = rows[r];
    if (s < 0 || s >= x_rows) {
      if (threadIdx.x == 0) report(err, kErrRow, r, s, x_rows);
      continue;
    }
    const uint8_t* src = x + int64_t(s) * row_bytes;
    uint8_t* dst = out + r * row_bytes;
    if (row_bytes % 16 == 0 && (reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) % 16 == 0) {
      for (int64_t i = threadIdx.x; i < row_bytes / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    } else {
      for (int64_t i = threadIdx.x; i < row_bytes; i += blockDim.x) dst[i] = src[i];
    }
  }
}

__device__ __forceinline__ float sigm(float x) { return 1.f / (1.f + expf(-x)); }

// mHC in two kernels. The mixing dots (rows <= 32 weight rows of hc * D floats, ~1.5 MB at V4-Flash sizes)
// are split over enough blocks to fill the device: one block per row read it at ~7 GB/s (230 us at M = 1).
// Then one block per row sums the splits in a fixed order (deterministic), does the tiny scalar part in the
// host's order, and forms y. From kHcTiledRows rows on, the dots run as a small tiled GEMM (hc_dots_tiled_k)
// that reads each weight tile once for 64 rows: one block per row re-read the whole matrix per row (5.7 ms of
// L2 traffic for an 8K prefill chunk, 13% of it; docs/perf-notes.md, v7).
constexpr int kHcMaxRows = 32;
constexpr int kHcSplitMin = 128;  // elements of the flattened row per split block, at least (one per thread)
constexpr int kHcTiledRows = 4, kHcTM = 64, kHcTK = 32;  // tiled from 4 rows: 64-row tiles, 32-column k steps
__global__ void __launch_bounds__(128) hc_dots_k(const float* X, DevHc p, int rows, int splits, int64_t chunk,
                                                 float* part) {
  __shared__ float red[kHcMaxRows + 1][4];
  const int64_t flat = int64_t(p.hc) * p.D, m = blockIdx.y;
  const float* xf = X + m * flat;
  const int64_t i0 = blockIdx.x * chunk, i1 = i0 + chunk < flat ? i0 + chunk : flat;
  float acc[kHcMaxRows + 1];
#pragma unroll
  for (int r = 0; r <= kHcMaxRows; ++r) acc[r] = 0.f;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const float xv = xf[i];
    acc[kHcMaxRows] += xv * xv;
#pragma unroll
    for (int r = 0; r < kHcMaxRows; ++r)
      if (r < rows) acc[r] += __ldg(p.fn + int64_t(r) * flat + i) * xv;
  }
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int r = 0; r <= kHcMaxRows; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0) red[r][w] = s;
  }
  __syncthreads();
  if (threadIdx.x <= kHcMaxRows) {
    float s = 0.f;
    for (int k = 0; k < int(blockDim.x >> 5); ++k) s += red[threadIdx.x][k];
    part[(m * splits + blockIdx.x) * (kHcMaxRows + 1) + threadIdx.x] = s;
  }
}

// The dots of 64 rows x (rows <= 32 weight rows) over one K split, fp32 FMAs: per 32-column step the x tile
// (64 x 32) and the weight tile (32 x 32) go to shared memory k-major, the next step's already in registers;
// thread (tr, tc) of 128 owns rows tr + 16 i and weight rows tc + 8 j. The sums of squares come from the x
// loads (each thread loads one column of 16 rows) and are summed over the warp at the end. Writes the same
// partials as hc_dots_k.
__global__ void __launch_bounds__(128) hc_dots_tiled_k(const float* X, int64_t M, DevHc p, int rows, int splits,
                                                       int64_t chunk, float* part) {
  __shared__ float xs[kHcTK][kHcTM + 1], fs[kHcTK][kHcMaxRows + 1];
  const int64_t flat = int64_t(p.hc) * p.D, m0 = int64_t(blockIdx.y) * kHcTM;
  const int64_t i0 = blockIdx.x * chunk, i1 = i0 + chunk < flat ? i0 + chunk : flat;
  const int t = int(threadIdx.x), kl = t & 31, lr = t >> 5;  // loader: column kl of rows lr + 4 i
  const int tr = t >> 3, tc = t & 7;                          // compute: rows tr + 16 i, weight rows tc + 8 j
  float xr[kHcTM / 4], fr[kHcMaxRows / 4], sq[kHcTM / 4], acc[4][4];
#pragma unroll
  for (int i = 0; i < kHcTM / 4; ++i) sq[i] = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  auto load = [&](int64_t k0) {
    const int64_t k = k0 + kl;
#pragma unroll
    for (int i = 0; i < kHcTM / 4; ++i) {
      const int64_t m = m0 + lr + 4 * i;
      xr[i] = k < i1 && m < M ? X[m * flat + k] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kHcMaxRows / 4; ++j) {
      const int r = lr + 4 * j;
      fr[j] = k < i1 && r < rows ? __ldg(p.fn + int64_t(r) * flat + k) : 0.f;
    }
  };
  load(i0);
  for (int64_t k0 = i0; k0 < i1; k0 += kHcTK) {
    __syncthreads();  // the previous step's tiles are consumed
#pragma unroll
    for (int i = 0; i < kHcTM / 4; ++i) {
      xs[kl][lr + 4 * i] = xr[i];
      sq[i] += xr[i] * xr[i];
    }
#pragma unroll
    for (int j = 0; j < kHcMaxRows / 4; ++j) fs[kl][lr + 4 * j] = fr[j];
    __syncthreads();
    if (k0 + kHcTK < i1) load(k0 + kHcTK);  // in flight while this step multiplies
#pragma unroll 8
    for (int k = 0; k < kHcTK; ++k) {
      float xv[4], fv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) xv[i] = xs[k][tr + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) fv[j] = fs[k][tc + 8 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += xv[i] * fv[j];
    }
  }
  const int64_t stride = kHcMaxRows + 1;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + tr + 16 * i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) part[(m * splits + blockIdx.x) * stride + tc + 8 * j] = acc[i][j];
  }
#pragma unroll
  for (int i = 0; i < kHcTM / 4; ++i) {
    const float s = warp_sum(sq[i]);
    const int64_t m = m0 + lr + 4 * i;
    if (kl == 0 && m < M) part[(m * splits + blockIdx.x) * stride + kHcMaxRows] = s;
  }
}

// The combination matrix in one thread (hc other than 4, at most kHcMaxN): softmax rows, then Sinkhorn
// normalization, in the host's order. hc = 4, the model's, takes hc_sinkhorn_warp4.
constexpr int kHcMaxN = 16;
__device__ __forceinline__ void hc_sinkhorn(const float* mix, float rs, const DevHc& p, int n, float* out) {
  float C[kHcMaxN * kHcMaxN];
  // Every line (a row: stride 1 inside, kHcMaxN between; a column: the other way round) divided by its sum plus
  // eps, each sum over the line in order.
  auto normalize = [&](int between, int inside) {
#pragma unroll
    for (int j = 0; j < kHcMaxN; ++j) {
      if (j >= n) break;
      float s = 0;
#pragma unroll
      for (int k = 0; k < kHcMaxN; ++k)
        if (k < n) s += C[j * between + k * inside];
#pragma unroll
      for (int k = 0; k < kHcMaxN; ++k)
        if (k < n) C[j * between + k * inside] /= (s + p.hc_eps);
    }
  };
#pragma unroll
  for (int j = 0; j < kHcMaxN; ++j) {
    if (j >= n) break;
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < kHcMaxN; ++k) {
      if (k >= n) break;
      C[j * kHcMaxN + k] = mix[2 * n + j * n + k] * rs * p.scale[2] + p.base[2 * n + j * n + k];
      mx = fmaxf(mx, C[j * kHcMaxN + k]);
    }
    float s = 0;
#pragma unroll
    for (int k = 0; k < kHcMaxN; ++k) {
      if (k >= n) break;
      s += (C[j * kHcMaxN + k] = expf(C[j * kHcMaxN + k] - mx));
    }
#pragma unroll
    for (int k = 0; k < kHcMaxN; ++k) {
      if (k >= n) break;
      C[j * kHcMaxN + k] = C[j * kHcMaxN + k] / s + p.hc_eps;
    }
  }
  for (int it = 0; it < (p.iters > 1 ? p.iters : 1); ++it) {  // the host always does one column pass
    if (it > 0) normalize(kHcMaxN, 1);
    normalize(1, kHcMaxN);
  }
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < n; ++k) out[j * n + k] = C[j * kHcMaxN + k];
}

// hc = 4: one element of C per lane (lanes 16-31 mirror 0-15), rows and columns gathered by shuffles and
// summed in the host's order. A single thread's 20 dependent rounds took ~50 us.
__device__ __forceinline__ void hc_sinkhorn_warp4(const float* mix, float rs, const DevHc& p, int lane, float* out) {
  constexpr unsigned kAll = 0xffffffffu;
  const int e = lane & 15, k = e & 3, row0 = lane & ~3, col0 = (lane & 16) | k;
  float c = mix[8 + e] * rs * p.scale[2] + p.base[8 + e];
  // The four elements first, first + step, ... of this lane's row (step 1) or column (step 4), in order.
  auto sum4 = [&](float v, int first, int step) {
    float s = __shfl_sync(kAll, v, first);
    s += __shfl_sync(kAll, v, first + step);
    s += __shfl_sync(kAll, v, first + 2 * step);
    return s + __shfl_sync(kAll, v, first + 3 * step);
  };
  auto row_sum = [&](float v) { return sum4(v, row0, 1); };
  auto col_sum = [&](float v) { return sum4(v, col0, 4); };
  float mx = __shfl_sync(kAll, c, row0);
  for (int q = 1; q < 4; ++q) mx = fmaxf(mx, __shfl_sync(kAll, c, row0 + q));
  c = expf(c - mx);
  c = c / row_sum(c) + p.hc_eps;
  for (int it = 0; it < (p.iters > 1 ? p.iters : 1); ++it) {  // the host always does one column pass
    if (it > 0) c /= (row_sum(c) + p.hc_eps);
    c /= (col_sum(c) + p.hc_eps);
  }
  if (lane < 16) out[e] = c;
}

template <bool kHead>
__global__ void __launch_bounds__(256) hc_mix_k(const float* X, DevHc p, int splits, const float* part, float* y,
                                                float* post, float* comb, int bf16) {
  __shared__ float mix[kHcMaxRows + 1];
  __shared__ float pre[16];
  const int hc = p.hc;
  const int64_t flat = int64_t(hc) * p.D, m = blockIdx.x;
  const float* xf = X + m * flat;
  // The split partials of the kHcMaxRows + 1 sums: warp w takes sums w, w + 8, ...; lanes stride the splits with
  // every load in flight, then a fixed-order warp reduction (was: one thread per sum walking all the splits).
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  constexpr int kPerWarp = (kHcMaxRows + 1 + 7) / 8;
#pragma unroll
  for (int j = 0; j < kPerWarp; ++j) {
    const int r = warp + 8 * j;
    float s = 0.f;
    if (r <= kHcMaxRows)
      for (int k = lane; k < splits; k += 32) s += part[(m * splits + k) * (kHcMaxRows + 1) + r];
    s = warp_sum(s);
    if (lane == 0 && r <= kHcMaxRows) mix[r] = s;
  }
  __syncthreads();
  const float rs = 1.f / sqrtf(mix[kHcMaxRows] / float(flat) + p.norm_eps);
  if (threadIdx.x < hc) pre[threadIdx.x] = sigm(mix[threadIdx.x] * rs * p.scale[0] + p.base[threadIdx.x]) + p.hc_eps;
  __syncthreads();
  // Block (m, 0): the tiny scalar part in warp 0 (every sum in the host's order) while the other warps form y;
  // y's columns are split over gridDim.y blocks (one block's seven warps took ~9 us of load latency at M = 1).
  if (warp == 0 && blockIdx.y == 0) {
    if (!kHead) {
      if (lane < hc) post[m * hc + lane] = 2.f * sigm(mix[hc + lane] * rs * p.scale[1] + p.base[hc + lane]);
      if (hc == 4)
        hc_sinkhorn_warp4(mix, rs, p, lane, comb + m * 16);
      else if (lane == 0)
        hc_sinkhorn(mix, rs, p, hc, comb + m * hc * hc);
    }
    return;
  }
  const int64_t ny = gridDim.y, per = (p.D + ny - 1) / ny, d0 = int64_t(blockIdx.y) * per;
  const int64_t d1 = d0 + per < p.D ? d0 + per : p.D;
  const int t0 = blockIdx.y == 0 ? 32 : 0, nt = int(blockDim.x) - t0;
  if (p.D % 4 == 0 && per % 4 == 0) {  // four columns per thread, every stream's load in flight
    for (int64_t d = d0 + 4 * (int64_t(threadIdx.x) - t0); d < d1; d += 4 * int64_t(nt)) {
      float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int h = 0; h < hc; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(xf + h * p.D + d);
        a.x += pre[h] * v.x;
        a.y += pre[h] * v.y;
        a.z += pre[h] * v.z;
        a.w += pre[h] * v.w;
      }
      if (bf16) a = make_float4(rbf16(a.x), rbf16(a.y), rbf16(a.z), rbf16(a.w));
      *reinterpret_cast<float4*>(y + m * p.D + d) = a;
    }
    return;
  }
  for (int64_t d = d0 + threadIdx.x - t0; d < d1; d += nt) {
    float a = 0;
    for (int h = 0; h < hc; ++h) a += pre[h] * xf[h * p.D + d];
    y[m * p.D + d] = bf16 ? rbf16(a) : a;
  }
}

// Splits per row: enough blocks for ~2 waves of the device at small M (one block per row and split), none below
// kHcSplitMin elements each; tiled, ~8 blocks per SM (one per 64-row tile and split, few warps each).
int hc_splits(int64_t M, const DevHc& p, int num_sms) {
  const int64_t flat = int64_t(p.hc) * p.D, sms = num_sms > 0 ? num_sms : 132;
  const bool tiled = M >= kHcTiledRows;
  const int64_t want = tiled ? cdiv(8 * sms, cdiv(M, int64_t(kHcTM))) : cdiv(2 * sms, M);
  const int64_t most = cdiv(flat, int64_t(tiled ? 4 * kHcTK : kHcSplitMin));
  return int(want < 1 ? 1 : want > most ? most : want);
}

void hc_launch(const Launch& L, const float* X, int64_t M, const DevHc& p, bool head, float* part, float* y,
               float* post, float* comb, bool bf16_out) {
  DSV4_CUDA_REQUIRE(M < 65536, "hc: too many rows in one call");
  const int rows = head ? p.hc : (2 + p.hc) * p.hc, splits = hc_splits(M, p, L.num_sms);
  const int64_t chunk = cdiv(int64_t(p.hc) * p.D, int64_t(splits));
  if (M >= kHcTiledRows) {
    const int64_t tchunk = cdiv(chunk, int64_t(kHcTK)) * kHcTK;  // whole k steps; the last split may be short
    hc_dots_tiled_k<<<dim3(unsigned(splits), unsigned(cdiv(M, int64_t(kHcTM)))), 128, 0, L.stream>>>(
        X, M, p, rows, splits, tchunk, part);
  } else {
    hc_dots_k<<<dim3(unsigned(splits), unsigned(M)), 128, 0, L.stream>>>(X, p, rows, splits, chunk, part);
  }
  DSV4_CUDA_LAUNCHED();
  // y's column blocks: ~1024 columns each (a float4 per thread), fewer once the rows fill the device.
  const int64_t ys = std::max<int64_t>(1, std::min<int64_t>(cdiv(p.D, 1024), cdiv(2 * L.num_sms, M)));
  const dim3 grid{unsigned(M), unsigned(ys)};
  if (head)
    hc_mix_k<true><<<grid, 256, 0, L.stream>>>(X, p, splits, part, y, nullptr, nullptr, bf16_out);
  else
    hc_mix_k<false><<<grid, 256, 0, L.stream>>>(X, p, splits, part, y, post, comb, bf16_out);
  DSV4_CUDA_LAUNCHED();
}

// Grid (column blocks, rows): a thread takes column d of row m for every output stream k (no 64-bit division per
// element, which bounded the flat form at ~1.3 ms for an 8K chunk), each sum in the host's order.
__global__ void hc_post_k(const float* y, const float* X, const float* post, const float* comb, int64_t M, int hc,
                          int64_t D, float* Xout, int bf16) {
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const float* C = comb + m * hc * hc;
    for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x) {
      const float yv = y[m * D + d];
      for (int k = 0; k < hc; ++k) {
        float o = post[m * hc + k] * yv;
        for (int j = 0; j < hc; ++j) o += C[j * hc + k] * X[(m * hc + j) * D + d];
        Xout[(m * hc + k) * D + d] = bf16 ? rbf16(o) : o;
      }
    }
  }
}

}  // namespace

void embed(const Launch& L, const int32_t* tokens, int64_t M, const void* table, bool table_bf16, int64_t V,
           int64_t D, int hc, float* X) {
  if (M * D == 0) return;
  embed_k<<<grid1d(M * D, 256), 256, 0, L.stream>>>(tokens, M, table, table_bf16, V, D, hc, X, L.err);
  DSV4_CUDA_LAUNCHED();
}
void rms_norm(const Launch& L, const float* x, int64_t rows, int64_t D, const float* w, float eps, float* y,
              bool bf16_out) {
  if (rows == 0) return;
  DSV4_CUDA_REQUIRE(rows < (1LL << 31), "rms_norm: too many rows");
  rms_norm_k<<<unsigned(rows), D >= 1024 ? 512 : 128, 0, L.stream>>>(x, D, w, eps, y, bf16_out);
  DSV4_CUDA_LAUNCHED();
}
void rope(const Launch& L, float* x, int64_t M, int64_t H, int64_t hd, const int32_t* pos, const void* freqs,
          bool f64, int64_t half, bool inverse, bool bf16_out) {
  if (M * half == 0) {
    if (bf16_out) round_bf16(L, x, M * H * hd);  // nothing rotates; the values are still rounded
    return;
  }
  const int64_t hs = std::min<int64_t>(H, std::max<int64_t>(1, cdiv(8192, M * half)));
  rope_k<<<grid1d(M * half * hs, 256), 256, 0, L.stream>>>(x, M, H, hd, pos, freqs, f64, half, inverse, hs, bf16_out);
  DSV4_CUDA_LAUNCHED();
}
void round_bf16(const Launch& L, float* x, int64_t n) {
  if (!n) return;
  round_bf16_k<<<grid1d(n, 256), 256, 0, L.stream>>>(x, n);
  DSV4_CUDA_LAUNCHED();
}
void scale(const Launch& L, float* x, int64_t n, float a) {
  if (!n) return;
  scale_k<<<grid1d(n, 256), 256, 0, L.stream>>>(x, n, a);
  DSV4_CUDA_LAUNCHED();
}
void fp8_roundtrip(const Launch& L, float* x, int64_t rows, int64_t row, int64_t prefix, int64_t block) {
  if (!rows || !prefix) return;
  const int64_t warps = rows * cdiv(prefix, block);
  fp8_rt_k<<<grid1d(warps * 32, 256), 256, 0, L.stream>>>(x, rows, row, prefix, block);
  DSV4_CUDA_LAUNCHED();
}
void hadamard_fp4(const Launch& L, float* x, int64_t vecs, int64_t dim, float norm) {
  if (!vecs) return;
  DSV4_CUDA_REQUIRE(dim <= 8192 && vecs < (1LL << 31), "hadamard_fp4: vector too long");
  hadamard_fp4_k<<<unsigned(vecs), 128, size_t(dim) * 4, L.stream>>>(x, dim, norm);
  DSV4_CUDA_LAUNCHED();
}
void kv_roundtrip(const Launch& L, float* x, int64_t rows, const DevCodec& c) {
  if (!rows) return;
  const int wpb = 4;
  const size_t sm = size_t(wpb) * size_t((c.bytes + 15) / 16 * 16);
  DSV4_CUDA_REQUIRE(sm <= 48 * 1024, "kv_roundtrip: vector too long");
  kv_rt_k<<<unsigned(cdiv(rows, wpb)), 32 * wpb, sm, L.stream>>>(x, rows, c);
  DSV4_CUDA_LAUNCHED();
}
void gather_rows(const Launch& L, const uint8_t* x, int64_t x_rows, int64_t row_bytes, const int32_t* rows, int64_t n,
                 uint8_t* out) {
  if (!n || !row_bytes) return;
  gather_k<<<unsigned(n < 65535 ? n : 65535), 128, 0, L.stream>>>(x, x_rows, row_bytes, rows, n, out, L.err);
  DSV4_CUDA_LAUNCHED();
}
size_t hc_ws_bytes(int64_t M, const DevHc& p, int num_sms) {
  return size_t(M) * size_t(hc_splits(M, p, num_sms)) * (kHcMaxRows + 1) * sizeof(float);
}
void hc_pre(const Launch& L, const float* X, int64_t M, const DevHc& p, float* ws, float* y, float* post, float* comb,
            bool bf16_out) {
  if (!M) return;
  DSV4_CUDA_REQUIRE((2 + p.hc) * p.hc <= kHcMaxRows && p.hc <= 16, "hc_pre: hc too large");
  hc_launch(L, X, M, p, false, ws, y, post, comb, bf16_out);
}
void hc_head(const Launch& L, const float* X, int64_t M, const DevHc& p, float* ws, float* y) {
  if (!M) return;
  DSV4_CUDA_REQUIRE(p.hc <= 16, "hc_head: hc too large");
  hc_launch(L, X, M, p, true, ws, y, nullptr, nullptr, false);
}
void hc_post(const Launch& L, const float* y, const float* X, const float* post, const float* comb, int64_t M, int hc,
             int64_t D, float* Xout, bool bf16_out) {
  if (!M) return;
  const dim3 grid(grid1d(D, 256), unsigned(M < 65535 ? M : 65535));
  hc_post_k<<<grid, 256, 0, L.stream>>>(y, X, post, comb, M, hc, D, Xout, bf16_out);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace dsv4::cuda
