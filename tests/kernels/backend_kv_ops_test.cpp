// Every backend against the scalar reference: the paged KV cache ops, attention, the indexer top-k, the
// compressors, routing and the MoE layer. KV byte formats must match the reference byte for byte.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend_ops_fixture.h"
#include "core/dtype.h"

using namespace dsv4;
using namespace dsv4::test;

namespace {

const KvDtype kDtypes[] = {KvDtype::F32, KvDtype::BF16, KvDtype::FP8};

ref::Item item(int start, int len, int row0, int slot, std::vector<int> blocks) {
  ref::Item it;
  it.start = start;
  it.len = len;
  it.row0 = row0;
  it.slot = slot;
  it.blocks = std::move(blocks);
  return it;
}

// A prefill from 0, a decode step whose window is all in the ring, a chunk half in the ring: window 8.
ref::Batch mixed_batch() {
  ref::Batch b;
  b.items = {item(0, 5, 0, 0, {2, 0}), item(35, 1, 5, 1, {4, 1, 6}), item(20, 7, 6, 2, {3, 7})};
  return b;
}

}  // namespace

TEST_P(BackendOps, WindowStoreWithSnapshots) {
  for (KvDtype dt : kDtypes) {
    Rng r(10);
    ref::Arena a = random_arena(r, 0, 16, 8, main_codec(dt, 64, 16), index_codec(dt, 16), true, 8, 3);
    ref::Batch b;
    // Snapshots at 16 (all from this step's rows) and at 32 (t = 24..29 from the ring, 30..31 from the rows).
    b.items = {item(0, 20, 0, 0, {2, 5}), item(30, 4, 20, 1, {0, 1, 6}), item(5, 1, 24, 2, {3})};
    auto snaps = ref::block_ends(b, 16);
    ASSERT_EQ(snaps.size(), 2u);
    auto kv = r.vec(size_t(b.M() * 64), -2, 2);
    KvLayerView v = upload_arena(a);
    BatchMeta meta = upload_meta(b);
    SnapshotList sl = upload_snaps(snaps);
    be->window_store(up(kv, DType::F32, {b.M(), 64}), meta, sl, v);
    ref::window_store(kv, b, snaps, a);
    EXPECT_TRUE(download_arena(v) == a.bytes) << "window_store arena bytes, " << kv_dtype_name(dt);
  }
}

TEST_P(BackendOps, StoreEntriesAndArenaCopy) {
  for (KvDtype dt : kDtypes) {
    Rng r(11);
    ref::Arena a = random_arena(r, 4, 16, 8, main_codec(dt, 64, 16), index_codec(dt, 32), true, 10, 3);
    ref::Batch b = mixed_batch();
    auto entries = ref::completed_entries(b, 4);
    ASSERT_EQ(entries.size(), 3u);
    KvLayerView v = upload_arena(a);
    BatchMeta meta = upload_meta(b);
    EntryList el = upload_entries(entries);
    for (bool indexer : {false, true}) {
      const int dim = indexer ? 32 : 64;
      auto src = r.vec(entries.size() * size_t(dim), -3, 3);
      be->store_entries(up(src, DType::F32, {int64_t(entries.size()), dim}), el, meta, v, indexer);
      ref::store_entries(src, entries, b, a, indexer);
      EXPECT_TRUE(download_arena(v) == a.bytes)
          << "store_entries arena bytes, " << kv_dtype_name(dt) << (indexer ? " indexer" : " main");
    }
    // Copies: a whole block, part of a slot into another slot, an unaligned small range.
    const int64_t bb = a.shape.block_bytes;
    std::vector<int64_t> copies{bb * 2,
                                bb * 9,
                                bb,
                                a.shape.slot_offset(0) + 16,
                                a.shape.slot_offset(2) + 16,
                                a.shape.slot_bytes - 32,
                                bb * 3 + 5,
                                bb * 4 + 3,
                                77};
    be->arena_copy(v.arena, up(copies, DType::I64, {3, 3}), 3);
    ref::arena_copy(a, copies);
    EXPECT_TRUE(download_arena(v) == a.bytes) << "arena_copy, " << kv_dtype_name(dt);
  }
}

