// KV cache ops over the paged arena (kv_format.h), the compressor and attention. Every address comes from the
// device tables (positions, items, block tables): the host never reads them, and every table entry is checked
// against the arena (errors reported through the device error slot).
#include <algorithm>
#include <cfloat>

#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {
namespace {

struct Item {
  int start, row0, len, slot;
};
__device__ __forceinline__ Item item_of(const DevMeta& m, int i) {
  const int32_t* p = m.items + int64_t(i) * 4;
  return {p[0], p[1], p[2], p[3]};
}

// ---- window_store. Phase 1: block-end snapshots of the window (before the ring changes); phase 2: the ring.
__global__ void window_snap_k(const float* kv, int64_t hd, DevMeta m, const int32_t* s_item, const int32_t* s_end,
                              int64_t n, DevView v, int* err) {
  const int lane = threadIdx.x & 31, W = v.window;
  const int64_t total = n * W, bytes = v.main.bytes;
  for (int64_t wi = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; wi < total;
       wi += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int64_t s = wi / W, q = wi % W;
    const int i = s_item[s];
    const int64_t B = s_end[s], t = B - W + q;
    if (t < 0) continue;
    const Item it = item_of(m, i);
    uint8_t* blk = block_ptr(m, v, i, B / v.block_tokens - 1, err);
    if (!blk) continue;
    uint8_t* dst = blk + v.tail_off + q * bytes;
    if (t >= it.start) {
      codec_encode_warp(v.main, kv + (it.row0 + t - it.start) * hd, dst, lane);
    } else {
      const uint8_t* sp = slot_ptr(v, it.slot, err);
      if (!sp) continue;
      const uint8_t* src = sp + v.ring_off + (t % W) * bytes;
      for (int64_t b = lane; b < bytes; b += 32) dst[b] = src[b];
    }
  }
}

__global__ void window_ring_k(const float* kv, int64_t hd, DevMeta m, DevView v, int* err) {
  const int lane = threadIdx.x & 31, W = v.window;
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; r < m.M;
       r += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int i = m.row_item[r];
    const Item it = item_of(m, i);
    const int64_t t = m.pos[r];
    if (t < it.start + it.len - W) continue;
    uint8_t* sp = slot_ptr(v, it.slot, err);
    if (!sp) continue;
    codec_encode_warp(v.main, kv + r * hd, sp + v.ring_off + (t % W) * v.main.bytes, lane);
  }
}

__global__ void store_entries_k(const float* src, int64_t dim, const int32_t* e_item, const int32_t* e_index,
                                int64_t n, DevMeta m, DevView v, int indexer, int* err) {
  const int lane = threadIdx.x & 31;
  const DevCodec& c = indexer ? v.index : v.main;
  const int64_t per = v.block_tokens / v.ratio, off = indexer ? v.idx_off : v.comp_off;
  for (int64_t e = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5; e < n;
       e += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const int i = e_item[e];
    const int64_t j = e_index[e];
    uint8_t* blk = block_ptr(m, v, i, j / per, err);
    if (!blk) continue;
    codec_encode_warp(c, src + e * dim, blk + off + (j % per) * c.bytes, lane);
  }
}

