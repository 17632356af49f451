// Attention over the paged FP8/bf16 KV: window + compressed (selected or all) entries + the sink, per query
// row; the SIMT kernel for every case, the tensor-core kernel for long steps in reference numerics.
#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {
namespace {

// ---- attention. Block = (query row, group of 8 heads), one warp per head; every key tile is decoded once into
// shared memory for the 8 heads. Two passes over the keys (max and denominator, then probabilities times
// values) so the probabilities are final before P.V, as the reference's bf16 rounding of P needs.
constexpr int kAttnHeads = 8, kAttnTile = 32;

// Where key idx of row m lives: a current-step row (f32, *f) or an encoded entry (*src: window ring or a
// compressed entry); both null for a masked or failed key.
__device__ __forceinline__ void key_source(const DevAttention& a, const Item& it, int item, int64_t m, int64_t idx,
                                           int64_t t0, int64_t nw, const float** f, const uint8_t** src, int* err) {
  const DevView& v = a.view;
  *f = nullptr;
  *src = nullptr;
  if (idx < nw) {
    const int64_t t = t0 + idx;
    if (t >= it.start) {
      *f = a.kv + (it.row0 + t - it.start) * a.hd;
    } else {
      const uint8_t* sp = slot_ptr(v, it.slot, err);
      if (sp) *src = sp + v.ring_off + (t % v.window) * v.main.bytes;
    }
  } else {
    const int64_t c = idx - nw;
    int64_t j = c;
    if (v.ratio == 4) j = a.selected[m * a.n_sel + c];
    if (j >= 0) {
      const int64_t per = v.block_tokens / v.ratio;
      const uint8_t* blk = block_ptr(a.meta, v, item, j / per, err);
      if (blk) *src = blk + v.comp_off + (j % per) * v.main.bytes;
    }
  }
}

// Raw bytes staged per key sub-tile (stage_rows): 16 FP8 entries, 8 bf16 or 4 f32 ones; the whole kernel then
// stays under the 99 KB a block may use on sm_120/121.
constexpr int kAttnRawBytes = 12 * 1024;

// MODE 0: one block does every key of its row (both passes, writes out). With the keys split over gridDim.z blocks
// of `chunk` keys: MODE 1 writes each split's (max, denominator) per head; MODE 2 combines them (with the sink) into
// the final max and denominator, then writes each split's partial P.V; attention_sum_k adds the splits in order.
template <int MODE>
// Two blocks per SM at most (the shared memory), so up to 128 registers (at the default 64, MODE 0 spilled).
__global__ void __launch_bounds__(256, 2) attention_k(DevAttention a, int64_t chunk, float* stats, float* part, int* err) {
  extern __shared__ __align__(16) float sm[];
  // Row stride hd + 4: lane-per-key float4 reads land on distinct banks per quarter warp (hd % 32 == 0).
  const int64_t hd = a.hd, ld = hd + 4;
  float* Ks = sm;                         // [kAttnTile][hd + 1]
  float* Qs = Ks + kAttnTile * ld;        // [kAttnHeads][hd]
  uint8_t* raw = reinterpret_cast<uint8_t*>(Qs + kAttnHeads * hd);  // [keys per stage][main codec bytes]
  __shared__ bool valid[kAttnTile];
  __shared__ const uint8_t* ksrc[kAttnTile];
  __shared__ const float* kf[kAttnTile];
  const int64_t m = blockIdx.x, h0 = int64_t(blockIdx.y) * kAttnHeads, S = gridDim.z, sp = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t h = h0 + warp;
  const bool head_ok = h < a.H;
  const int item = a.meta.row_item[m];
  const Item it = item_of(a.meta, item);
  const int64_t p = a.meta.pos[m], W = a.view.window;
  const int bytes = int(a.view.main.bytes);
  int kps = kAttnTile;
  while (kps > 1 && kps * bytes > kAttnRawBytes) kps /= 2;
  // Window keys t0 .. t0 + nw - 1: causal, the W positions ending at p; bidirectional (DSpark's block), the W
  // positions before the item and all its rows (the CPU backend's order: ring first, then the step's rows).
  const int64_t first = a.bidirectional ? int64_t(it.start) - W : p - W + 1;
  const int64_t t0 = first > 0 ? first : 0, nw = (a.bidirectional ? int64_t(it.start) + it.len - 1 : p) - t0 + 1;
  int64_t nc = 0;
  if (a.view.ratio == 128) nc = (p + 1) / 128;
  if (a.view.ratio == 4) nc = a.n_sel;
  const int64_t L = nw + nc;
  const int64_t kb = MODE == 0 ? 0 : sp * chunk, ke = MODE == 0 ? L : min(L, kb + chunk);
  // 32-bit index math: 64-bit division is ~70 instructions, and this loop and the key decode below ran one per
  // element (at decode they were most of the kernel's instructions).
  const int hdi = int(hd), qpk = hdi / 4;  // hd <= 512: quads of a key
  for (int i = int(threadIdx.x); i < kAttnHeads * hdi; i += int(blockDim.x)) {
    const int64_t hh = h0 + i / hdi;
    Qs[i] = hh < a.H ? a.q[(m * a.H + hh) * hd + i % hdi] : 0.f;
  }
  const DevCodec& cd = a.view.main;
  const int nope = cd.dim - cd.rope;
  const bool fp8 = cd.dtype == 2 && !cd.index_key && bytes % 4 == 0 && nope % 4 == 0;  // word-aligned parts
  const float sink = head_ok ? a.sink[h] : 0.f;
  float mx = MODE == 0 ? sink : -INFINITY, den = MODE == 0 ? 1.f : 0.f;  // MODE 0: the sink's exp(sink - mx)
  float inv = 0.f;
  if (MODE == 2 && head_ok) {
    const float* st = stats + (m * a.H + h) * S * 2;
    mx = sink;
    for (int64_t q = 0; q < S; ++q) mx = fmaxf(mx, st[2 * q]);
    den = expf(sink - mx);
    for (int64_t q = 0; q < S; ++q)
      if (st[2 * q + 1] > 0.f) den += st[2 * q + 1] * expf(st[2 * q] - mx);
    inv = 1.f / den;
  }
  float o[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) o[i] = 0.f;
  for (int pass = MODE == 2 ? 1 : 0; pass < (MODE == 1 ? 1 : 2); ++pass) {
    for (int64_t k0 = kb; k0 < ke; k0 += kAttnTile) {
      __syncthreads();
      if (threadIdx.x < kAttnTile) {
        const int e = int(threadIdx.x);
        const float* f = nullptr;
        const uint8_t* src = nullptr;
        if (k0 + e < ke) key_source(a, it, item, m, k0 + e, t0, nw, &f, &src, err);
        kf[e] = f;
        ksrc[e] = src;
        valid[e] = f || src;
      }
      __syncthreads();
      for (int s0 = 0; s0 < kAttnTile; s0 += kps) {
        stage_rows(ksrc + s0, kps, bytes, raw);
        __syncthreads();
        // Four dims of a key per thread and step: the FP8 entry's e4m3 words by the hardware pair conversion and
        // its bf16 rope tail two per word (the same values as codec_decode, which the other codecs keep).
        for (int u = int(threadIdx.x); u < kps * qpk; u += int(blockDim.x)) {
          const int e = s0 + u / qpk, d = 4 * (u - (e - s0) * qpk);
          const float* f = kf[e];
          const uint8_t* r = ksrc[e] ? raw + (e - s0) * bytes : nullptr;
          float v[4] = {0.f, 0.f, 0.f, 0.f};
          if (f) {
            const float4 x4 = *reinterpret_cast<const float4*>(f + d);
            v[0] = x4.x, v[1] = x4.y, v[2] = x4.z, v[3] = x4.w;
          } else if (r && fp8 && d < nope) {  // d % 4 == 0: one 64-wide scale block
            e4m3x4_to_f32(*reinterpret_cast<const uint32_t*>(r + d), e8m0_to_f32(r[nope + 2 * cd.rope + d / 64]), v);
          } else if (r && fp8 && d >= nope) {
            const uint32_t lo = *reinterpret_cast<const uint32_t*>(r + nope + 2 * (d - nope));
            const uint32_t hi = *reinterpret_cast<const uint32_t*>(r + nope + 2 * (d - nope) + 4);
            v[0] = bf2f(uint16_t(lo & 0xffff)), v[1] = bf2f(uint16_t(lo >> 16));
            v[2] = bf2f(uint16_t(hi & 0xffff)), v[3] = bf2f(uint16_t(hi >> 16));
          } else if (r) {
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = codec_decode(cd, r, d + j);
          }
          *reinterpret_cast<float4*>(Ks + e * ld + d) = make_float4(v[0], v[1], v[2], v[3]);
        }
        __syncthreads();
      }
      if (!head_ok) continue;
      const float* q = Qs + warp * hd;
      float s = 0.f;
      const float* kr = Ks + lane * ld;
      for (int64_t d = 0; d < hd; d += 4) {
        const float4 qv = *reinterpret_cast<const float4*>(q + d), kv4 = *reinterpret_cast<const float4*>(kr + d);
        s += qv.x * kv4.x;
        s += qv.y * kv4.y;
        s += qv.z * kv4.z;
        s += qv.w * kv4.w;
      }
      s = valid[lane] ? s * a.scale : -INFINITY;
      if (pass == 0) {
        const float nm = fmaxf(mx, warp_max(s));
        if (nm == -INFINITY) continue;  // nothing valid yet (split partials start empty)
        const float e = valid[lane] ? expf(s - nm) : 0.f;
        den = (mx == -INFINITY ? 0.f : den * expf(mx - nm)) + warp_sum(e);
        mx = nm;
      } else {
        float pr = valid[lane] ? expf(s - mx) * inv : 0.f;
        if (a.probs_bf16) pr = rbf16(pr);
        for (int e = 0; e < kAttnTile; ++e) {
          const float pe = __shfl_sync(0xffffffffu, pr, e);
          if (pe == 0.f) continue;  // warp-uniform: masked keys and underflow add exactly nothing
          const float* kr2 = Ks + e * ld;
#pragma unroll
          for (int i = 0; i < 4; ++i)  // lane's dims: 4 * lane + 128 * i .. + 3
            if (lane * 4 + 128 * i < hd) {
              const float4 v4 = *reinterpret_cast<const float4*>(kr2 + lane * 4 + 128 * i);
              o[4 * i] += pe * v4.x;
              o[4 * i + 1] += pe * v4.y;
              o[4 * i + 2] += pe * v4.z;
              o[4 * i + 3] += pe * v4.w;
            }
        }
      }
    }
    if (MODE == 0) inv = 1.f / den;
  }
  if (!head_ok) return;
  if (MODE == 1) {
    if (lane == 0) {
      float* st = stats + ((m * a.H + h) * S + sp) * 2;
      st[0] = mx;
      st[1] = den;
    }
    return;
  }
  float* dst = MODE == 0 ? a.out + (m * a.H + h) * hd : part + ((m * a.H + h) * S + sp) * hd;
#pragma unroll
  for (int i = 0; i < 16; ++i)
    if (lane * 4 + 128 * (i / 4) < hd) dst[lane * 4 + 128 * (i / 4) + (i & 3)] = o[i];
}

// ---- Tensor-core attention (bf16_operands, causal, long steps). Block = (query row, 32 heads), 8 warps. The
// 64-head query of a row shares every K = V entry, so the heads are the mma's M: S = Q K^T on bf16 m16n8k16 (each
// warp one 16-head x 8-key tile over all of head_dim), softmax per head with a lane per key, then O += P V (each
// warp head_dim / 8 columns). Every operand is exactly a bf16 value (q rounded, keys through the codec, P rounded
// when probs_bf16), so the products are exact and only the fp32 summation order differs from the SIMT kernel. Two
// passes over the keys as there: the probabilities are final (and rounded) before P.V.
constexpr int kTcHeads = 32, kTcKeys = 32, kTcPLd = kTcKeys + 8;

// Eight values of a key from d (a multiple of 8) into bf16: a step row (f32), an encoded entry, or zeros.
__device__ __forceinline__ uint4 key8(const DevCodec& c, const float* f, const uint8_t* r, int d) {
  float v[8];
  if (f) {
    const float4 a = *reinterpret_cast<const float4*>(f + d), b = *reinterpret_cast<const float4*>(f + d + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else if (r && c.dtype == 2 && !c.index_key && d < c.dim - c.rope) {
    const int nope = c.dim - c.rope;
    // (A decode per byte here ran 4 times per key and row, two passes x two head blocks, and bounded the kernel.)
    const float sc = e8m0_to_f32(r[nope + 2 * c.rope + d / 64]);
    e4m3x4_to_f32(*reinterpret_cast<const uint32_t*>(r + d), sc, v);
    e4m3x4_to_f32(*reinterpret_cast<const uint32_t*>(r + d + 4), sc, v + 4);
  } else if (r) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = codec_decode(c, r, d + i);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = 0.f;
  }
  return make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7]));
}