TEST_P(BackendOps, AttentionEveryRatioAndKvDtype) {
  const int64_t H = 4, hd = 64;
  for (int ratio : {0, 4, 128})
    for (KvDtype dt : kDtypes)
      for (bool pbf16 : {false, true}) {
        Rng r(uint64_t(12 + ratio));
        const int bt = ratio == 128 ? 128 : 16;
        ref::Arena a = random_arena(r, ratio, bt, 8, main_codec(dt, int(hd), 16), index_codec(dt, 16), false, 8, 3);
        ref::Batch b = mixed_batch();
        if (ratio == 128)  // entries visible at 300 (two), across the first boundary (127 sees entry 0), none
          b.items = {item(300, 3, 0, 0, {0, 1, 2}), item(126, 4, 3, 1, {3, 4}), item(0, 2, 7, 2, {5})};
        const int64_t M = b.M();
        auto q = r.vec(size_t(M * H * hd), -1, 1), kv = r.vec(size_t(M * hd), -1, 1), sink = r.vec(size_t(H), -1, 2);
        // ratio 4: up to 6 selections per row among its eligible entries, with -1 holes anywhere.
        const int64_t K = 6;
        std::vector<int32_t> sel(size_t(M * K), -1);
        auto pos = b.pos();
        for (int64_t m = 0; m < M; ++m) {
          std::vector<int32_t> all((pos[size_t(m)] + 1) / 4);
          std::iota(all.begin(), all.end(), 0);
          for (size_t i = all.size(); i > 1; --i) std::swap(all[i - 1], all[size_t(r.below(int64_t(i)))]);
          for (int64_t c = 0; c < K && c < int64_t(all.size()); ++c)
            if (r.below(4)) sel[size_t(m * K + c)] = all[size_t(c)];
        }
        KvLayerView v = upload_arena(a);
        BatchMeta meta = upload_meta(b);
        AttentionArgs aa;
        aa.q = up(q, DType::F32, {M, H, hd});
        aa.kv = up(kv, DType::F32, {M, hd});
        aa.sink = up(sink, DType::F32, {H});
        aa.selected = up(sel, DType::I32, {M, K});
        aa.meta = &meta;
        aa.view = v;
        aa.H = H;
        aa.scale = 0.125f;
        aa.probs_bf16 = pbf16;
        aa.out = zeros(DType::F32, {M, H, hd});
        be->attention(aa);
        auto ref = ref::attention(q, kv, sink, sel, K, b, a, H, 0.125f, pbf16);
        expect_close(down<float>(aa.out), ref, tol("attention"),
                     "attention ratio " + std::to_string(ratio) + " " + kv_dtype_name(dt) +
                         (pbf16 ? " probs_bf16" : ""),
                     pbf16 ? 0.01 : 0, 1e-2);
      }
}

