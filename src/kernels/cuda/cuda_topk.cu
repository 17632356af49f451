// Lightning indexer: weighted-ReLU scores over each row's eligible compressed keys, then an exact top-k by
// radix select (4 passes of 8 bits over order-preserving keys) with ties taken at the lowest indices, and a
// bitonic sort of the k winners by (score desc, index asc). No host synchronization anywhere.
#include <cub/block/block_scan.cuh>

#include "kernels/cuda/cuda_common.cuh"

namespace dsv4::cuda {
namespace {

constexpr int kScoreThreads = 256, kScoreKeys = 32, kScoreTiles = 4;  // tiles per block from 16 rows

// Block = (row m, kScoreTiles tiles of 32 entries): the row's query (heads x dim floats, 32 KB at V4-Flash sizes)
// is loaded once for the block's tiles (once per tile, its reloads were most of the kernel's time: 17 ms for an 8K
// chunk). Per tile the 32 keys are staged raw (one batch of loads: they sit in different KV blocks) and decoded in
// shared memory; then lane = entry and warp = 4 heads at a time, each (entry, head) dot summed over the dims in
// order, and finally per entry the head sum w_h * relu(dot) in head order: the host's orders.
__global__ void __launch_bounds__(kScoreThreads) index_score_k(DevIndexTopk a, int tiles, int* err) {
  extern __shared__ __align__(16) float sm[];
  const int64_t IH = a.heads, ID = a.dim, ld = ID + 1, ldd = IH + 1;
  float* qs = sm;                       // [IH][ID]
  float* ks = qs + IH * ID;             // [32][ID + 1]
  float* ds = ks + kScoreKeys * ld;     // [32][IH + 1] dots
  uint8_t* raw = reinterpret_cast<uint8_t*>(ds + kScoreKeys * ldd);  // [32][index codec bytes]
  __shared__ const uint8_t* src[kScoreKeys];
  const int64_t m = blockIdx.y, jb = int64_t(blockIdx.x) * tiles * kScoreKeys;
  const int64_t n = (int64_t(a.meta.pos[m]) + 1) / 4;
  if (jb >= n) return;
  const int item = a.meta.row_item[m];
  const DevView& v = a.view;
  const int bytes = int(v.index.bytes);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int64_t i = threadIdx.x; i < IH * ID; i += blockDim.x) qs[i] = a.q[m * IH * ID + i];
  for (int t = 0; t < tiles; ++t) {
    const int64_t j0 = jb + int64_t(t) * kScoreKeys;
    if (j0 >= n) break;  // uniform over the block
    __syncthreads();     // the previous tile's src, ks and ds are consumed
    if (threadIdx.x < kScoreKeys) {
      const int64_t j = j0 + threadIdx.x, per = v.block_tokens / 4;
      const uint8_t* blk = j < n ? block_ptr(a.meta, v, item, j / per, err) : nullptr;
      src[threadIdx.x] = blk ? blk + v.idx_off + (j % per) * bytes : nullptr;
    }
    __syncthreads();
    stage_rows(src, kScoreKeys, bytes, raw);
    __syncthreads();
    for (int e = warp; e < kScoreKeys; e += kScoreThreads / 32)
      for (int d = lane; d < int(ID); d += 32) ks[e * ld + d] = src[e] ? codec_decode(v.index, raw + e * bytes, d) : 0.f;
    __syncthreads();
    const float* k = ks + lane * ld;
    for (int64_t h0 = warp * 4; h0 < IH; h0 += (kScoreThreads / 32) * 4) {
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      const float* q0 = qs + h0 * ID;
      for (int64_t i = 0; i < ID; ++i) {
        const float kv = k[i];
#pragma unroll
        for (int u = 0; u < 4; ++u)
          if (h0 + u < IH) d[u] += q0[u * ID + i] * kv;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (h0 + u < IH) ds[lane * ldd + h0 + u] = a.bf16 ? rbf16(d[u]) : d[u];
    }
    __syncthreads();
    const int64_t j = j0 + threadIdx.x;
    if (threadIdx.x < kScoreKeys && j < n && j < a.max_entries) {  // (n > max_entries: topk_k reports it)
      const float* w = a.w + m * IH;
      float acc = 0.f;
      for (int64_t h = 0; h < IH; ++h) acc += w[h] * fmaxf(ds[threadIdx.x * ldd + h], 0.f);
      a.scratch[m * a.max_entries + j] = a.bf16 ? rbf16(acc) : acc;
    }
  }
}

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f + 0.f);  // -0 -> +0: equal scores must get equal keys
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kTopkThreads = 1024, kTopkMax = 2048;

__global__ void __launch_bounds__(kTopkThreads) topk_k(DevIndexTopk a, int* err) {
  using Scan = cub::BlockScan<int, kTopkThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int hist[256];
  __shared__ uint32_t s_prefix, s_mask;
  __shared__ int s_rem, s_count, s_eq_base;
  __shared__ unsigned long long sel[kTopkMax];
  const int64_t m = blockIdx.x;
  int64_t n = (int64_t(a.meta.pos[m]) + 1) / 4;
  if (n > a.max_entries) {
    if (threadIdx.x == 0) report(err, kErrBlockIndex, m, n, a.max_entries);
    n = a.max_entries;
  }
  const float* sc = a.scratch + m * a.max_entries;
  const int kk = int(n < a.k ? n : a.k);
  int32_t* out = a.out + m * a.k;
  for (int64_t c = threadIdx.x; c < a.k; c += blockDim.x) out[c] = -1;
  if (kk == 0) return;
  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_rem = kk;
    s_count = 0;
    s_eq_base = 0;
  }
  __syncthreads();
  // Radix select: after the 4 passes s_prefix is the k-th largest key, s_rem how many of its copies to take.
  if (kk < n) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      const uint32_t prefix = s_prefix, mask = s_mask;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t key = order_key(sc[i]);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int cum = 0, b = 255;
        for (; b > 0; --b) {
          if (cum + hist[b] >= s_rem) break;
          cum += hist[b];
        }
        s_rem -= cum;
        s_prefix = prefix | (uint32_t(b) << shift);
        s_mask = mask | (255u << shift);
      }
      __syncthreads();
    }
  }
  const bool all = kk >= n;
  const uint32_t T = s_prefix;
  const int need_eq = s_rem;
  // Collect: every key above T, and the first need_eq keys equal to T in index order.
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const uint32_t key = i < n ? order_key(sc[i]) : 0u;
    const bool gt = i < n && (all || key > T);
    const int eq = (i < n && !all && key == T) ? 1 : 0;
    int rank, total;
    Scan(scan_tmp).ExclusiveSum(eq, rank, total);
    const int eb = s_eq_base;
    if (gt || (eq && eb + rank < need_eq)) {
      const int slot = atomicAdd(&s_count, 1);
      if (slot < kTopkMax) sel[slot] = (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - uint32_t(i));
    }
    __syncthreads();
    if (threadIdx.x == 0) s_eq_base = eb + total;
    __syncthreads();
  }
  // Bitonic sort (descending) of the winners, padded with zeros (below every real key).
  int P = 1;
  while (P < kk) P <<= 1;
  for (int i = kk + threadIdx.x; i < P; i += blockDim.x) sel[i] = 0ull;
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < P; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const unsigned long long x = sel[i], y = sel[j];
          if (desc ? (x < y) : (x > y)) {
            sel[i] = y;
            sel[j] = x;
          }
        }
      }
      __syncthreads();
    }
  for (int c = threadIdx.x; c < kk; c += blockDim.x) out[c] = int32_t(0xffffffffu - uint32_t(sel[c] & 0xffffffffu));
}

}  // namespace

