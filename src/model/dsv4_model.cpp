#include "model/dsv4_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/quant.h"

namespace dsv4 {

Numerics parse_numerics(const std::string& s) {
  if (s == "exact") return Numerics::Exact;
  if (s == "reference") return Numerics::Reference;
  fail("unknown numerics mode '{}' (exact or reference)", s);
}

// Flattened rows of all items of one forward call.
struct Dsv4Model::Batch {
  struct Item {
    SequenceState* seq;
    int64_t row0, T, start;
  };
  std::vector<Item> items;
  std::vector<int64_t> pos;     // [M] absolute position of each row
  std::vector<int32_t> tokens;  // [M]
  std::vector<int32_t> item_of;  // [M]
  int64_t M = 0;
};

Dsv4Model::Dsv4Model(const std::string& dir, Numerics numerics, std::unique_ptr<Backend> backend)
    : cfg_(ModelConfig::load((std::filesystem::path(dir) / "config.json").string())),
      numerics_(numerics),
      be_(backend ? std::move(backend) : make_cpu_backend()),
      w_(ModelWeights::load(cfg_, dir)) {
  rope_main_ = RopeTable::make(cfg_.rope_dim, cfg_.rope_theta, 0, 1.0, cfg_.beta_fast, cfg_.beta_slow);
  rope_compress_ = RopeTable::make(cfg_.rope_dim, cfg_.compress_rope_theta, cfg_.rope_original_max_pos,
                                   cfg_.rope_factor, cfg_.beta_fast, cfg_.beta_slow);
}

void Dsv4Model::round(float* x, int64_t n) const {
  if (numerics_ == Numerics::Reference) round_bf16(x, n);
}

void Dsv4Model::forward(std::span<const ForwardItem> items, std::vector<float>& logits) {
  const int64_t D = cfg_.dim, hc = cfg_.hc_mult, V = cfg_.vocab_size;
  Batch b;
  for (auto& it : items) {
    DSV4_CHECK(it.seq && !it.tokens.empty(), "forward: empty item");
    if (!it.seq->ensure_blocks(it.seq->pos + int64_t(it.tokens.size())))
      fail("KV cache is full: no free block for {} more tokens", it.tokens.size());
    b.items.push_back({it.seq, b.M, int64_t(it.tokens.size()), it.seq->pos});
    for (size_t t = 0; t < it.tokens.size(); ++t) {
      int32_t tok = it.tokens[t];
      DSV4_CHECK(tok >= 0 && tok < V, "token id {} out of range [0, {})", tok, V);
      b.pos.push_back(it.seq->pos + int64_t(t));
      b.tokens.push_back(tok);
      b.item_of.push_back(int32_t(b.items.size() - 1));
    }
    b.M += int64_t(it.tokens.size());
  }
  const int64_t M = b.M;

  // Embedding, replicated into the hc residual streams.
  std::vector<float> X(size_t(M * hc * D)), X2(X.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t tok = b.tokens[size_t(m)];
      float v = w_.embed ? bf16_to_f32(w_.embed[tok * D + d]) : w_.embed_f32[tok * D + d];
      for (int64_t h = 0; h < hc; ++h) X[size_t((m * hc + h) * D + d)] = v;
    }

  std::vector<float> y(size_t(M * D)), sub(size_t(M * D)), post(size_t(M * hc)), comb(size_t(M * hc * hc));
  auto hc_params = [&](const HcWeights& h) {
    HcParams p;
    p.fn = h.fn.data();
    p.base = h.base.data();
    p.scale = h.scale.data();
    p.hc = int(hc);
    p.D = int(D);
    p.sinkhorn_iters = cfg_.hc_sinkhorn_iters;
    p.norm_eps = float(cfg_.rms_norm_eps);
    p.hc_eps = float(cfg_.hc_eps);
    return p;
  };
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    // attention sub-layer
    be_->hc_pre(X.data(), M, hc_params(L.hc_attn), y.data(), post.data(), comb.data());
    round(y.data(), M * D);
    be_->rms_norm(y.data(), M, D, L.attn_norm.data(), float(cfg_.rms_norm_eps), y.data());
    round(y.data(), M * D);
    attention(l, b, y.data(), sub.data());
    be_->hc_post(sub.data(), X.data(), post.data(), comb.data(), M, int(hc), D, X2.data());
    round(X2.data(), int64_t(X2.size()));
    std::swap(X, X2);
    // MoE sub-layer
    be_->hc_pre(X.data(), M, hc_params(L.hc_ffn), y.data(), post.data(), comb.data());
    round(y.data(), M * D);
    be_->rms_norm(y.data(), M, D, L.ffn_norm.data(), float(cfg_.rms_norm_eps), y.data());
    round(y.data(), M * D);
    moe(l, b, y.data(), sub.data());
    be_->hc_post(sub.data(), X.data(), post.data(), comb.data(), M, int(hc), D, X2.data());
    round(X2.data(), int64_t(X2.size()));
    std::swap(X, X2);
  }
  for (auto& it : b.items) it.seq->pos += it.T;