// Steps with rows enough for the CUDA backend's tensor-core attention (one block per row and 32 heads, at least
// one block per SM): bf16-exact queries and keys (as reference numerics makes them), bf16 probabilities, two head
// groups (the second partial), head_dim 128 and 512; the long item's keys mostly in this step, the short one's
// partly in the ring.
TEST_P(BackendOps, AttentionLongStepBf16Operands) {
  const int64_t H = 40;
  for (int64_t hd : {128, 512})
    for (int ratio : {0, 4, 128})
      for (KvDtype dt : {KvDtype::BF16, KvDtype::FP8}) {
        Rng r(uint64_t(40 + ratio + hd));
        const int bt = ratio == 128 ? 128 : 16;
        ref::Arena a = random_arena(r, ratio, bt, 8, main_codec(dt, int(hd), hd == 512 ? 64 : 16), index_codec(dt, 16),
                                    false, 16, 3);
        ref::Batch b;
        if (ratio == 128)
          b.items = {item(200, 140, 0, 0, {0, 1, 2}), item(0, 20, 140, 1, {3})};
        else
          b.items = {item(0, 150, 0, 0, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}), item(40, 10, 150, 1, {10, 11, 12, 13})};
        const int64_t M = b.M();
        auto bf = [](std::vector<float> v) {
          for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
          return v;
        };
        auto q = bf(r.vec(size_t(M * H * hd), -1, 1)), kv = bf(r.vec(size_t(M * hd), -1, 1));
        auto sink = r.vec(size_t(H), -1, 2);
        const int64_t K = 6;
        std::vector<int32_t> sel(size_t(M * K), -1);
        auto pos = b.pos();
        for (int64_t m = 0; m < M; ++m)
          for (int64_t c = 0; c < K && c < (pos[size_t(m)] + 1) / 4; ++c)
            sel[size_t(m * K + c)] = int32_t(r.below((pos[size_t(m)] + 1) / 4));
        KvLayerView v = upload_arena(a);
        BatchMeta meta = upload_meta(b);
        AttentionArgs aa;
        aa.q = up(q, DType::F32, {M, H, hd});
        aa.kv = up(kv, DType::F32, {M, hd});
        aa.sink = up(sink, DType::F32, {H});
        aa.selected = up(sel, DType::I32, {M, K});
        aa.meta = &meta;
        aa.view = v;
        aa.H = H;
        aa.scale = float(1.0 / std::sqrt(double(hd)));
        aa.probs_bf16 = true;
        aa.bf16_operands = true;
        aa.out = zeros(DType::F32, {M, H, hd});
        be->attention(aa);
        auto ref = ref::attention(q, kv, sink, sel, K, b, a, H, aa.scale, true);
        expect_close(down<float>(aa.out), ref, tol("attention"),
                     "long-step attention hd " + std::to_string(hd) + " ratio " + std::to_string(ratio) + " " +
                         kv_dtype_name(dt),
                     0.01, 1e-2);
      }
}

// The DSpark block's attention (ratio 0): every row of an item sees the ring's window before the item and all of
// the item's rows. Window 8: a block after a full ring, a block at position 3 (a short ring), a block at 0.
TEST_P(BackendOps, AttentionBidirectionalBlock) {
  const int64_t H = 4, hd = 64;
  for (KvDtype dt : kDtypes) {
    Rng r(21);
    ref::Arena a = random_arena(r, 0, 16, 8, main_codec(dt, int(hd), 16), index_codec(dt, 16), false, 8, 3);
    ref::Batch b;
    b.items = {item(35, 5, 0, 0, {0}), item(3, 5, 5, 1, {1}), item(0, 5, 10, 2, {2})};
    const int64_t M = b.M();
    auto q = r.vec(size_t(M * H * hd), -1, 1), kv = r.vec(size_t(M * hd), -1, 1), sink = r.vec(size_t(H), -1, 2);
    KvLayerView v = upload_arena(a);
    BatchMeta meta = upload_meta(b);
    AttentionArgs aa;
    aa.q = up(q, DType::F32, {M, H, hd});
    aa.kv = up(kv, DType::F32, {M, hd});
    aa.sink = up(sink, DType::F32, {H});
    aa.meta = &meta;
    aa.view = v;
    aa.H = H;
    aa.scale = 0.125f;
    aa.block_bidirectional = true;
    aa.out = zeros(DType::F32, {M, H, hd});
    be->attention(aa);
    const auto want = ref::attention(q, kv, sink, {}, 0, b, a, H, 0.125f, false, true);
    expect_close(down<float>(aa.out), want, tol("attention"), std::string("bidirectional ") + kv_dtype_name(dt), 0,
                 1e-2);
    // Not the causal result: the first row of a block sees the rows after it.
    const auto causal = ref::attention(q, kv, sink, {}, 0, b, a, H, 0.125f, false, false);
    EXPECT_NE(want, causal);
  }
}

