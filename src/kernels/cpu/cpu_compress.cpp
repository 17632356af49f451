// CPU backend: the compressors of a whole batch (spec §2.6). A token's record [u | g + ape] is the old
// engine's compressor state slot; the pool is its per-channel softmax over the slots in the same order
// (coff 2: the previous window's A halves, then the current window's B halves).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/cpu_internal.h"

namespace dsv4 {
namespace cpu {

void CpuBackend::compress(const CompressArgs& a) {
  auto s = op();
  DSV4_CHECK(a.meta && a.entries, "compress: no batch meta or entry list");
  const BatchMeta& meta = *a.meta;
  const EntryList& el = *a.entries;
  const KvLayerView& v = a.view;
  const int64_t r = a.ratio, coff = a.coff, d = a.d, w = coff * d, ntok = coff * r;
  DSV4_CHECK((r == 4 && coff == 2) || (r == 128 && coff == 1), "compress: ratio {} with coff {}", r, coff);
  DSV4_CHECK(coff == KvArenaShape::coff(int(r)), "compress: coff {} for ratio {}", coff, r);
  const int64_t rec = KvArenaShape::ring_token_floats(int(r), int(d));  // 2 * w floats
  const int64_t ring_off = a.indexer ? v.layer.iring_off : v.layer.cring_off;
  DSV4_CHECK(ring_off >= 0, "compress: layer has no {} token ring", a.indexer ? "indexer" : "compressor");
  check_dtype(a.u, DType::F32, "compress u");
  check_dtype(a.g, DType::F32, "compress g");
  check_numel(a.u, meta.M * w, "compress u");
  check_numel(a.g, meta.M * w, "compress g");
  check_numel(a.ape, r * w, "compress ape");
  check_numel(a.out, el.n * d, "compress out");
  MetaView mv{meta};
  ArenaAddr ar{v};
  const float *u = ptr<float>(a.u), *g = ptr<float>(a.g), *ape = ptr<float>(a.ape);
  auto ring_rec = [&](int64_t slot, int64_t t) {
    return reinterpret_cast<float*>(ar.slot(slot, ring_off + (t % ntok) * rec * 4));
  };
  // Token t of item i: value row and logit row (ape added), this step's rows or the ring's record. For this
  // step's rows the logit is built in `tmp` (w floats).
  auto token = [&](int64_t i, int64_t t, const float** uv, const float** lg, float* tmp) {
    const int64_t start = mv.item(i, BatchMeta::kStart), row0 = mv.item(i, BatchMeta::kRow0);
    if (t >= start) {
      const int64_t row = row0 + t - start;
      const float *gr = g + row * w, *ar_ = ape + (t % r) * w;
      for (int64_t c = 0; c < w; ++c) tmp[c] = gr[c] + ar_[c];
      *uv = u + row * w;
      *lg = tmp;
    } else {
      const float* rr = ring_rec(mv.item(i, BatchMeta::kSlot), t);
      *uv = rr;
      *lg = rr + w;
    }
  };

  // 1. Pool.
  if (el.n) {
    const int32_t *eitem = ptr<int32_t>(el.item), *eidx = ptr<int32_t>(el.index);
    // Checks before the parallel loop: an exception must not leave an OpenMP region.
    for (int64_t x = 0; x < el.n; ++x) {
      DSV4_CHECK(eitem[x] >= 0 && eitem[x] < meta.n_items, "compress: entry {} of item {}", x, eitem[x]);
      const int64_t i = eitem[x], j = eidx[x], start = mv.item(i, BatchMeta::kStart), len = mv.item(i, BatchMeta::kLen);
      DSV4_CHECK(j >= 0 && (j + 1) * r - 1 >= start && (j + 1) * r - 1 < start + len,
                 "compress: entry {} of item {} is not completed by this step", j, i);
      const int64_t S = mv.item(i, BatchMeta::kSlot);
      DSV4_CHECK(S >= 0 && S < v.shape.n_slots, "compress: slot {} of {}", S, v.shape.n_slots);
    }
    float* out = ptr<float>(a.out);
    parallel_for(el.n, 1, [&](int64_t b, int64_t e) {
      std::vector<float> tmp(size_t(ntok * w));
      std::vector<const float*> uv(static_cast<size_t>(ntok)), lg(static_cast<size_t>(ntok));
      for (int64_t x = b; x < e; ++x) {
        const int64_t i = eitem[x], j = eidx[x], t0 = (j + 1) * r - ntok;
        int q0 = 0;  // slots of tokens before position 0 are absent (logit -inf, no contribution)
        for (int64_t q = 0; q < ntok; ++q) {
          if (t0 + q < 0) {
            q0 = int(q + 1);
            continue;
          }
          token(i, t0 + q, &uv[size_t(q)], &lg[size_t(q)], tmp.data() + q * w);
        }
        float* o = out + x * d;
        for (int64_t ch = 0; ch < d; ++ch) {
          auto col = [&](int64_t q) { return coff == 2 ? (q < r ? ch : d + ch) : ch; };
          float mx = -INFINITY;
          for (int64_t q = q0; q < ntok; ++q) mx = std::max(mx, lg[size_t(q)][col(q)]);
          float den = 0, acc = 0;
          for (int64_t q = q0; q < ntok; ++q) {
            float ex = std::exp(lg[size_t(q)][col(q)] - mx);
            den += ex;
            acc += ex * uv[size_t(q)][col(q)];
          }
          o[ch] = acc / den;
        }
      }
    });
  }

  // 2. Snapshots (prefix caching): the 4 records a later step needs to resume exactly at the block end.
  const SnapshotList* sn = a.snapshots;
  if (r == 4 && v.shape.with_tail && sn && sn->n) {
    const int64_t soff = a.indexer ? v.layer.istate_off : v.layer.cstate_off, bt = v.shape.block_tokens;
    DSV4_CHECK(soff >= 0, "compress: snapshots without a state region");
    const int32_t *si = ptr<int32_t>(sn->item), *se = ptr<int32_t>(sn->end);
    std::vector<float> tmp(static_cast<size_t>(w));
    for (int64_t x = 0; x < sn->n; ++x) {
      const int64_t i = si[x], B = se[x];
      float* dst = reinterpret_cast<float*>(ar.block(mv.block(i, B / bt - 1), soff));
      for (int64_t t = B - 4; t < B; ++t) {
        const float *uv, *lg;
        token(i, t, &uv, &lg, tmp.data());
        float* rec_dst = dst + (t - (B - 4)) * rec;
        std::memcpy(rec_dst, uv, size_t(w) * 4);
        std::memcpy(rec_dst + w, lg, size_t(w) * 4);
      }
    }
  }

  // 3. Ring update: the last coff * ratio tokens of every item.
  for (int64_t i = 0; i < meta.n_items; ++i) {
    const int64_t start = mv.item(i, BatchMeta::kStart), row0 = mv.item(i, BatchMeta::kRow0),
                  len = mv.item(i, BatchMeta::kLen), S = mv.item(i, BatchMeta::kSlot);
    for (int64_t t = std::max(start, start + len - ntok); t < start + len; ++t) {
      float* dst = ring_rec(S, t);
      const int64_t row = row0 + t - start;
      std::memcpy(dst, u + row * w, size_t(w) * 4);
      const float *gr = g + row * w, *ar_ = ape + (t % r) * w;
      for (int64_t c = 0; c < w; ++c) dst[w + c] = gr[c] + ar_[c];
    }
  }
}

}  // namespace cpu
}  // namespace dsv4