__global__ void arena_copy_k(uint8_t* arena, int64_t arena_bytes, const int64_t* copies, int64_t n, int* err) {
  for (int64_t c = blockIdx.x; c < n; c += gridDim.x) {
    const int64_t s = copies[c * 3], d = copies[c * 3 + 1], b = copies[c * 3 + 2];
    if (s < 0 || d < 0 || b < 0 || s + b > arena_bytes || d + b > arena_bytes) {
      if (threadIdx.x == 0) report(err, kErrCopy, s, d, b);
      continue;
    }
    const uint8_t* src = arena + s;
    uint8_t* dst = arena + d;
    if ((s | d | b) % 16 == 0) {
      for (int64_t i = threadIdx.x; i < b / 16; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    } else {
      for (int64_t i = threadIdx.x; i < b; i += blockDim.x) dst[i] = src[i];
    }
  }
}

// ---- compressor
// The item's compressor token ring (coff * ratio records of 2 * coff * d floats in its slot), or null.
__device__ __forceinline__ const float* ring_base(const DevCompress& a, const Item& it, int* err) {
  const uint8_t* sp = slot_ptr(a.view, it.slot, err);
  return sp ? reinterpret_cast<const float*>(sp + (a.indexer ? a.view.iring_off : a.view.cring_off)) : nullptr;
}
// Token t's ring record pointer, or null.
__device__ __forceinline__ const float* ring_rec(const DevCompress& a, const Item& it, int64_t t, int* err) {
  const float* ring = ring_base(a, it, err);
  const int64_t rt = int64_t(a.coff) * a.ratio, rtf = 2LL * a.coff * a.d;
  return ring ? ring + (t % rt) * rtf : nullptr;
}

// One thread per (entry, channel); slots in the host's order, so the softmax sums are the host's. The slot
// loop has no stores and the ring's base is taken once, so its loads go out 8 at a time (one latency per 8 slots
// instead of one per slot: a ratio-128 entry reads 128 slots).
__global__ void compress_pool_k(DevCompress a, int* err) {
  const int64_t total = a.n_entries * a.d, w = int64_t(a.coff) * a.d;
  const int64_t rt = int64_t(a.coff) * a.ratio, rtf = 2LL * a.coff * a.d;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = idx / a.d, ch = idx % a.d;
    const Item it = item_of(a.meta, a.e_item[e]);
    const int64_t j = a.e_index[e], nslots = int64_t(a.coff) * a.ratio, t0 = (j + 1) * a.ratio - nslots;
    const float* ring = t0 < it.start ? ring_base(a, it, err) : nullptr;
    // t0 is a multiple of the ratio, so t % ratio = q % ratio (q < 2 ratio), and t % rt = (t0 % rt + q) wrapped
    // once (q < rt): no modulo per slot.
    const int ratio = a.ratio, rb = int(((t0 % rt) + rt) % rt);
    // Slot q's logit and value (0 for positions before the sequence or a failed slot, as the host's zeros).
    auto slot = [&](int q, float& lg, float& val) {
      const int64_t t = t0 + q, col = a.coff == 2 ? (q < ratio ? ch : a.d + ch) : ch;
      if (t >= it.start) {
        const int64_t r = it.row0 + t - it.start;
        lg = a.g[r * w + col] + a.ape[int64_t(q < ratio ? q : q - ratio) * w + col];
        val = a.u[r * w + col];
      } else if (ring) {
        const int ri = rb + q < rt ? rb + q : rb + q - int(rt);
        const float* rr = ring + int64_t(ri) * rtf;
        lg = rr[w + col];
        val = rr[col];
      } else {
        lg = 0.f;
        val = 0.f;
      }
    };
    const int q0 = t0 < 0 ? int(-t0) : 0, nq = int(nslots);
    float mx = -INFINITY;
#pragma unroll 8
    for (int q = q0; q < nq; ++q) {
      float lg, val;
      slot(q, lg, val);
      mx = fmaxf(mx, lg);
    }
    float den = 0.f, acc = 0.f;
#pragma unroll 8
    for (int q = q0; q < nq; ++q) {
      float lg, val;
      slot(q, lg, val);
      const float ex = expf(lg - mx);
      den += ex;
      acc += ex * val;
    }
    a.out[e * a.d + ch] = acc / den;
  }
}

// Token t's record [u | g + ape] value f (f < 2w).
__device__ __forceinline__ float token_rec(const DevCompress& a, const Item& it, int64_t t, int64_t f, int* err) {
  const int64_t w = int64_t(a.coff) * a.d;
  if (t >= it.start) {
    const int64_t r = it.row0 + t - it.start;
    return f < w ? a.u[r * w + f] : a.g[r * w + f - w] + a.ape[(t % a.ratio) * w + f - w];
  }
  const float* rr = ring_rec(a, it, t, err);
  return rr ? rr[f] : 0.f;
}

__global__ void compress_snap_k(DevCompress a, int* err) {
  const int64_t rtf = 2LL * a.coff * a.d, total = a.n_snaps * 4 * rtf;
  const int64_t off = a.indexer ? a.view.istate_off : a.view.cstate_off;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = idx / (4 * rtf), q = (idx / rtf) % 4, f = idx % rtf;
    const int i = a.s_item[s];
    const int64_t B = a.s_end[s], t = B - 4 + q;
    if (t < 0) continue;
    const Item it = item_of(a.meta, i);
    uint8_t* blk = block_ptr(a.meta, a.view, i, B / a.view.block_tokens - 1, err);
    if (!blk) continue;
    reinterpret_cast<float*>(blk + off)[q * rtf + f] = token_rec(a, it, t, f, err);
  }
}