TEST_P(BackendOps, IndexTopkTiesAndFewEligible) {
  const int64_t IH = 3, ID = 16, K = 5;
  for (KvDtype dt : kDtypes)
    for (bool bf16 : {false, true})
      for (bool all_equal : {false, true}) {
        Rng r(13);
        // Small-integer queries, weights and keys: every dot product is exact in any summation order, so the
        // scores (and their ties) are the same on every backend.
        ref::Arena a = random_arena(r, 4, 16, 8, main_codec(dt, 32, 16), index_codec(dt, int(ID)), false, 12, 3, true);
        if (all_equal) {  // every key the same: every score ties, top-k must be 0, 1, 2, ...
          const int64_t eb = a.shape.index.bytes();
          for (int blk = 0; blk < 12; ++blk)
            for (int j = 0; j < 4; ++j)
              std::copy_n(a.block(0, a.layer.idx_off), eb, a.block(blk, a.layer.idx_off + j * eb));
        }
        ref::Batch b;
        b.items = {item(0, 9, 0, 0, {0, 1}), item(40, 3, 9, 1, {2, 3, 4}), item(100, 1, 12, 2, {5, 6, 7, 8, 9, 10, 11})};
        const int64_t M = b.M();
        std::vector<float> q(size_t(M * IH * ID)), w(size_t(M * IH));
        for (auto& x : q) x = float(r.below(5) - 2);
        for (auto& x : w) x = float(r.below(4));
        if (all_equal)
          for (auto& x : w) x = 1.f;
        KvLayerView v = upload_arena(a);
        BatchMeta meta = upload_meta(b);
        IndexTopkArgs ia;
        ia.q = up(q, DType::F32, {M, IH, ID});
        ia.w = up(w, DType::F32, {M, IH});
        ia.meta = &meta;
        ia.view = v;
        ia.heads = IH;
        ia.dim = ID;
        ia.k = K;
        ia.bf16 = bf16;
        ia.scratch = zeros(DType::F32, {M, 32});
        ia.out = zeros(DType::I32, {M, K});
        be->index_topk(ia);
        auto got = down<int32_t>(ia.out), ref = ref::index_topk(q, w, b, a, IH, ID, K, bf16);
        EXPECT_EQ(got, ref) << "index_topk " << kv_dtype_name(dt) << (bf16 ? " bf16" : "") << (all_equal ? " ties" : "");
        if (all_equal) {
          // Row 12 (position 100, 25 entries): scores are all equal or all zero -> lowest indices first.
          EXPECT_EQ(std::vector<int32_t>(got.begin() + 12 * K, got.begin() + 13 * K), (std::vector<int32_t>{0, 1, 2, 3, 4}));
          // Row 3 (position 3): one eligible entry, the rest -1.
          EXPECT_EQ(std::vector<int32_t>(got.begin() + 3 * K, got.begin() + 4 * K),
                    (std::vector<int32_t>{0, -1, -1, -1, -1}));
        }
      }
}

