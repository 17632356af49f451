// KV cache ops over the paged arena (kv_format.h), the compressor and attention. Every address comes from the
// device tables (positions, items, block tables): the host never reads them, and every table entry is checked
// against the arena (errors reported through the device error slot).
#include <algorithm>
#include <cfloat>

#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {
namespace {

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

// Block = (entry, 32 channels): lane = channel (coalesced rows), the entry's slots split over the 8 warps (a
// ratio-128 entry reads 128 slots: one thread walking them all was 110 us of latency at decode). Max first (exact
// in any order), then each warp's (denominator, exp-weighted sum) over its slots, merged in warp order.
constexpr int kPoolWarps = 8;
__global__ void __launch_bounds__(kPoolWarps * 32) compress_pool_k(DevCompress a, int* err) {
  __shared__ float red[2][kPoolWarps][32];
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int64_t e = blockIdx.x, ch = int64_t(blockIdx.y) * 32 + lane, w = int64_t(a.coff) * a.d;
  const int64_t rt = int64_t(a.coff) * a.ratio, rtf = 2LL * a.coff * a.d;
  const bool live = ch < a.d;
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
  if (live)
#pragma unroll 4
    for (int q = q0 + warp; q < nq; q += kPoolWarps) {
      float lg, val;
      slot(q, lg, val);
      mx = fmaxf(mx, lg);
    }
  red[0][warp][lane] = mx;
  __syncthreads();
  mx = red[0][0][lane];
  for (int i = 1; i < kPoolWarps; ++i) mx = fmaxf(mx, red[0][i][lane]);
  __syncthreads();
  float den = 0.f, acc = 0.f;
  if (live)
#pragma unroll 4
    for (int q = q0 + warp; q < nq; q += kPoolWarps) {
      float lg, val;
      slot(q, lg, val);
      const float ex = expf(lg - mx);
      den += ex;
      acc += ex * val;
    }
  red[0][warp][lane] = den;
  red[1][warp][lane] = acc;
  __syncthreads();
  if (warp || !live) return;
  den = 0.f;
  acc = 0.f;
  for (int i = 0; i < kPoolWarps; ++i) {
    den += red[0][i][lane];
    acc += red[1][i][lane];
  }
  a.out[e * a.d + ch] = acc / den;
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
    DSV4_CUDA_REQUIRE(a.n_entries < (1LL << 31), "compress: too many entries");
    compress_pool_k<<<dim3(unsigned(a.n_entries), unsigned(cdiv(a.d, 32))), kPoolWarps * 32, 0, L.stream>>>(a, L.err);
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

}  // namespace dsv4::cuda