  // Head on the requested rows only.
  std::vector<int64_t> rows;
  for (size_t i = 0; i < b.items.size(); ++i) {
    const auto& it = b.items[i];
    if (items[i].skip_logits) continue;
    if (items[i].all_logits)
      for (int64_t t = 0; t < it.T; ++t) rows.push_back(it.row0 + t);
    else
      rows.push_back(it.row0 + it.T - 1);
  }
  const int64_t R = int64_t(rows.size());
  std::vector<float> Xr(size_t(R * hc * D)), yr(size_t(R * D));
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(Xr.data() + r * hc * D, X.data() + rows[size_t(r)] * hc * D, sizeof(float) * size_t(hc * D));
  be_->hc_head(Xr.data(), R, hc_params(w_.hc_head), yr.data());
  round(yr.data(), R * D);
  be_->rms_norm(yr.data(), R, D, w_.norm.data(), float(cfg_.rms_norm_eps), yr.data());
  round(yr.data(), R * D);
  const size_t off = logits.size();
  logits.resize(off + size_t(R * V));
  be_->linear(yr.data(), R, w_.head, logits.data() + off, {});  // fp32 head, as the reference
}

void Dsv4Model::compressor(int l, bool indexer, const Batch& b, const float* x) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const CompressorWeights& cw = indexer ? L.idx_compressor : L.compressor;
  const int64_t M = b.M, w = int64_t(cw.coff) * cw.d, d = cw.d;
  std::vector<float> u(static_cast<size_t>(M * w)), g(static_cast<size_t>(M * w));
  be_->linear(x, M, cw.wkv, u.data(), {});  // fp32 weights and math, as the reference
  be_->linear(x, M, cw.wgate, g.data(), {});
  for (const auto& it : b.items) {
    SequenceState& seq = *it.seq;
    LayerState& S = seq.layers[size_t(l)];
    CompressorState& st = indexer ? S.idx_state : S.comp_state;
    const KvLayout& lay = seq.layout();
    const KvCodec& codec = indexer ? lay.index : lay.main;
    std::vector<float> pooled(static_cast<size_t>((it.T / cw.ratio + 1) * d));
    // Feed the tokens in pieces that end on block boundaries, so a prefix-cached block can record the
    // compressor slots exactly as they stand at its end.
    int64_t n = 0;
    for (int64_t t0 = 0; t0 < it.T;) {
      const int64_t p0 = it.start + t0, bt = lay.block_tokens;
      const int64_t t1 = lay.with_tail ? std::min(it.T, (p0 / bt + 1) * bt - it.start) : it.T;
      CompressArgs a;
      a.ratio = cw.ratio;
      a.coff = cw.coff;
      a.d = cw.d;
      a.u = u.data() + (it.row0 + t0) * w;
      a.g = g.data() + (it.row0 + t0) * w;
      a.ape = cw.ape.data();
      a.start = p0;
      a.T = t1 - t0;
      a.state_kv = st.kv.data();
      a.state_score = st.score.data();
      a.out = pooled.data() + n * d;
      n += be_->compress(a);
      const int64_t end = it.start + t1;
      if (lay.with_tail && end % bt == 0 && cw.ratio == 4) {
        const auto& ly = lay.layers[size_t(l)];
        const int64_t floats = indexer ? lay.istate_floats : lay.cstate_floats;
        float* dst = reinterpret_cast<float*>(seq.block_region(end / bt - 1, indexer ? ly.istate_off : ly.cstate_off));
        std::memcpy(dst, st.kv.data(), size_t(floats / 2) * 4);
        std::memcpy(dst + floats / 2, st.score.data(), size_t(floats / 2) * 4);
      }
      t0 = t1;
    }
    if (n == 0) continue;
    // Entry j covers tokens [j*r, (j+1)*r): normalized, then rotated at the window's first position.
    const int64_t first = it.start / cw.ratio;  // entry j completes at token (j+1)*r - 1 >= start
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) pos[size_t(j)] = (first + j) * cw.ratio;
    round(pooled.data(), n * d);
    be_->rms_norm(pooled.data(), n, d, cw.norm.data(), float(cfg_.rms_norm_eps), pooled.data());
    round(pooled.data(), n * d);
    be_->rope(pooled.data(), n, 1, d, pos.data(), rope_for(l), false);
    round(pooled.data(), n * d);
    if (numerics_ == Numerics::Reference) {
      for (int64_t j = 0; j < n; ++j) {
        float* e = pooled.data() + j * d;
        if (indexer) {
          hadamard(e, d);
          fp4_roundtrip(e, d, 32);
        } else {
          fp8_roundtrip(e, cfg_.nope_dim(), 64);
        }
      }
    }
    DSV4_CHECK(first == S.n_comp, "layer {}: compressed entries out of step ({} vs {})", l, first, S.n_comp);
    for (int64_t j = 0; j < n; ++j)
      codec.encode(pooled.data() + j * d, indexer ? seq.idx_entry(l, first + j) : seq.comp_entry(l, first + j));
    // The main compressor runs last on a layer and advances the count for both.
    if (!indexer) S.n_comp += n;
  }
}