// The indexer's scratch is bounded by the step's rows on a backend that scores in tiles with a running top-k:
// every tile width gives the plain path's selection (all scores, one top-k), bit for bit, ties included.
TEST_P(BackendOps, IndexTopkTilesEqualThePlainPath) {
  const int64_t IH = 4, ID = 16, K = 5;
  const bool tiles = be->index_scratch_cols(1 << 20, K) < (1 << 20);
  if (GetParam() == "cpu") {
    EXPECT_TRUE(tiles) << "the CPU backend scores in tiles";
  }
  // Guard mode protects every buffer per op (slow): one dtype there, with the tiles that cross the most borders.
  const bool guard = GetParam() == "cpu_guard";
  const std::vector<int64_t> widths = guard ? std::vector<int64_t>{1, 7} : std::vector<int64_t>{1, 3, 7, 16, 60};
  for (KvDtype dt : kDtypes)
    for (int mode = 0; mode < 3; ++mode) {  // 0: random floats, 1: small integers (many ties), 2: all keys equal
      if (guard && dt != KvDtype::FP8) continue;
      Rng r(29 + mode);
      ref::Arena a = random_arena(r, 4, 16, 8, main_codec(dt, 32, 16), index_codec(dt, int(ID)), false, 48, 4, mode > 0);
      if (mode == 2) {
        const int64_t eb = a.shape.index.bytes();
        for (int blk = 0; blk < 48; ++blk)
          for (int j = 0; j < 4; ++j) std::copy_n(a.block(0, a.layer.idx_off), eb, a.block(blk, a.layer.idx_off + j * eb));
      }
      std::vector<int> b3, b19, b44;
      for (int x = 3; x < 18; ++x) b3.push_back(x);
      for (int x = 0; x < 19; ++x) b19.push_back(x);
      for (int x = 0; x < 44; ++x) b44.push_back(x);
      // A prefill from 0, a chunk at 200 (up to 60 entries), decodes at 300 (75 entries) and at 700 (175 entries:
      // CUDA scores a row's entries in blocks of 128, so this row takes two)
      ref::Batch b;
      b.items = {item(0, 48, 0, 0, {0, 1, 2}), item(200, 40, 48, 1, b3), item(300, 1, 88, 2, b19),
                 item(700, 1, 89, 3, b44)};
      const int64_t M = b.M(), n_max = 701 / 4;
      std::vector<float> q(size_t(M * IH * ID)), w(size_t(M * IH));
      for (auto& x : q) x = mode ? float(r.below(5) - 2) : r.uni();
      for (auto& x : w) x = mode ? float(r.below(4)) : r.uni(0.f, 1.f);
      KvLayerView v = upload_arena(a);
      BatchMeta meta = upload_meta(b);
      for (bool bf16 : {false, true}) {
        auto run = [&](int64_t cols) {
          IndexTopkArgs ia;
          ia.q = up(q, DType::F32, {M, IH, ID});
          ia.w = up(w, DType::F32, {M, IH});
          ia.meta = &meta;
          ia.view = v;
          ia.heads = IH;
          ia.dim = ID;
          ia.k = K;
          ia.bf16 = bf16;
          ia.scratch = zeros(DType::F32, {M, cols});
          ia.out = zeros(DType::I32, {M, K});
          be->index_topk(ia);
          return down<int32_t>(ia.out);
        };
        const std::vector<int32_t> plain = run(n_max);
        if (mode > 0) {
          EXPECT_EQ(plain, ref::index_topk(q, w, b, a, IH, ID, K, bf16)) << "mode " << mode;
        }
        if (!tiles) continue;
        for (int64_t tile : widths)
          EXPECT_EQ(run(2 * K + tile), plain) << kv_dtype_name(dt) << " mode " << mode << (bf16 ? " bf16" : "")
                                              << " tile " << tile;
      }
    }
}

TEST_P(BackendOps, CompressRatio4And128WithRingsAndSnapshots) {
  struct Case {
    int ratio, d, bt;
    bool indexer;
  };
  for (Case c : {Case{4, 8, 8, false}, Case{4, 8, 8, true}, Case{128, 4, 128, false}}) {
    Rng r(uint64_t(14 + c.ratio + c.indexer));
    const int coff = c.ratio == 4 ? 2 : 1, w = coff * c.d;
    ref::Arena a =
        random_arena(r, c.ratio, c.bt, 8, main_codec(KvDtype::F32, c.d, 0), index_codec(KvDtype::F32, c.d), true, 8, 3);
    ref::Batch b;
    if (c.ratio == 4)  // entries 0, 1 from position 0; entry 3 needs tokens 8..12 from the ring; a lone token
      b.items = {item(0, 9, 0, 0, {0, 1}), item(13, 6, 9, 1, {2, 3, 4}), item(6, 1, 15, 2, {5})};
    else  // entry 0 from position 0; entry 1 takes tokens 128..199 from the ring
      b.items = {item(0, 130, 0, 0, {0, 1}), item(200, 60, 130, 1, {2, 3})};
    const int64_t M = b.M();
    auto entries = ref::completed_entries(b, c.ratio);
    auto snaps = ref::block_ends(b, c.bt);
    ASSERT_FALSE(entries.empty());
    ASSERT_FALSE(snaps.empty());
    auto u = r.vec(size_t(M * w), -2, 2), g = r.vec(size_t(M * w), -3, 3), ape = r.vec(size_t(c.ratio * w), -1, 1);
    KvLayerView v = upload_arena(a);
    BatchMeta meta = upload_meta(b);
    EntryList el = upload_entries(entries);
    SnapshotList sl = upload_snaps(snaps);
    CompressArgs ca;
    ca.ratio = c.ratio;
    ca.coff = coff;
    ca.d = c.d;
    ca.indexer = c.indexer;
    ca.u = up(u, DType::F32, {M, w});
    ca.g = up(g, DType::F32, {M, w});
    ca.ape = up(ape, DType::F32, {c.ratio, w});
    ca.meta = &meta;
    ca.entries = &el;
    ca.snapshots = &sl;
    ca.view = v;
    ca.out = zeros(DType::F32, {int64_t(entries.size()), c.d});
    be->compress(ca);
    auto ref = ref::compress(c.ratio, coff, c.d, c.indexer, u, g, ape, b, entries, snaps, a);
    const std::string what = "compress ratio " + std::to_string(c.ratio) + (c.indexer ? " indexer" : " main");
    expect_close(down<float>(ca.out), ref, tol("compress"), what);
    EXPECT_TRUE(download_arena(v) == a.bytes) << what << ": rings / snapshots differ";
  }
}

