// CPU backend: the paged KV cache (window ring, compressed entries, prefix-cache tails), attention over it and
// the lightning indexer's scores + top-k. Per-(row, head) numerics are the old engine's: keys in the order
// window then compressed, one softmax with the sink, P.V accumulated in key order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu_internal.h"

namespace dsv4 {
namespace cpu {

namespace {

void check_meta(const BatchMeta& m) {
  check_dtype(m.pos, DType::I32, "meta pos");
  check_numel(m.pos, m.M, "meta pos");
  check_dtype(m.items, DType::I32, "meta items");
  check_numel(m.items, m.n_items * BatchMeta::kItemFields, "meta items");
  check_dtype(m.block_table, DType::I32, "meta block_table");
  check_numel(m.block_table, m.n_items * m.max_blocks, "meta block_table");
}

// Decodes (or, for f32, points at) stored vectors: the old engine's `gather`, one vector at a time, into
// `slots` vectors reserved up front (so returned pointers stay valid).
struct Decoded {
  const KvCodec& c;
  std::vector<float> buf;
  Decoded(const KvCodec& codec, int64_t slots) : c(codec) {
    if (c.dtype != KvDtype::F32) buf.resize(size_t(slots * c.dim));
  }
  const float* get(const uint8_t* src, size_t slot) {
    if (c.dtype == KvDtype::F32) return reinterpret_cast<const float*>(src);
    float* d = buf.data() + slot * size_t(c.dim);
    c.decode(src, d);
    return d;
  }
};

}  // namespace

void CpuBackend::window_store(const Tensor& kv, const BatchMeta& meta, const SnapshotList& snaps,
                              const KvLayerView& view) {
  auto s = op();
  check_meta(meta);
  const KvCodec& c = view.shape.main;
  const int64_t win = view.shape.window, bt = view.shape.block_tokens, eb = c.bytes();
  check_dtype(kv, DType::F32, "window_store kv");
  check_numel(kv, meta.M * c.dim, "window_store kv");
  DSV4_CHECK(view.layer.ring_off >= 0 && win > 0, "window_store: layer has no window ring");
  MetaView mv{meta};
  ArenaAddr ar{view};
  const float* k = ptr<float>(kv);
  // Snapshots first: they read ring entries that the ring update below overwrites.
  if (snaps.n) {
    DSV4_CHECK(view.layer.tail_off >= 0, "window_store: snapshots without a tail region");
    const int32_t *si = ptr<int32_t>(snaps.item), *se = ptr<int32_t>(snaps.end);
    for (int64_t x = 0; x < snaps.n; ++x) {
      const int64_t i = si[x], B = se[x];
      const int64_t start = mv.item(i, BatchMeta::kStart), row0 = mv.item(i, BatchMeta::kRow0),
                    len = mv.item(i, BatchMeta::kLen), S = mv.item(i, BatchMeta::kSlot);
      DSV4_CHECK(B % bt == 0 && start < B && B <= start + len, "window_store: snapshot at {} outside [{}, {}]", B,
                 start, start + len);
      uint8_t* tail = ar.block(mv.block(i, B / bt - 1), view.layer.tail_off);
      for (int64_t t = std::max<int64_t>(0, B - win); t < B; ++t) {
        uint8_t* dst = tail + (t - (B - win)) * eb;
        if (t >= start)
          c.encode(k + (row0 + t - start) * c.dim, dst);
        else
          std::memcpy(dst, ar.slot(S, view.layer.ring_off + (t % win) * eb), size_t(eb));
      }
    }
  }
  for (int64_t i = 0; i < meta.n_items; ++i) {
    const int64_t start = mv.item(i, BatchMeta::kStart), row0 = mv.item(i, BatchMeta::kRow0),
                  len = mv.item(i, BatchMeta::kLen), S = mv.item(i, BatchMeta::kSlot);
    for (int64_t t = std::max(start, start + len - win); t < start + len; ++t)
      c.encode(k + (row0 + t - start) * c.dim, ar.slot(S, view.layer.ring_off + (t % win) * eb));
  }
}

void CpuBackend::store_entries(const Tensor& src, const EntryList& entries, const BatchMeta& meta,
                               const KvLayerView& view, bool indexer) {
  auto s = op();
  check_meta(meta);
  const KvCodec& c = indexer ? view.shape.index : view.shape.main;
  const int64_t off = indexer ? view.layer.idx_off : view.layer.comp_off;
  DSV4_CHECK(off >= 0 && view.layer.ratio > 0, "store_entries: layer has no {} entries", indexer ? "indexer" : "compressed");
  const int64_t per = view.shape.block_tokens / view.layer.ratio;
  check_dtype(src, DType::F32, "store_entries src");
  DSV4_CHECK(src.numel() >= entries.n * c.dim, "store_entries: {} values for {} entries of {}", src.numel(), entries.n,
             c.dim);
  if (entries.n == 0) return;
  MetaView mv{meta};
  ArenaAddr ar{view};
  const int32_t *item = ptr<int32_t>(entries.item), *index = ptr<int32_t>(entries.index);
  // Addresses (and their checks) first: an exception must not leave an OpenMP region.
  std::vector<uint8_t*> dst(static_cast<size_t>(entries.n));
  for (int64_t x = 0; x < entries.n; ++x) {
    DSV4_CHECK(item[x] >= 0 && item[x] < meta.n_items && index[x] >= 0, "store_entries: entry {} of item {}",
               index[x], item[x]);
    dst[size_t(x)] = ar.block(mv.block(item[x], index[x] / per), off + (index[x] % per) * c.bytes());
  }
  parallel_for(entries.n, 16, [&](int64_t b, int64_t e) {
    for (int64_t x = b; x < e; ++x) c.encode(ptr<float>(src) + x * c.dim, dst[size_t(x)]);
  });
}

void CpuBackend::arena_copy(const Tensor& arena, const Tensor& copies, int64_t n) {
  auto s = op();
  check_dtype(copies, DType::I64, "arena_copy copies");
  DSV4_CHECK(copies.numel() >= n * 3, "arena_copy: {} copies in a table of {} values", n, copies.numel());
  const int64_t* c = ptr<int64_t>(copies);
  uint8_t* base = ptr<uint8_t>(arena);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t src = c[3 * i], dst = c[3 * i + 1], bytes = c[3 * i + 2];
    DSV4_CHECK(src >= 0 && dst >= 0 && bytes >= 0 && src + bytes <= arena.nbytes() && dst + bytes <= arena.nbytes(),
               "arena_copy: [{}, +{}) -> [{}, +{}) outside {} bytes", src, bytes, dst, bytes, arena.nbytes());
    std::memmove(base + dst, base + src, size_t(bytes));
  }
}

void CpuBackend::attention(const AttentionArgs& a) {
  auto s = op();
  DSV4_CHECK(a.meta, "attention: no batch meta");
  const BatchMeta& meta = *a.meta;
  check_meta(meta);
  const KvLayerView& v = a.view;
  const KvCodec& c = v.shape.main;
  const int64_t M = meta.M, H = a.H, hd = c.dim, win = v.shape.window, ratio = v.layer.ratio;
  check_dtype(a.q, DType::F32, "attention q");
  check_numel(a.q, M * H * hd, "attention q");
  check_numel(a.kv, M * hd, "attention kv");
  check_numel(a.out, M * H * hd, "attention out");
  check_numel(a.sink, H, "attention sink");
  DSV4_CHECK(ratio == 0 || ratio == 4 || ratio == 128, "attention: ratio {}", ratio);
  DSV4_CHECK(ratio == 0 || v.layer.comp_off >= 0, "attention: ratio {} without compressed entries", ratio);
  DSV4_CHECK(!a.block_bidirectional || ratio == 0, "attention: a bidirectional block on a ratio {} layer", ratio);
  const bool bidir = a.block_bidirectional;
  int64_t ksel = 0;
  if (ratio == 4) {
    check_dtype(a.selected, DType::I32, "attention selected");
    ksel = a.selected.rows() ? a.selected.row_elems() : 0;
    check_numel(a.selected, M * ksel, "attention selected");
  }
  MetaView mv{meta};
  ArenaAddr ar{v};
  const int64_t eb = c.bytes(), per = ratio ? v.shape.block_tokens / ratio : 1;
  const float *q = ptr<float>(a.q), *kvp = ptr<float>(a.kv), *sink = ptr<float>(a.sink);
  float* out = ptr<float>(a.out);
  const int32_t* pos = mv.pos();
  std::vector<const float*> keys;
  for (int64_t i = 0; i < meta.n_items; ++i) {
    const int64_t start = mv.item(i, BatchMeta::kStart), row0 = mv.item(i, BatchMeta::kRow0),
                  len = mv.item(i, BatchMeta::kLen), S = mv.item(i, BatchMeta::kSlot);
    if (len == 0) continue;
    auto entry = [&](int64_t j) { return ar.block(mv.block(i, j / per), v.layer.comp_off + (j % per) * eb); };
    // The item's ring entries (positions before this step) and, ratio 128, its visible compressed entries,
    // decoded once for all its rows.
    const int64_t n_comp = ratio == 128 ? (start + len) / 128 : 0;
    Decoded ring(c, win), comp(c, n_comp), sel(c, ksel);
    std::vector<const float*> ring_rows(static_cast<size_t>(win)), comp_rows;
    const int64_t ring_first = std::max<int64_t>(0, start - win + (bidir ? 0 : 1));
    for (int64_t t = ring_first; t < start; ++t)
      ring_rows[size_t(t % win)] = ring.get(ar.slot(S, v.layer.ring_off + (t % win) * eb), size_t(t % win));
    if (ratio == 128) {
      comp_rows.resize(size_t(n_comp));
      for (int64_t j = 0; j < n_comp; ++j) comp_rows[size_t(j)] = comp.get(entry(j), size_t(j));
    }
    for (int64_t m = row0; m < row0 + len; ++m) {
      const int64_t p = pos[m];
      keys.clear();
      const int64_t first = bidir ? ring_first : std::max<int64_t>(0, p - win + 1), last = bidir ? start + len - 1 : p;
      for (int64_t t = first; t <= last; ++t)
        keys.push_back(t >= start ? kvp + (row0 + t - start) * hd : ring_rows[size_t(t % win)]);
      if (ratio == 128) {
        for (int64_t j = 0; j < (p + 1) / 128; ++j) keys.push_back(comp_rows[size_t(j)]);
      } else if (ratio == 4) {
        const int32_t* sr = ptr<int32_t>(a.selected) + m * ksel;
        size_t n = 0;
        for (int64_t x = 0; x < ksel; ++x)
          if (sr[x] >= 0) {
            DSV4_CHECK(sr[x] < (p + 1) / 4, "attention: row {} at {} selects entry {}", m, p, sr[x]);
            keys.push_back(sel.get(entry(sr[x]), n++));
          }
      }
      const size_t n = keys.size();
      parallel_for(H, 1, [&](int64_t hb, int64_t he) {
        std::vector<float> sc(n);
        for (int64_t h = hb; h < he; ++h) {
          const float* qh = q + (m * H + h) * hd;
          float* o = out + (m * H + h) * hd;
          float mx = sink[h];
          for (size_t j = 0; j < n; ++j) {
            sc[j] = dot(qh, keys[j], hd) * a.scale;
            mx = std::max(mx, sc[j]);
          }
          float den = std::exp(sink[h] - mx);
          for (size_t j = 0; j < n; ++j) den += (sc[j] = std::exp(sc[j] - mx));
          const float inv = 1.f / den;
          std::fill(o, o + hd, 0.f);
          for (size_t j = 0; j < n; ++j) {
            float pj = sc[j] * inv;
            if (a.probs_bf16) pj = dsv4::round_bf16(pj);
            const float* k = keys[j];
#pragma omp simd
            for (int64_t d = 0; d < hd; ++d) o[d] += pj * k[d];
          }
        }
      });
    }
  }
}

int64_t CpuBackend::index_scratch_cols(int64_t max_entries, int64_t k) const {
  // Rows that see at most one tile score every entry at once (the plain path); longer ones use tiles.
  return max_entries <= kIndexTile ? std::max<int64_t>(max_entries, 1) : kIndexTile + 2 * k;
}

uint64_t CpuBackend::host_scratch_bytes(const KvArenaShape& shape, int64_t max_context, int64_t max_rows,
                                        int64_t topk) const {
  // attention: an item's decoded ring, ratio-128 entries and selected entries (one item at a time), and per
  // thread a score per key; index_topk: one decoded tile, its addresses, the tile's top-k and merge buffers.
  const int64_t keys = shape.window + max_context / 128 + topk, f = shape.main.dtype == KvDtype::F32 ? 0 : 1;
  const int64_t tile = std::min<int64_t>(kIndexTile, max_context / 4 + 1);
  const uint64_t attn = uint64_t(keys) * (uint64_t(f * shape.main.dim) * 4 + 8 + uint64_t(num_threads()) * 4);
  const uint64_t index = uint64_t(tile) * (uint64_t(f * shape.index.dim) * 4 + 16 + 4) + uint64_t(topk) * 8 +
                         uint64_t(max_rows) * 8;
  return std::max(attn, index);  // the ops run one after the other
}

// Scores of row m for entries [j0, j1) into sc (keys[j - j0] is entry j's decoded key).
static void index_scores(const IndexTopkArgs& a, int64_t m, const std::vector<const float*>& keys, int64_t j0,
                         int64_t j1, float* sc) {
  const int64_t IH = a.heads, ID = a.dim;
  const float *qm = ptr<float>(a.q) + m * IH * ID, *wm = ptr<float>(a.w) + m * IH;
  parallel_for(j1 - j0, 64, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const float* k = keys[size_t(j)];
      float acc = 0;
      for (int64_t h = 0; h < IH; ++h) {
        float d = dot(qm + h * ID, k, ID);
        if (a.bf16) d = dsv4::round_bf16(d);
        acc += wm[h] * std::max(d, 0.f);
      }
      sc[j] = a.bf16 ? dsv4::round_bf16(acc) : acc;
    }
  });
}