// The raw entries of a tile's keys are copied by cp.async (words of cw bytes) while the previous tile multiplies:
// the tile's key sources are found one tile ahead. kTcRawBytes holds 32 FP8 entries (584 bytes each), so with the
// FP8 cache a tile is one stage; larger entries take several stages per tile, of which the first is prefetched.
// (Staged synchronously, the copies' latency sat between barriers four times per key: ~6 us per tile.)
constexpr int kTcRawBytes = kTcKeys * 584;

__global__ void __launch_bounds__(256) attention_tc_k(DevAttention a, int* err) {
  extern __shared__ __align__(16) uint8_t tsm[];
  const int hd = int(a.hd), ld = hd + 8;  // bf16 row pitch: ldmatrix's 8 rows on distinct banks
  uint16_t* Qs = reinterpret_cast<uint16_t*>(tsm);  // [32 heads][ld]
  uint16_t* Ks = Qs + kTcHeads * ld;                 // [32 keys][ld]
  float* Ss = reinterpret_cast<float*>(Ks + kTcKeys * ld);  // [32 heads][32 keys]
  uint16_t* Ps = reinterpret_cast<uint16_t*>(Ss + kTcHeads * kTcKeys);  // [32 heads][kTcPLd]
  uint8_t* raw = reinterpret_cast<uint8_t*>(Ps + kTcHeads * kTcPLd);
  __shared__ bool valid_b[2][kTcKeys];  // per tile parity: the key sources, found a tile ahead
  __shared__ const uint8_t* ksrc_b[2][kTcKeys];
  __shared__ const float* kf_b[2][kTcKeys];
  const int64_t m = blockIdx.x, h0 = int64_t(blockIdx.y) * kTcHeads;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gid = lane >> 2, tig = lane & 3;
  const int lq = lane >> 3, lr = lane & 7;
  const int item = a.meta.row_item[m];
  const Item it = item_of(a.meta, item);
  const int64_t p = a.meta.pos[m], W = a.view.window;
  const DevView& v = a.view;
  const int bytes = int(v.main.bytes);  // a multiple of 4 (attention_tc); 8-byte words where every entry is aligned
  auto al8 = [](int64_t x) { return x < 0 || x % 8 == 0; };
  const bool wide = bytes % 8 == 0 && al8(v.block_bytes) && al8(v.slots_offset) && al8(v.slot_bytes) &&
                    al8(v.ring_off) && al8(v.comp_off) && reinterpret_cast<uintptr_t>(v.arena) % 8 == 0;
  const int cw = wide ? 8 : 4, words = bytes / cw;
  int kps = kTcKeys;
  while (kps > 1 && kps * bytes > kTcRawBytes) kps /= 2;
  const int64_t first = p - W + 1, t0 = first > 0 ? first : 0, nw = p - t0 + 1;
  int64_t nc = 0;
  if (a.view.ratio == 128) nc = (p + 1) / 128;
  if (a.view.ratio == 4) nc = a.n_sel;
  const int64_t L = nw + nc, ntiles = (L + kTcKeys - 1) / kTcKeys, T = 2 * ntiles;  // tiles of both passes
  auto sources = [&](int64_t q, int b) {  // threads < 32: the keys of tile q (either pass)
    if (threadIdx.x < kTcKeys) {
      const int e = int(threadIdx.x);
      const int64_t k = (q % ntiles) * kTcKeys + e;
      const float* f = nullptr;
      const uint8_t* src = nullptr;
      if (k < L) key_source(a, it, item, m, k, t0, nw, &f, &src, err);
      kf_b[b][e] = f;
      ksrc_b[b][e] = src;
      valid_b[b][e] = f || src;
    }
  };
  auto copy = [&](int b, int s0) {  // every thread: cp.async of keys s0 .. s0 + kps of parity b's tile into raw
    for (int i = threadIdx.x; i < kps * words; i += blockDim.x) {
      const int e = i / words, c = i - e * words;
      const uint8_t* src = ksrc_b[b][s0 + e];
      uint8_t* dst = raw + e * bytes + c * cw;
      if (cw == 8)
        cp_async8(dst, src ? src + c * 8 : v.arena, src != nullptr);
      else
        cp_async4(dst, src ? src + c * 4 : v.arena, src != nullptr);
    }
    cp_async_commit();
  };
  for (int i = threadIdx.x; i < kTcHeads * hd / 8; i += blockDim.x) {
    const int hl = i / (hd / 8), d = (i - hl * (hd / 8)) * 8;
    const float* src = h0 + hl < a.H ? a.q + (m * a.H + h0 + hl) * hd : nullptr;
    *reinterpret_cast<uint4*>(Qs + hl * ld + d) = key8(a.view.main, src, nullptr, d);
  }
  // Softmax state of heads 4 warp .. + 3 (MODE 0 of the SIMT kernel: the sink starts the max with exp(0) = 1).
  float mx[4], den[4], inv[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t h = h0 + 4 * warp + j;
    mx[j] = h < a.H ? a.sink[h] : 0.f;
    den[j] = 1.f;
    inv[j] = 0.f;
  }
  const int nt = hd / 64;  // n8 tiles of P.V per warp (hd / 8 columns); hd % 128 == 0, so even
  float o[2][8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][j][e] = 0.f;
  const int smi = warp & 1, snj = warp >> 1;  // this warp's S tile: heads 16 smi.., keys 8 snj..
  sources(0, 0);
  __syncthreads();
  if (T > 0) copy(0, 0);
  for (int64_t q = 0; q < T; ++q) {
    const int pass = int(q / ntiles), b = int(q & 1);
    const bool* valid = valid_b[b];
    for (int s0 = 0; s0 < kTcKeys; s0 += kps) {
      cp_async_wait<0>();
      __syncthreads();  // this stage's raw bytes landed; the previous tile is done with Ks, Ps and parity b ^ 1
      if (s0 == 0 && q + 1 < T) sources(q + 1, b ^ 1);
      for (int i = threadIdx.x; i < kps * hd / 8; i += blockDim.x) {
        const int e = s0 + i / (hd / 8), d = (i % (hd / 8)) * 8;
        const uint8_t* r = ksrc_b[b][e] ? raw + (e - s0) * bytes : nullptr;
        *reinterpret_cast<uint4*>(Ks + e * ld + d) = key8(a.view.main, kf_b[b][e], r, d);
      }
      __syncthreads();  // raw consumed; the next tile's sources visible
      if (s0 + kps < kTcKeys)
        copy(b, s0 + kps);
      else if (q + 1 < T)
        copy(b ^ 1, 0);  // in flight while this tile multiplies
    }
      {  // S tile: 16 heads x 8 keys over head_dim, two k16 steps per B load
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        const uint16_t* qa = Qs + (smi * 16 + (lq & 1) * 8 + lr) * ld + (lq >> 1) * 8;
        const uint16_t* kb = Ks + (snj * 8 + lr) * ld + lq * 8;
        for (int d = 0; d < hd; d += 32) {
          uint32_t a0[4], a1[4], b[4];
          ldmatrix_x4(a0, qa + d);
          ldmatrix_x4(a1, qa + d + 16);
          ldmatrix_x4(b, kb + d);
          mma_bf16(c, a0, b);
          mma_bf16(c, a1, b + 2);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) Ss[(smi * 16 + gid + (e >> 1) * 8) * kTcKeys + snj * 8 + tig * 2 + (e & 1)] = c[e];
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // a lane per key
        const int hl = 4 * warp + j;
        const float s = valid[lane] ? Ss[hl * kTcKeys + lane] * a.scale : -INFINITY;
        if (pass == 0) {
          const float nm = fmaxf(mx[j], warp_max(s));
          const float e = valid[lane] ? expf(s - nm) : 0.f;
          den[j] = den[j] * expf(mx[j] - nm) + warp_sum(e);
          mx[j] = nm;
        } else {
          float pr = valid[lane] ? expf(s - mx[j]) * inv[j] : 0.f;
          if (a.probs_bf16) pr = rbf16(pr);
          Ps[hl * kTcPLd + lane] = f2bf(pr);
        }
      }
      if (pass == 1) {
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < kTcKeys; ks += 16) {  // O += P V: this warp's hd / 8 columns
        uint32_t pa[2][4];
#pragma unroll
        for (int i = 0; i < 2; ++i) ldmatrix_x4(pa[i], Ps + (i * 16 + (lq & 1) * 8 + lr) * kTcPLd + ks + (lq >> 1) * 8);
        const uint16_t* vb = Ks + (ks + (lq & 1) * 8 + lr) * ld + warp * (hd / 8) + (lq >> 1) * 8;
#pragma unroll
        for (int j = 0; j < 8; j += 2) {
          if (j >= nt) break;
          uint32_t vf[4];
          ldmatrix_x4_trans(vf, vb + j * 8);
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            mma_bf16(o[i][j], pa[i], vf);
            mma_bf16(o[i][j + 1], pa[i], vf + 2);
          }
        }
      }
      }
    if (q == ntiles - 1) {  // end of pass 0
#pragma unroll
      for (int j = 0; j < 4; ++j) inv[j] = 1.f / den[j];
    }
  }
  cp_async_wait<0>();
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (j >= nt) break;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t h = h0 + i * 16 + gid + (e >> 1) * 8;
        const int d = warp * (hd / 8) + j * 8 + tig * 2 + (e & 1);
        if (h < a.H) a.out[(m * a.H + h) * hd + d] = o[i][j][e];
      }
    }
}