TEST_P(BackendOps, RouteScoreFuncsHashAndBias) {
  Rng r(15);
  const int64_t M = 6, E = 16, V = 10;
  const int k = 4;
  auto logits = r.vec(size_t(M * E), -3, 3);
  for (int j = 0; j < 6; ++j) logits[size_t(j)] = 5.f;  // row 0: exact ties at the top -> lowest ids first
  auto bias = r.vec(size_t(E), -0.2f, 0.2f);
  std::vector<int32_t> tid2eid(size_t(V * k)), tokens(static_cast<size_t>(M));
  for (auto& e : tid2eid) e = int32_t(r.below(E));
  for (auto& t : tokens) t = int32_t(r.below(V));
  Tensor lt = up(logits, DType::F32, {M, E}), bt = up(bias, DType::F32, {E}), ht = up(tid2eid, DType::I32, {V, k}),
         tt = up(tokens, DType::I32, {M});
  for (int sf = 0; sf < 3; ++sf)
    for (int mode = 0; mode < 3; ++mode)  // 0: no bias, 1: bias, 2: hash routing
      for (bool norm : {true, false}) {
        RouteArgs ra;
        ra.logits = lt;
        ra.k = k;
        ra.score_func = sf;
        if (mode == 1) ra.bias = bt;
        if (mode == 2) {
          ra.tid2eid = ht;
          ra.tokens = tt;
        }
        ra.normalize = norm;
        ra.route_scale = 1.5f;
        ra.experts = zeros(DType::I32, {M, k});
        ra.weights = zeros(DType::F32, {M, k});
        be->route(ra);
        std::vector<int32_t> ex;
        std::vector<float> wt;
        ref::route(logits, M, E, k, sf, mode == 1 ? bias.data() : nullptr, mode == 2 ? tid2eid.data() : nullptr,
                   tokens.data(), norm, 1.5f, ex, wt);
        const std::string what = "route sf " + std::to_string(sf) + " mode " + std::to_string(mode) +
                                 (norm ? " normalized" : "");
        EXPECT_EQ(down<int32_t>(ra.experts), ex) << what;
        expect_close(down<float>(ra.weights), wt, tol("route"), what);
      }
}