void Dsv4Model::attention(int l, const Batch& b, const float* x, float* out) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const bool ref = numerics_ == Numerics::Reference;
  const LinearOpts q8{ref, ref};
  const int64_t M = b.M, H = cfg_.n_heads, hd = cfg_.head_dim, win = cfg_.window;
  const float eps = float(cfg_.rms_norm_eps);
  const int ratio = L.ratio;
  const RopeTable& rope = rope_for(l);

  std::vector<float> qr(size_t(M * cfg_.q_lora_rank)), q(size_t(M * H * hd)), kv(size_t(M * hd));
  be_->linear(x, M, L.wq_a, qr.data(), q8);
  be_->rms_norm(qr.data(), M, cfg_.q_lora_rank, L.q_norm.data(), eps, qr.data());
  round(qr.data(), int64_t(qr.size()));
  be_->linear(qr.data(), M, L.wq_b, q.data(), q8);
  be_->rms_norm(q.data(), M * H, hd, nullptr, eps, q.data());  // per-head, unweighted
  round(q.data(), int64_t(q.size()));
  be_->rope(q.data(), M, H, hd, b.pos.data(), rope, false);
  round(q.data(), int64_t(q.size()));
  be_->linear(x, M, L.wkv, kv.data(), q8);
  be_->rms_norm(kv.data(), M, hd, L.kv_norm.data(), eps, kv.data());
  round(kv.data(), int64_t(kv.size()));
  be_->rope(kv.data(), M, 1, hd, b.pos.data(), rope, false);
  round(kv.data(), int64_t(kv.size()));
  if (ref)
    for (int64_t m = 0; m < M; ++m) fp8_roundtrip(kv.data() + m * hd, cfg_.nope_dim(), 64);
  // Window keys go through the cache's storage format like everything cached, so a value read back from
  // the cache (a later chunk, a prefix-cache hit) is the value this chunk used.
  for (const auto& it : b.items) {
    const KvCodec& c = it.seq->layout().main;
    if (c.dtype == KvDtype::F32) continue;
    std::vector<uint8_t> tmp(static_cast<size_t>(c.bytes()));
    for (int64_t r = it.row0; r < it.row0 + it.T; ++r) {
      c.encode(kv.data() + r * hd, tmp.data());
      c.decode(tmp.data(), kv.data() + r * hd);
    }
  }

  // Cached entries of each item as fp32 rows (pointers straight into f32 blocks, else decoded copies).
  struct Rows {
    std::vector<float> buf;
    std::vector<const float*> row;
  };
  auto gather = [&](SequenceState& seq, bool index, int64_t n, int64_t dim) {
    Rows r;
    const KvCodec& c = index ? seq.layout().index : seq.layout().main;
    r.row.resize(size_t(n));
    if (c.dtype != KvDtype::F32) r.buf.resize(size_t(n * dim));
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* src = index ? seq.idx_entry(l, j) : seq.comp_entry(l, j);
      if (c.dtype == KvDtype::F32) {
        r.row[size_t(j)] = reinterpret_cast<const float*>(src);
      } else {
        c.decode(src, r.buf.data() + j * dim);
        r.row[size_t(j)] = r.buf.data() + j * dim;
      }
    }
    return r;
  };

  // Indexer selection (ratio 4) needs its compressor's keys first, as in the reference.
  std::vector<std::vector<int32_t>> selected(static_cast<size_t>(M));
  if (ratio == 4) {
    compressor(l, true, b, x);
    const int64_t IH = cfg_.index_n_heads, ID = cfg_.index_head_dim;
    std::vector<float> iq(static_cast<size_t>(M * IH * ID)), iw(static_cast<size_t>(M * IH));
    be_->linear(qr.data(), M, L.idx_wq_b, iq.data(), q8);
    be_->rope(iq.data(), M, IH, ID, b.pos.data(), rope, false);
    round(iq.data(), int64_t(iq.size()));
    if (ref)
      for (int64_t r = 0; r < M * IH; ++r) {
        hadamard(iq.data() + r * ID, ID);
        fp4_roundtrip(iq.data() + r * ID, ID, 32);
      }
    be_->linear(x, M, L.idx_weights_proj, iw.data(), {false, ref});
    const float wscale = float(1.0 / std::sqrt(double(ID)) / std::sqrt(double(IH)));
    for (auto& v : iw) v *= wscale;
    std::vector<float> scores, keys;
    for (const auto& it : b.items) {
      SequenceState& seq = *it.seq;
      const int64_t n_all = (it.start + it.T) / 4;  // the indexer compressor already ran on this chunk
      if (n_all == 0) continue;
      Rows ik = gather(seq, true, n_all, ID);
      keys.resize(size_t(n_all * ID));
      for (int64_t j = 0; j < n_all; ++j) std::memcpy(keys.data() + j * ID, ik.row[size_t(j)], size_t(ID) * 4);
      for (int64_t m = it.row0; m < it.row0 + it.T; ++m) {
        const int64_t n_elig = (b.pos[size_t(m)] + 1) / 4;
        if (n_elig == 0) continue;
        scores.resize(size_t(n_elig));
        be_->index_scores(iq.data() + m * IH * ID, iw.data() + m * IH, IH, ID, keys.data(), n_elig, scores.data(), ref);
        const int64_t k = std::min<int64_t>(cfg_.index_topk, n_elig);
        selected[size_t(m)].resize(size_t(k));
        be_->topk(scores.data(), n_elig, k, selected[size_t(m)].data());
      }
    }
  }
  if (ratio) compressor(l, false, b, x);

  // Key lists: the window (ring for positions before this chunk, the chunk's own kv after), then the
  // compressed entries this query may see.
  std::vector<std::vector<const float*>> keys(static_cast<size_t>(M));
  std::vector<Rows> comp_rows;
  for (const auto& it : b.items) {
    SequenceState& seq = *it.seq;
    const LayerState& S = seq.layers[size_t(l)];
    comp_rows.push_back(ratio ? gather(seq, false, S.n_comp, hd) : Rows{});
    const Rows& cr = comp_rows.back();
    for (int64_t m = it.row0; m < it.row0 + it.T; ++m) {
      const int64_t p = b.pos[size_t(m)];
      auto& ks = keys[size_t(m)];
      for (int64_t s = std::max<int64_t>(0, p - win + 1); s <= p; ++s)
        ks.push_back(s >= it.start ? kv.data() + (it.row0 + s - it.start) * hd : S.window.data() + (s % win) * hd);
      if (ratio == 128) {
        for (int64_t j = 0; j < (p + 1) / 128; ++j) ks.push_back(cr.row[size_t(j)]);
      } else if (ratio == 4) {
        for (int32_t j : selected[size_t(m)]) ks.push_back(cr.row[size_t(j)]);
      }
    }
  }
  std::vector<float> o(size_t(M * H * hd));
  AttentionArgs aa;
  aa.M = M;
  aa.H = H;
  aa.hd = hd;
  aa.q = q.data();
  aa.sink = L.attn_sink.data();
  aa.keys = &keys;
  aa.scale = float(1.0 / std::sqrt(double(hd)));
  aa.probs_bf16 = ref;
  aa.out = o.data();
  be_->attention(aa);
  round(o.data(), int64_t(o.size()));

  // Prefix caching: a block that just filled records the window as it stands at its end.
  for (const auto& it : b.items) {
    SequenceState& seq = *it.seq;
    const KvLayout& lay = seq.layout();
    if (!lay.with_tail) continue;
    const int64_t bt = lay.block_tokens;
    const LayerState& S = seq.layers[size_t(l)];
    for (int64_t B = (it.start / bt + 1) * bt; B <= it.start + it.T; B += bt) {
      uint8_t* tail = seq.block_region(B / bt - 1, lay.layers[size_t(l)].tail_off);
      for (int64_t s = B - win; s < B; ++s) {
        const float* src = s >= it.start ? kv.data() + (it.row0 + s - it.start) * hd : S.window.data() + (s % win) * hd;
        lay.main.encode(src, tail + (s - (B - win)) * lay.main.bytes());
      }
    }
  }
  // The window ring keeps the last `win` positions of each sequence.
  for (const auto& it : b.items) {
    LayerState& S = it.seq->layers[size_t(l)];
    for (int64_t s = std::max(it.start, it.start + it.T - win); s < it.start + it.T; ++s)
      std::memcpy(S.window.data() + (s % win) * hd, kv.data() + (it.row0 + s - it.start) * hd, sizeof(float) * size_t(hd));
  }

  // Remove the value's absolute rotation, then the grouped low-rank output projection.
  be_->rope(o.data(), M, H, hd, b.pos.data(), rope, true);
  round(o.data(), int64_t(o.size()));
  const int64_t G = cfg_.o_groups, gw = H / G * hd, R = cfg_.o_lora_rank;
  std::vector<float> og(size_t(M * gw)), zg(size_t(M * R)), z(size_t(M * G * R));
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t m = 0; m < M; ++m) std::memcpy(og.data() + m * gw, o.data() + m * H * hd + g * gw, sizeof(float) * size_t(gw));
    be_->linear(og.data(), M, L.wo_a.rows(g * R, R), zg.data(), {false, ref});  // bf16 weights in the reference
    for (int64_t m = 0; m < M; ++m) std::memcpy(z.data() + m * G * R + g * R, zg.data() + m * R, sizeof(float) * size_t(R));
  }
  be_->linear(z.data(), M, L.wo_b, out, q8);
}