__global__ void attention_sum_k(const float* part, int64_t MH, int64_t S, int64_t hd, float* out) {
  const int64_t total = MH * hd;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t mh = i / hd, d = i % hd;
    float s = 0.f;
    for (int64_t q = 0; q < S; ++q) s += part[(mh * S + q) * hd + d];
    out[i] = s;
  }
}

// Key splits: enough blocks to cover the machine twice, each split at least one tile.
int64_t attention_splits(const DevAttention& a, int num_sms, int64_t* chunk) {
  const int64_t lmax = a.view.window + a.max_comp + (a.bidirectional ? a.meta.M : 0), blocks = a.meta.M * cdiv(a.H, kAttnHeads);
  int64_t S = cdiv(2 * num_sms, blocks);
  S = S < 1 ? 1 : S;
  const int64_t tiles = cdiv(lmax, kAttnTile);
  if (S > tiles) S = tiles;
  if (S > 64) S = 64;
  *chunk = cdiv(tiles, S) * kAttnTile;
  return cdiv(lmax, *chunk);
}
}  // namespace

int64_t attention_ws_bytes(const DevAttention& a, int num_sms) {
  int64_t chunk = 0;
  const int64_t S = attention_splits(a, num_sms, &chunk);
  return S <= 1 ? 0 : (a.meta.M * a.H * S * (2 + a.hd)) * 4 + 256;
}