// Shapes and row counts that reach each CUDA path: M = 1 (one row per expert), M <= 16 (two rows per pass,
// experts with more rows take several passes), M > 16 (eight rows); K above one staged pass in UP (D) and in
// DOWN (I); M > 16 with 128-aligned widths and FP8 activations (tensor cores; several 64-row tiles per expert),
// with FP4 and with FP8 experts; M <= 64 with 128-aligned widths and FP4 experts (the decode tensor-core kernel:
// one and two halves of its 16-row A tile, and at M = 40 experts with more rows than one pass takes).
// wide_scales: in every third FP4 weight row the second 32-column group of each 128-column block gets a scale 2^13
// or more above the others, whose values are zeroed so the sums stay exact (CUDA's prefill GEMM folds every
// 32-column scale into its widened weights: a scale applied to the wrong group shows).
struct MoeShape {
  int64_t M, D, I;
  WeightFormat fmt = WeightFormat::FP4Group32;
  bool wide_scales = false;
};
TEST_P(BackendOps, MoeWithActFp8AndRounding) {
  auto run_case = [&](int64_t M, int64_t D, int64_t I, WeightFormat fmt, bool wide_scales) {
    const int64_t E = 4, K = 2;
    Rng r(16);
    std::vector<ref::Expert> routed(static_cast<size_t>(E));
    for (auto& e : routed)  // FP4 experts as V4's routed experts (FP8 as Flash-Base's)
      e = {random_weight(r, fmt, I, D), random_weight(r, fmt, D, I), random_weight(r, fmt, I, D)};
    if (wide_scales)
      for (auto& e : routed)
        for (ref::Weight* w : {&e.w1, &e.w2, &e.w3})
          for (int64_t row = 0; row < w->out; row += 3)
            for (int64_t c = 0; c < w->scale_cols; ++c) {
              if (c % 4 == 1)
                w->scale8[size_t(row * w->scale_cols + c)] = 138;
              else
                std::fill_n(w->data.begin() + row * (w->in / 2) + c * 16, 16, uint8_t(0));
            }
    ref::Expert shared{random_weight(r, WeightFormat::FP8Block, I, D), random_weight(r, WeightFormat::FP8Block, D, I),
                       random_weight(r, WeightFormat::FP8Block, I, D)};
    std::vector<ExpertWeights> rw;
    for (auto& e : routed) rw.push_back({upload_weight(e.w1), upload_weight(e.w2), upload_weight(e.w3)});
    ExpertWeights sw{upload_weight(shared.w1), upload_weight(shared.w2), upload_weight(shared.w3)};
    // Dyadic inputs (k / 8): the expert GEMMs are exact in any summation order, so bf16 / FP8 rounding of their
    // outputs cannot flip between backends.
    std::vector<float> x(size_t(M * D)), wts(size_t(M * K));
    for (auto& v : x) v = float(r.below(33) - 16) / 8.f;
    for (auto& v : wts) v = float(1 + r.below(15)) / 16.f;
    std::vector<int32_t> ex(size_t(M * K));
    for (int64_t m = 0; m < M; ++m) {
      ex[size_t(m * K)] = int32_t(r.below(E));
      ex[size_t(m * K + 1)] = int32_t((ex[size_t(m * K)] + 1 + r.below(E - 1)) % E);
    }
    Tensor xt = up(x, DType::F32, {M, D}), et = up(ex, DType::I32, {M, K}), wt = up(wts, DType::F32, {M, K});
    // The shared expert's FP8 bytes span 2^-9..448 and the hidden is not dyadic after SiLU: the down GEMM's
    // partial sums run ~100x its outputs, so fp32 summation order alone moves a few outputs by ~1e-5 of the rms
    // (seen on aarch64: 2 of 76800 at 1.03e-5). Plain numerics allow those (<= 0.1%, within 1e-4); reference
    // numerics allow bf16/FP8 rounding flips (<= 1%, within 1e-2).
    for (bool refnum : {false, true})
      for (float limit : {0.f, 1.f}) {
        MoeArgs ma;
        ma.x = xt;
        ma.experts = et;
        ma.weights = wt;
        ma.routed = &rw;
        ma.shared = &sw;
        ma.inter = I;
        ma.swiglu_limit = limit;
        ma.lin.act_fp8 = refnum;
        ma.lin.out_bf16 = refnum;
        ma.round_hidden = refnum;
        ma.round_out = refnum;
        ma.scratch = zeros(DType::U8, {moe_scratch_bytes(M, K, D, I)});
        ma.out = zeros(DType::F32, {M, D});
        be->moe(ma);
        auto ref = ref::moe(x, M, D, ex, wts, K, routed, shared, I, limit, ma.lin, refnum, refnum);
        expect_close(down<float>(ma.out), ref, tol("moe"),
                     std::string("moe M ") + std::to_string(M) + " D " + std::to_string(D) + " I " + std::to_string(I) +
                         (fmt == WeightFormat::FP8Block ? " fp8 experts" : "") + (wide_scales ? " wide scales" : "") +
                         (refnum ? " reference numerics" : "") + " limit " + std::to_string(limit),
                     refnum ? 0.01 : 1e-3, refnum ? 1e-2 : 1e-4);
      }
  };
  for (const MoeShape& shape : {MoeShape{5, 64, 32}, MoeShape{1, 64, 32}, MoeShape{20, 64, 32}, MoeShape{1, 4224, 64},
                                MoeShape{1, 64, 2176},
                                MoeShape{20, 64, 2176}, MoeShape{40, 256, 128}, MoeShape{200, 384, 256},
                                MoeShape{200, 256, 128, WeightFormat::FP8Block}, MoeShape{1, 256, 128},
                                MoeShape{5, 384, 256}, MoeShape{16, 256, 384},
                                MoeShape{200, 384, 256, WeightFormat::FP4Group32, true}})
    run_case(shape.M, shape.D, shape.I, shape.fmt, shape.wide_scales);
}