void index_topk(const Launch& L, const DevIndexTopk& a) {
  if (!a.meta.M) return;
  DSV4_CUDA_REQUIRE(a.k <= kTopkMax, "index_topk on CUDA: k > 2048");
  DSV4_CUDA_REQUIRE(a.meta.M < 65536, "index_topk on CUDA: more than 65535 rows in one call");
  const size_t sm = size_t(a.heads * a.dim + kScoreKeys * (a.dim + 1) + kScoreKeys * (a.heads + 1)) * 4 +
                    size_t(kScoreKeys) * size_t(a.view.index.bytes);
  static unsigned long long attr = 0;
  static int smem_max = 0;
  if (first_on_device(attr)) {
    smem_max = allow_max_dynamic_smem(reinterpret_cast<const void*>(index_score_k));
  }
  DSV4_CUDA_REQUIRE(sm <= size_t(smem_max), "index_topk on CUDA: heads * dim too large for shared memory");
  if (a.max_entries > 0) {
    // Few rows (decode): a tile per block, so a 1K context's 256 entries take 8 blocks, not 2 (each block's
    // dots are a serial chain of 64 heads x dim FMAs per lane: 57 us with 4 tiles per block).
    const int tiles = a.meta.M >= 16 ? kScoreTiles : 1;
    dim3 grid(unsigned(cdiv(a.max_entries, int64_t(tiles) * kScoreKeys)), unsigned(a.meta.M));
    index_score_k<<<grid, kScoreThreads, sm, L.stream>>>(a, tiles, L.err);
    DSV4_CUDA_LAUNCHED();
  }
  topk_k<<<unsigned(a.meta.M), kTopkThreads, 0, L.stream>>>(a, L.err);
  DSV4_CUDA_LAUNCHED();
}

}  // namespace dsv4::cuda