// DSV4_CUDA_ATTN_TC=0 (read once) keeps every step on the SIMT kernel, for A/B runs on a device.
bool attention_tc_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DSV4_CUDA_ATTN_TC");
    return !v || !*v || std::strcmp(v, "0") != 0;
  }();
  return on;
}

// The tensor-core kernel: exact bf16 operands and bf16 probabilities, causal, head_dim a multiple of 128, and rows enough to fill the
// machine with (row, 32 heads) blocks (short decode steps split their keys over blocks on the SIMT kernel).
bool attention_tc(const Launch& L, const DevAttention& a) {
  if (!attention_tc_enabled() || !a.bf16_operands || !a.probs_bf16 || a.bidirectional || a.hd % 128 || a.hd > 512 ||
      a.meta.M * cdiv(a.H, kTcHeads) < L.num_sms || a.view.main.bytes % 4 != 0)
    return false;
  const size_t sm = size_t(2 * kTcHeads * (a.hd + 8)) * 2 + size_t(kTcHeads * kTcKeys) * 4 +
                    size_t(kTcHeads * kTcPLd) * 2 + size_t(std::max<int64_t>(kTcRawBytes, a.view.main.bytes));
  static unsigned long long attr = 0;
  static int smem_max = 0;
  if (first_on_device(attr)) smem_max = allow_max_dynamic_smem(reinterpret_cast<const void*>(attention_tc_k));
  if (sm > size_t(smem_max)) return false;
  attention_tc_k<<<dim3(unsigned(a.meta.M), unsigned(cdiv(a.H, kTcHeads))), 256, sm, L.stream>>>(a, L.err);
  DSV4_CUDA_LAUNCHED();
  return true;
}