void CpuBackend::index_topk(const IndexTopkArgs& a) {
  auto s = op();
  DSV4_CHECK(a.meta, "index_topk: no batch meta");
  const BatchMeta& meta = *a.meta;
  check_meta(meta);
  const KvLayerView& v = a.view;
  const KvCodec& c = v.shape.index;
  const int64_t M = meta.M, IH = a.heads, ID = a.dim, K = a.k;
  DSV4_CHECK(c.dim == ID && v.layer.idx_off >= 0, "index_topk: keys of {} dims for dim {}", c.dim, ID);
  DSV4_CHECK(K > 0, "index_topk: top {}", K);
  check_numel(a.q, M * IH * ID, "index_topk q");
  check_numel(a.w, M * IH, "index_topk w");
  check_dtype(a.out, DType::I32, "index_topk out");
  check_numel(a.out, M * K, "index_topk out");
  check_dtype(a.scratch, DType::F32, "index_topk scratch");
  const int64_t cols = M ? a.scratch.numel() / M : 0;
  MetaView mv{meta};
  ArenaAddr ar{v};
  const int64_t per = v.shape.block_tokens / 4, eb = c.bytes();
  int32_t* out = ptr<int32_t>(a.out);
  std::fill(out, out + M * K, -1);
  for (int64_t i = 0; i < meta.n_items; ++i) {
    const int64_t start = mv.item(i, BatchMeta::kStart), row0 = mv.item(i, BatchMeta::kRow0),
                  len = mv.item(i, BatchMeta::kLen);
    const int64_t n_all = (start + len) / 4;  // this step's keys are stored already
    if (len == 0 || n_all == 0) continue;
    // Plain path: every eligible score of a row in its scratch row, then one top-k. Tiled path (the context is
    // longer than the scratch): a tile of keys decoded at a time, each row's tile top-k merged into its running
    // top-k by the same order (score desc, index asc), so the result is the plain path's, bit for bit.
    const bool plain = n_all <= cols;
    const int64_t tile = plain ? n_all : cols - 2 * K;
    DSV4_CHECK(tile > 0, "index_topk: {} entries, scratch rows of {} (top {})", n_all, cols, K);
    Decoded dk(c, tile);
    std::vector<const uint8_t*> src(static_cast<size_t>(tile));
    std::vector<const float*> keys(static_cast<size_t>(tile));
    std::vector<int32_t> tk(static_cast<size_t>(std::min(K, tile))), merged(static_cast<size_t>(K));
    std::vector<float> ms(static_cast<size_t>(K));
    std::vector<int64_t> n_cand(static_cast<size_t>(len), 0);
    for (int64_t j0 = 0; j0 < n_all; j0 += tile) {
      const int64_t j1 = std::min(n_all, j0 + tile);
      for (int64_t j = j0; j < j1; ++j)
        src[size_t(j - j0)] = ar.block(mv.block(i, j / per), v.layer.idx_off + (j % per) * eb);
      parallel_for(j1 - j0, 64, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) keys[size_t(j)] = dk.get(src[size_t(j)], size_t(j));
      });
      for (int64_t m = row0; m < row0 + len; ++m) {
        const int64_t n_elig = std::min<int64_t>((mv.pos()[m] + 1) / 4, n_all);
        if (n_elig <= j0) continue;
        float* row = ptr<float>(a.scratch) + m * cols;
        const int64_t e = std::min(j1, n_elig);
        if (plain) {
          index_scores(a, m, keys, 0, e, row);
          topk_lowest_first(row, e, std::min(K, e), out + m * K);
          continue;
        }
        float* cs = row;  // running top-k: scores, then indices (int32 bits)
        int32_t* ci = reinterpret_cast<int32_t*>(row + K);
        float* sc = row + 2 * K;
        index_scores(a, m, keys, j0, e, sc);
        const int64_t kt = std::min(K, e - j0);
        topk_lowest_first(sc, e - j0, kt, tk.data());
        // Merge: earlier candidates have lower indices, so on equal scores they go first.
        int64_t& nc = n_cand[size_t(m - row0)];
        int64_t x = 0, y = 0, n = 0;
        while (n < K && (x < nc || y < kt)) {
          const bool take_old = y == kt || (x < nc && !(sc[tk[size_t(y)]] > cs[x]));
          if (take_old) {
            ms[size_t(n)] = cs[x];
            merged[size_t(n++)] = ci[x++];
          } else {
            ms[size_t(n)] = sc[tk[size_t(y)]];
            merged[size_t(n++)] = int32_t(j0 + tk[size_t(y++)]);
          }
        }
        std::copy_n(ms.data(), n, cs);
        std::copy_n(merged.data(), n, ci);
        nc = n;
        if (j1 >= n_elig) std::copy_n(ci, n, out + m * K);  // the row's last tile
      }
    }
  }
}

}  // namespace cpu
}  // namespace dsv4