void Dsv4Model::moe(int l, const Batch& b, const float* x, float* out) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const bool ref = numerics_ == Numerics::Reference;
  const LinearOpts q8{ref, ref};
  const int64_t M = b.M, D = cfg_.dim, E = cfg_.n_routed_experts, K = cfg_.n_experts_per_tok, I = cfg_.moe_inter_dim;
  std::vector<float> logits(size_t(M * E)), wts(size_t(M * K));
  std::vector<int32_t> ex(size_t(M * K));
  be_->linear(x, M, L.gate, logits.data(), {});
  RouteArgs ra;
  ra.logits = logits.data();
  ra.M = M;
  ra.E = int(E);
  ra.k = int(K);
  ra.score_func = cfg_.scoring_func == "sqrtsoftplus" ? 0 : cfg_.scoring_func == "sigmoid" ? 1 : 2;
  ra.bias = L.hash_routed ? nullptr : L.gate_bias.data();
  ra.tid2eid = L.hash_routed ? L.tid2eid.data() : nullptr;
  ra.tokens = b.tokens.data();
  ra.normalize = cfg_.norm_topk_prob;
  ra.route_scale = float(cfg_.routed_scaling_factor);
  ra.experts = ex.data();
  ra.weights = wts.data();
  be_->route(ra);

  std::vector<float> acc(size_t(M * D), 0.f);
  auto run_expert = [&](const LayerWeights::Expert& e, const float* xe, int64_t m, const float* w, float* ye) {
    std::vector<float> g1(size_t(m * I)), g3(size_t(m * I));
    be_->linear(xe, m, e.w1, g1.data(), q8);
    be_->linear(xe, m, e.w3, g3.data(), q8);
    be_->swiglu(g1.data(), g3.data(), m, I, float(cfg_.swiglu_limit), w, g1.data());
    round(g1.data(), m * I);
    be_->linear(g1.data(), m, e.w2, ye, q8);
  };
  // Group rows by expert; each expert runs once on all its rows.
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(static_cast<size_t>(E));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < K; ++j) by_expert[size_t(ex[size_t(m * K + j)])].push_back({m, wts[size_t(m * K + j)]});
  std::vector<float> xe, we, ye;
  for (int64_t e = 0; e < E; ++e) {
    const auto& rows = by_expert[size_t(e)];
    if (rows.empty()) continue;
    const int64_t m = int64_t(rows.size());
    xe.resize(size_t(m * D));
    we.resize(size_t(m));
    ye.resize(size_t(m * D));
    for (int64_t r = 0; r < m; ++r) {
      std::memcpy(xe.data() + r * D, x + rows[size_t(r)].first * D, sizeof(float) * size_t(D));
      we[size_t(r)] = rows[size_t(r)].second;
    }
    run_expert(L.experts[size_t(e)], xe.data(), m, we.data(), ye.data());
    for (int64_t r = 0; r < m; ++r) {
      float* a = acc.data() + rows[size_t(r)].first * D;
      const float* s = ye.data() + r * D;
      for (int64_t d = 0; d < D; ++d) a[d] += s[d];
    }
  }
  ye.resize(size_t(M * D));
  run_expert(L.shared, x, M, nullptr, ye.data());
  for (int64_t i = 0; i < M * D; ++i) out[i] = acc[size_t(i)] + ye[size_t(i)];
  round(out, M * D);
}

}  // namespace dsv4