void attention(const Launch& L, const DevAttention& a, void* ws) {
  if (!a.meta.M) return;
  DSV4_CUDA_REQUIRE(a.hd % 32 == 0 && a.hd <= 512, "attention on CUDA: head_dim must be a multiple of 32, <= 512");
  DSV4_CUDA_REQUIRE(a.meta.M < (1LL << 31), "attention: too many rows");
  if (attention_tc(L, a)) return;
  const size_t sm = (size_t(kAttnTile) * size_t(a.hd + 4) + size_t(kAttnHeads) * size_t(a.hd)) * 4 +
                    size_t(std::max<int64_t>(kAttnRawBytes, a.view.main.bytes));
  static unsigned long long attr = 0;
  static int smem_max = 0;
  if (first_on_device(attr)) {
    smem_max = std::min({allow_max_dynamic_smem(reinterpret_cast<const void*>(attention_k<0>)),
                         allow_max_dynamic_smem(reinterpret_cast<const void*>(attention_k<1>)),
                         allow_max_dynamic_smem(reinterpret_cast<const void*>(attention_k<2>))});
  }
  DSV4_CUDA_REQUIRE(sm <= size_t(smem_max), "attention on CUDA: head_dim too large for shared memory");
  DSV4_CUDA_REQUIRE(a.meta.M < (1LL << 31), "attention: too many rows");
  int64_t chunk = 0;
  const int64_t S = attention_splits(a, L.num_sms, &chunk);
  if (S <= 1) {
    attention_k<0><<<dim3(unsigned(a.meta.M), unsigned(cdiv(a.H, kAttnHeads)), 1), 256, sm, L.stream>>>(
        a, 0, nullptr, nullptr, L.err);
    DSV4_CUDA_LAUNCHED();
    return;
  }
  float* stats = static_cast<float*>(ws);
  float* part = stats + a.meta.M * a.H * S * 2;
  const dim3 grid(unsigned(a.meta.M), unsigned(cdiv(a.H, kAttnHeads)), unsigned(S));
  attention_k<1><<<grid, 256, sm, L.stream>>>(a, chunk, stats, part, L.err);
  DSV4_CUDA_LAUNCHED();
  attention_k<2><<<grid, 256, sm, L.stream>>>(a, chunk, stats, part, L.err);
  DSV4_CUDA_LAUNCHED();
  attention_sum_k<<<grid1d(a.meta.M * a.H * a.hd, 256), 256, 0, L.stream>>>(part, a.meta.M * a.H, S, a.hd, a.out);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace dsv4::cuda