// EPLB row shares: two ranks' MoE outputs with complementary shares add up to the whole MoE (each routed product
// once, the shared expert on both), whatever the copies; a computed row whose expert is not placed is an error.
TEST_P(BackendOps, MoeExpertSharesSplitRowsAmongReplicas) {
  if (is_cuda()) GTEST_SKIP() << "EPLB shares are CPU-only (the CUDA MoE refuses them)";
  const int64_t M = 13, D = 64, I = 32, E = 4, K = 2;
  Rng r(21);
  std::vector<ExpertWeights> rw;
  for (int64_t e = 0; e < E; ++e) {
    const auto w1 = random_weight(r, WeightFormat::FP4Group32, I, D), w2 = random_weight(r, WeightFormat::FP4Group32, D, I),
               w3 = random_weight(r, WeightFormat::FP4Group32, I, D);
    rw.push_back({upload_weight(w1), upload_weight(w2), upload_weight(w3)});
  }
  const auto s1 = random_weight(r, WeightFormat::FP8Block, I, D), s2 = random_weight(r, WeightFormat::FP8Block, D, I),
             s3 = random_weight(r, WeightFormat::FP8Block, I, D);
  ExpertWeights sw{upload_weight(s1), upload_weight(s2), upload_weight(s3)};
  std::vector<float> x(size_t(M * D)), wts(size_t(M * K));
  for (auto& v : x) v = float(r.below(33) - 16) / 8.f;
  for (auto& v : wts) v = float(1 + r.below(15)) / 16.f;
  std::vector<int32_t> ex(size_t(M * K));
  for (int64_t m = 0; m < M; ++m) ex[size_t(m * K)] = int32_t(m % E), ex[size_t(m * K + 1)] = int32_t((m + 1 + m / 4) % E);
  Tensor xt = up(x, DType::F32, {M, D}), et = up(ex, DType::I32, {M, K}), wt = up(wts, DType::F32, {M, K});
  // Experts 0 and 3 have two copies (one per rank), 1 is on rank 0, 2 on rank 1.
  ExpertShare sh[2], none;
  for (int k = 0; k < 2; ++k) sh[k].copies = {2, 1, 1, 2}, sh[k].offset = {0, 2, 3, 4, 6};
  sh[0].here = {1, 0, 1, 0, 1, 0};
  sh[1].here = {0, 1, 0, 1, 0, 1};
  none = sh[0];
  none.here.assign(6, 0);
  auto run = [&](const ExpertShare* s) {
    MoeArgs ma;
    ma.x = xt, ma.experts = et, ma.weights = wt, ma.routed = &rw, ma.shared = &sw, ma.inter = I, ma.share = s;
    ma.scratch = zeros(DType::U8, {moe_scratch_bytes(M, K, D, I)});
    ma.out = zeros(DType::F32, {M, D});
    be->moe(ma);
    return down<float>(ma.out);
  };
  const auto whole = run(nullptr), a = run(&sh[0]), b = run(&sh[1]), shared_only = run(&none);
  std::vector<float> sum(whole.size());
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = a[i] + b[i] - shared_only[i];
  expect_close(sum, whole, tol("moe"), "rank 0 + rank 1 shares", 1e-3, 1e-4);
  EXPECT_NE(a, whole);  // each rank computes only part of the rows
  std::vector<ExpertWeights> missing = rw;
  missing[1] = {};  // rank 1 does not hold expert 1, but a share that computes it here
  MoeArgs ma;
  ma.x = xt, ma.experts = et, ma.weights = wt, ma.routed = &missing, ma.shared = &sw, ma.inter = I, ma.share = &sh[0];
  ma.scratch = zeros(DType::U8, {moe_scratch_bytes(M, K, D, I)});
  ma.out = zeros(DType::F32, {M, D});
  EXPECT_THROW(be->moe(ma), Error);
}