__global__ void compress_ring_k(DevCompress a, int* err) {
  const int64_t rtf = 2LL * a.coff * a.d, rt = int64_t(a.coff) * a.ratio, total = a.meta.M * rtf;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / rtf, f = idx % rtf;
    const Item it = item_of(a.meta, a.meta.row_item[r]);
    const int64_t t = a.meta.pos[r];
    if (t < it.start + it.len - rt) continue;
    uint8_t* sp = slot_ptr(a.view, it.slot, err);
    if (!sp) continue;
    float* rec = reinterpret_cast<float*>(sp + (a.indexer ? a.view.iring_off : a.view.cring_off) + (t % rt) * rtf * 4);
    rec[f] = token_rec(a, it, t, f, err);
  }
}

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
__global__ void __launch_bounds__(256) attention_k(DevAttention a, int64_t chunk, float* stats, float* part, int* err) {
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
  for (int64_t i = threadIdx.x; i < kAttnHeads * hd; i += blockDim.x) {
    const int64_t hh = h0 + i / hd;
    Qs[i] = hh < a.H ? a.q[(m * a.H + hh) * hd + i % hd] : 0.f;
  }
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
        for (int e = s0; e < s0 + kps; ++e) {
          const float* f = kf[e];
          const uint8_t* r = ksrc[e] ? raw + (e - s0) * bytes : nullptr;
          for (int d = int(threadIdx.x); d < int(hd); d += int(blockDim.x))
            Ks[e * ld + d] = f ? f[d] : r ? codec_decode(a.view.main, r, d) : 0.f;
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

__global__ void attention_sum_k(const float* part, int64_t MH, int64_t S, int64_t hd, float* out) {
  const int64_t total = MH * hd;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t mh = i / hd, d = i % hd;
    float s = 0.f;
    for (int64_t q = 0; q < S; ++q) s += part[(mh * S + q) * hd + d];
    out[i] = s;
  }
}

}  // namespace

void window_store(const Launch& L, const float* kv, int64_t hd, const DevMeta& m, const int32_t* snap_item,
                  const int32_t* snap_end, int64_t n_snaps, const DevView& v) {
  if (n_snaps > 0) {
    window_snap_k<<<grid1d(n_snaps * v.window * 32, 256), 256, 0, L.stream>>>(kv, hd, m, snap_item, snap_end, n_snaps,
                                                                              v, L.err);
    DSV4_CUDA_LAUNCHED();
  }
  if (m.M > 0) {
    window_ring_k<<<grid1d(m.M * 32, 256), 256, 0, L.stream>>>(kv, hd, m, v, L.err);
    DSV4_CUDA_LAUNCHED();
  }
}

void store_entries(const Launch& L, const float* src, int64_t dim, const int32_t* e_item, const int32_t* e_index,
                   int64_t n, const DevMeta& m, const DevView& v, bool indexer) {
  if (!n) return;
  store_entries_k<<<grid1d(n * 32, 256), 256, 0, L.stream>>>(src, dim, e_item, e_index, n, m, v, indexer, L.err);
  DSV4_CUDA_LAUNCHED();
}

void arena_copy(const Launch& L, uint8_t* arena, int64_t arena_bytes, const int64_t* copies, int64_t n) {
  if (!n) return;
  arena_copy_k<<<unsigned(n < 65535 ? n : 65535), 256, 0, L.stream>>>(arena, arena_bytes, copies, n, L.err);
  DSV4_CUDA_LAUNCHED();
}

void compress(const Launch& L, const DevCompress& a) {
  if (a.n_entries > 0) {
    compress_pool_k<<<grid1d(a.n_entries * a.d, 256), 256, 0, L.stream>>>(a, L.err);
    DSV4_CUDA_LAUNCHED();
  }
  const int64_t rtf = 2LL * a.coff * a.d;
  const int64_t state_off = a.indexer ? a.view.istate_off : a.view.cstate_off;
  if (a.n_snaps > 0 && a.ratio == 4 && a.view.with_tail && state_off >= 0) {
    compress_snap_k<<<grid1d(a.n_snaps * 4 * rtf, 256), 256, 0, L.stream>>>(a, L.err);
    DSV4_CUDA_LAUNCHED();
  }
  if (a.meta.M > 0) {
    compress_ring_k<<<grid1d(a.meta.M * rtf, 256), 256, 0, L.stream>>>(a, L.err);
    DSV4_CUDA_LAUNCHED();
  }
}

namespace {
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

void attention(const Launch& L, const DevAttention& a, void* ws) {
  if (!a.meta.M) return;
  DSV4_CUDA_REQUIRE(a.hd % 32 == 0 && a.hd <= 512, "attention on CUDA: head_dim must be a multiple of 32, <= 512");
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
