#include "model/dsv4_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace dsv4 {

Numerics parse_numerics(const std::string& s) {
  if (s == "exact") return Numerics::Exact;
  if (s == "reference") return Numerics::Reference;
  fail("unknown numerics mode '{}' (exact or reference)", s);
}

KvDtype default_kv_dtype(Numerics n) { return n == Numerics::Exact ? KvDtype::F32 : KvDtype::BF16; }

namespace {

// Sizes of one step's tensors. The same function sizes the workspace (worst case) and carves it each step.
struct Dims {
  int64_t M = 0, items = 0, max_blocks = 0, e4 = 0, e128 = 0, snaps = 0, R = 0, index_cols = 0;
  int64_t F = 0;  // DSpark: target layers x M (the stream means' gather table)
  int64_t blob() const {
    return 4 * M + items * (BatchMeta::kItemFields + max_blocks) + 4 * (e4 + e128) + 2 * snaps + R + F;
  }
};

// The first rows * cols elements of t as a [rows, cols] tensor.
Tensor leading(const Tensor& t, int64_t rows, int64_t cols) {
  DSV4_CHECK(rows * cols <= t.numel(), "leading: [{}, {}] of a {}-element tensor", rows, cols, t.numel());
  Tensor v = t;
  v.ndim = 2;
  v.shape = {rows, cols, 0, 0};
  return v;
}

}  // namespace

struct Dsv4Model::Step {
  Dims d;
  BatchMeta meta;
  EntryList e4, e128;
  SnapshotList snaps;
  Tensor blob, tokens, head_rows, hrows;  // blob: every I32 table, one upload
  // activations
  Tensor X, X2, y, sub, post, comb;
  Tensor qr, q, kv, o, z;
  Tensor iq, iw, sel, index_scratch;
  Tensor u, g, pooled, iu, ig, ipooled;
  Tensor elog, ew, ex, moe_scratch;
  Tensor ex_all;  // expert counting: every layer's router output, [n_layers * M, K]
  Tensor Xr, yr, logits, logits_all;
  // DSpark: the target layers' stream means [targets * M, hc * D] (every stream the mean), their gather table,
  // the context feature [M, targets * D], main_x [M, D], the Markov head's rows [M, rank].
  Tensor ds_means, ds_fidx, ds_feat, ds_x, ds_e;
  bool dspark_block = false;  // a DSpark block pass: bidirectional attention, no ring writes
  const KvStorage* kv_storage = nullptr;

  // tp: ranks sharing the step (attention heads, output groups, expert widths and the vocabulary are split).
  void carve(Workspace& ws, const ModelConfig& c, int tp, bool count_experts, bool dspark) {
    const int64_t M = std::max<int64_t>(d.M, 1), D = c.dim, hc = c.hc_mult;
    blob = ws.take(DType::I32, {std::max<int64_t>(d.blob(), 1)});
    int64_t off = 0;
    auto ints = [&](int64_t n) {
      Tensor t = blob;
      t.offset += off * 4;
      t.ndim = 1;
      t.shape = {n, 0, 0, 0};
      off += n;
      return t;
    };
    tokens = ints(d.M);
    meta.M = d.M;
    meta.n_items = d.items;
    meta.max_blocks = d.max_blocks;
    meta.pos = ints(d.M);
    meta.row_item = ints(d.M);
    meta.items = ints(d.items * BatchMeta::kItemFields).view({d.items, BatchMeta::kItemFields});
    meta.block_table = ints(d.items * d.max_blocks).view({d.items, d.max_blocks});
    for (EntryList* e : {&e4, &e128}) {
      e->n = e == &e4 ? d.e4 : d.e128;
      e->row = ints(e->n);
      e->item = ints(e->n);
      e->index = ints(e->n);
      e->pos = ints(e->n);
    }
    snaps.n = d.snaps;
    snaps.item = ints(d.snaps);
    snaps.end = ints(d.snaps);
    head_rows = ints(d.R);
    hrows = ints(d.M);  // hidden store rows: an MTP batch's inputs, or where a main batch keeps its rows
    ds_fidx = ints(d.F);

    auto f32 = [&](std::initializer_list<int64_t> s) { return ws.take(DType::F32, s); };
    X = f32({M, hc * D});
    X2 = f32({M, hc * D});
    y = f32({M, D});
    sub = f32({M, D});
    post = f32({M, hc});
    comb = f32({M, hc * hc});
    const int64_t H = c.n_heads / tp, hd = c.head_dim;
    qr = f32({M, c.q_lora_rank});
    q = f32({M, H * hd});
    kv = f32({M, hd});
    o = f32({M, H * hd});
    z = f32({M, int64_t(c.o_groups / tp) * c.o_lora_rank});
    const bool any4 = std::count(c.compress_ratios.begin(), c.compress_ratios.begin() + c.n_layers, 4) > 0;
    const bool anyc = std::any_of(c.compress_ratios.begin(), c.compress_ratios.begin() + c.n_layers, [](int r) { return r; });
    if (any4) {
      iq = f32({M, int64_t(c.index_n_heads) * c.index_head_dim});
      iw = f32({M, c.index_n_heads});
      sel = ws.take(DType::I32, {M, c.index_topk});
      iu = f32({M, 2LL * c.index_head_dim});
      ig = f32({M, 2LL * c.index_head_dim});
      ipooled = f32({std::max<int64_t>(d.e4, 1), c.index_head_dim});
    }
    if (anyc) {
      u = f32({M, (any4 ? 2 : 1) * hd});
      g = f32({M, (any4 ? 2 : 1) * hd});
      pooled = f32({std::max<int64_t>(std::max(d.e4, d.e128), 1), hd});
    }
    const int64_t E = c.n_routed_experts, K = c.n_experts_per_tok;
    elog = f32({M, E});
    ew = f32({M, K});
    if (count_experts) {
      ex_all = ws.take(DType::I32, {c.n_layers * M, K});
      ex = ex_all.rows(0, M);  // re-pointed per layer; an MTP pass (not counted) routes into these rows
    } else {
      ex = ws.take(DType::I32, {M, K});
    }
    moe_scratch = ws.take(DType::U8, {std::max<int64_t>(moe_scratch_bytes(M, K, D, c.moe_inter_dim), 1)});
    const int64_t R = std::max<int64_t>(d.R, 1);
    Xr = f32({R, hc * D});
    yr = f32({R, D});
    logits = f32({R, c.vocab_size / tp});
    if (tp > 1) logits_all = f32({tp * R, c.vocab_size / tp});
    if (dspark) {
      const int64_t nt = int64_t(c.dspark_target_layer_ids.size());
      ds_means = f32({nt * M, hc * D});
      ds_feat = f32({M, nt * D});
      ds_x = f32({M, D});
      ds_e = f32({M, c.dspark_markov_rank});
    }
    // Last: it may grow with the context (up to the backend's tile, or without bound on a backend that does not
    // tile), so the tensors above keep their addresses from step to step.
    if (any4) index_scratch = f32({M, std::max<int64_t>(d.index_cols, 1)});
  }
};

Dsv4Model::Dsv4Model(const ModelConfig& cfg, const ModelWeights& w, Backend& be, Numerics numerics,
                     dist::Communicator* comm)
    : cfg_(cfg), w_(w), be_(be), numerics_(numerics), comm_(comm && comm->size() > 1 ? comm : nullptr) {
  tp_ = comm_ ? comm_->size() : 1;
  pipe_.layers = {0, cfg.n_layers};
  DSV4_CHECK(w.placement.size == tp_ && (!comm_ || w.placement.rank == comm_->rank()),
             "model: weights placed for rank {} of {}, communicator is rank {} of {}", w.placement.rank,
             w.placement.size, comm_ ? comm_->rank() : 0, tp_);
  for (auto [n, what] : {std::pair{cfg.n_heads, "attention heads"}, {cfg.o_groups, "output groups"},
                         {int(cfg.vocab_size), "vocabulary rows"}})
    DSV4_CHECK(n % tp_ == 0, "{} {} do not split evenly across {} ranks", n, what, tp_);
  // Reference numerics quantize linear inputs in 128-column blocks; a rank's slice that is not whole blocks
  // quantizes differently from one rank (real checkpoints split on whole blocks up to 16 ranks).
  const int64_t inter = w.placement.expert_parallel ? cfg.moe_inter_dim : cfg.moe_inter_dim / tp_;
  if (numerics == Numerics::Reference && tp_ > 1 && (inter % 128 || (cfg.moe_inter_dim / tp_) % 128))
    spdlog::warn("tensor parallelism over {} ranks splits the MoE width {} inside 128-column FP8 activation "
                 "blocks: reference numerics will differ slightly from a single rank", tp_, cfg.moe_inter_dim);
}

void Dsv4Model::set_pipeline(const PipelineStage& st) {
  DSV4_CHECK(st.count >= 1 && st.index >= 0 && st.index < st.count && st.layers.begin >= 0 &&
                 st.layers.begin < st.layers.end && st.layers.end <= cfg_.n_layers,
             "set_pipeline: stage {} of {} with layers [{}, {})", st.index, st.count, st.layers.begin, st.layers.end);
  DSV4_CHECK(st.first() == (st.layers.begin == 0) && st.last() == (st.layers.end == cfg_.n_layers),
             "set_pipeline: the first stage must start at layer 0 and the last end at layer {}", cfg_.n_layers);
  DSV4_CHECK(st.count == 1 || (st.p2p && (st.first() || st.prev >= 0) && (st.last() || st.next >= 0)),
             "set_pipeline: a stage of a pipeline needs its point-to-point peers");
  DSV4_CHECK(w_.placement.first_layer == st.layers.begin &&
                 (w_.placement.end_layer < 0 ? cfg_.n_layers : w_.placement.end_layer) == st.layers.end,
             "set_pipeline: the weights are placed for another stage");
  DSV4_CHECK(st.count == 1 || (!mtp_enabled() && !dspark_enabled() && !count_experts_),
             "set_pipeline: drafters and expert counting are not supported with pipeline parallelism yet");
  pipe_ = st;
}

void Dsv4Model::reduce(const Tensor& x) const {
  if (!comm_) return;
  comm_->all_reduce_sum(x);
  round(x);
}

uint64_t Dsv4Model::workspace_bytes(const StepLimits& lim, int block_tokens) const {
  Step s;
  s.d.M = lim.max_rows;
  s.d.items = lim.max_items;
  s.d.max_blocks = (lim.max_context + block_tokens - 1) / block_tokens;
  s.d.e4 = lim.max_rows / 4 + lim.max_items;
  s.d.e128 = lim.max_rows / 128 + lim.max_items;
  s.d.snaps = lim.max_rows / block_tokens + lim.max_items;
  s.d.R = lim.max_logit_rows;
  s.d.index_cols = be_.index_scratch_cols((lim.max_context + 1) / 4, cfg_.index_topk);
  s.d.F = dspark_enabled() ? int64_t(cfg_.dspark_target_layer_ids.size()) * lim.max_rows : 0;
  Workspace measure;
  s.carve(measure, cfg_, tp_, count_experts_, dspark_enabled());
  return measure.peak() + 4096;
}

uint64_t Dsv4Model::index_scratch_bytes(const StepLimits& lim) const {
  if (std::count(cfg_.compress_ratios.begin(), cfg_.compress_ratios.begin() + cfg_.n_layers, 4) == 0) return 0;
  const int64_t cols = std::max<int64_t>(be_.index_scratch_cols((lim.max_context + 1) / 4, cfg_.index_topk), 1);
  return uint64_t(std::max<int64_t>(lim.max_rows, 1)) * uint64_t(cols) * 4;
}

void Dsv4Model::round(const Tensor& x) const {
  if (numerics_ == Numerics::Reference) be_.round_bf16(x);
}

HcParams Dsv4Model::hc_params(const HcWeights& h) const {
  HcParams p;
  p.fn = h.fn;
  p.base = h.base;
  p.scale = h.scale;
  p.hc = cfg_.hc_mult;
  p.D = cfg_.dim;
  p.sinkhorn_iters = cfg_.hc_sinkhorn_iters;
  p.norm_eps = float(cfg_.rms_norm_eps);
  p.hc_eps = float(cfg_.hc_eps);
  return p;
}

Tensor Dsv4Model::forward(const StepBatch& batch, KvStorage& kv, Workspace& ws, ForwardStats* stats) {
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t D = cfg_.dim, V = cfg_.vocab_size;
  const int bt = kv.layout().block_tokens();
  DSV4_CHECK(!batch.items.empty(), "forward: empty batch");
  DSV4_CHECK(!(batch.mtp && batch.keep_hidden), "forward: an MTP batch keeps its rows by its logit rows");
  DSV4_CHECK(!batch.keep_hidden || batch.rows() <= hidden_main_rows_, "forward: {} rows to keep, the store has {}",
             batch.rows(), hidden_main_rows_);
  // ---- host: the step's tables, from positions alone
  Step s;
  s.kv_storage = &kv;
  std::vector<int32_t> tokens, pos, row_item, items, head_rows, hrows;
  const int64_t hidden_rows = hidden_.valid() ? hidden_.rows() : 0;
  DSV4_CHECK(!(batch.mtp || batch.keep_hidden) || mtp_enabled(), "forward: an MTP batch without enable_mtp()");
  DSV4_CHECK(!batch.mtp || int64_t(kv.layout().layers.size()) > cfg_.n_layers,
             "forward: an MTP batch on a KV layout without the MTP layer");
  const bool dspark_pass = batch.dspark != DSparkPass::None;
  DSV4_CHECK(!dspark_pass || (dspark_enabled() && !batch.mtp && !batch.keep_hidden),
             "forward: a DSpark batch without enable_dspark(), or marked MTP");
  DSV4_CHECK(!dspark_enabled() || kv.layout().spec.dspark_stages == cfg_.n_dspark_stages,
             "forward: DSpark on a KV layout without the DSpark stages");
  std::vector<int32_t> e[2][4];  // ratio 4, 128: row, item, index, pos
  std::vector<int32_t> snap_item, snap_end;
  int64_t max_blocks = 1, max_pos = 0;
  for (auto& it : batch.items) max_blocks = std::max<int64_t>(max_blocks, int64_t(it.blocks.size()));
  std::vector<int32_t> table(batch.items.size() * size_t(max_blocks), -1);
  int64_t M = 0;
  for (size_t i = 0; i < batch.items.size(); ++i) {
    const StepItem& it = batch.items[i];
    const int64_t T = int64_t(it.tokens.size()), st = it.start;
    DSV4_CHECK(T > 0, "forward: item {} has no tokens", i);
    // A DSpark pass reads only the stages' rings (slot state), never blocks.
    DSV4_CHECK(st >= 0 && (dspark_pass || st + T <= int64_t(it.blocks.size()) * bt),
               "forward: item {} covers positions [0, {}) but has {} KV blocks of {} tokens", i, st + T,
               it.blocks.size(), bt);
    DSV4_CHECK(it.slot >= 0 && it.slot < kv.layout().shape.n_slots, "forward: slot {} out of range", it.slot);
    for (size_t b = 0; b < it.blocks.size(); ++b) {
      DSV4_CHECK(it.blocks[b] >= 0 && it.blocks[b] < kv.layout().shape.n_blocks, "forward: KV block {} out of range",
                 it.blocks[b]);
      table[i * size_t(max_blocks) + b] = it.blocks[b];
    }
    items.insert(items.end(), {int32_t(st), int32_t(M), int32_t(T), it.slot});
    DSV4_CHECK(!batch.mtp || int64_t(it.hidden.size()) == T, "forward: MTP item {} has {} hidden rows for {} tokens",
               i, it.hidden.size(), T);
    for (int64_t t = 0; t < T; ++t) {
      const int32_t tok = it.tokens[size_t(t)];
      DSV4_CHECK(tok >= 0 && tok < V, "token id {} out of range [0, {})", tok, V);
      tokens.push_back(tok);
      pos.push_back(int32_t(st + t));
      row_item.push_back(int32_t(i));
      const int32_t h = batch.mtp ? it.hidden[size_t(t)] : int32_t(M + t);
      DSV4_CHECK(!(batch.mtp || batch.keep_hidden) || (h >= 0 && h < hidden_rows),
                 "forward: hidden row {} outside the hidden store", h);
      hrows.push_back(h);
    }
    for (int k = 0; k < 2; ++k) {
      const int64_t r = k == 0 ? 4 : 128;
      for (int64_t j = st / r; j < (st + T) / r; ++j) {  // entry j completes at token (j + 1) * r - 1
        e[k][0].push_back(int32_t(M + (j + 1) * r - 1 - st));
        e[k][1].push_back(int32_t(i));
        e[k][2].push_back(int32_t(j));
        e[k][3].push_back(int32_t(j * r));
      }
    }
    DSV4_CHECK(batch.dspark != DSparkPass::Markov || (T == 1 && it.logits == LogitRows::Last),
               "forward: a DSpark Markov item is one token with its logits");
    if (kv.layout().with_tail() && !dspark_pass)  // a DSpark pass writes no KV
      for (int64_t B = (st / bt + 1) * bt; B <= st + T; B += bt) {
        snap_item.push_back(int32_t(i));
        snap_end.push_back(int32_t(B));
      }
    if (it.logits == LogitRows::All)
      for (int64_t t = 0; t < T; ++t) head_rows.push_back(int32_t(M + t));
    else if (it.logits == LogitRows::Last)
      head_rows.push_back(int32_t(M + T - 1));
    M += T;
    max_pos = std::max(max_pos, st + T - 1);
  }
  s.d = {M, int64_t(batch.items.size()), max_blocks, int64_t(e[0][0].size()), int64_t(e[1][0].size()),
         int64_t(snap_item.size()), int64_t(head_rows.size()),
         dspark_pass ? 0 : be_.index_scratch_cols((max_pos + 1) / 4, cfg_.index_topk)};
  // The stream means of target layer k are rows [k M, (k + 1) M) of ds_means (hc rows of D each, all equal);
  // row m of the feature takes stream 0 of each, in target order.
  std::vector<int32_t> fidx;
  if (dspark_enabled() && !dspark_pass) {
    const int64_t nt = int64_t(cfg_.dspark_target_layer_ids.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < nt; ++k) fidx.push_back(int32_t((k * M + m) * cfg_.hc_mult));
  }
  s.d.F = int64_t(fidx.size());
  ws.reset();
  s.carve(ws, cfg_, tp_, count_experts_, dspark_enabled());
  std::vector<int32_t> blob;
  blob.reserve(size_t(s.d.blob()));
  auto put = [&](const std::vector<int32_t>& v) { blob.insert(blob.end(), v.begin(), v.end()); };
  put(tokens), put(pos), put(row_item), put(items), put(table);
  for (auto& k : e)
    for (auto& v : k) put(v);
  put(snap_item), put(snap_end), put(head_rows), put(hrows), put(fidx);
  DSV4_CHECK(int64_t(blob.size()) == s.d.blob(), "forward: step tables out of step");
  be_.upload(s.blob, blob.data(), blob.size() * 4);  // one upload: every table is a view of this blob

  // ---- device
  const uint64_t ops0 = be_.counters().ops, dl0 = be_.counters().downloads;
  uint64_t ops_min = UINT64_MAX, ops_max = 0;
  if (batch.dspark == DSparkPass::Markov) {  // DSpark: the Markov head's term only
    // markov_w2 is split by vocabulary rows like the head: each rank's slice, gathered as the head's logits are.
    Tensor logits = s.logits.rows(0, M);
    dspark_markov(s.tokens, s.ds_e.rows(0, M), logits);
    if (comm_) {
      Tensor all = s.logits_all.rows(0, int64_t(tp_) * M);
      comm_->all_gather(logits, all);
      logits = all.view({int64_t(tp_), M, cfg_.vocab_size / tp_});
    }
    return logits;
  }
  const bool piped = pipe_.count > 1;
  DSV4_CHECK(!piped || (!batch.mtp && !batch.keep_hidden && !dspark_pass),
             "forward: drafter batches are not supported with pipeline parallelism yet");
  if (batch.mtp) mtp_input(s, batch);
  else if (!pipe_.first()) pipe_.p2p->recv(s.X.rows(0, M), pipe_.prev);  // the stage before's streams
  else be_.embed(s.tokens, w_.embed, cfg_.hc_mult, s.X);  // a DSpark block too: its ids on every stream
  s.dspark_block = batch.dspark == DSparkPass::Block;
  const int l0 = batch.mtp || s.dspark_block ? cfg_.n_layers : pipe_.layers.begin;
  const int l1 = batch.mtp          ? cfg_.n_layers + 1
                 : s.dspark_block ? cfg_.n_layers + cfg_.n_dspark_stages
                                  : pipe_.layers.end;
  for (int l = l0; l < l1; ++l) {
    const uint64_t before = be_.counters().ops;
    if (count_experts_ && l < cfg_.n_layers) s.ex = s.ex_all.rows(int64_t(l) * s.d.M, s.d.M);
    if (s.d.F && l < cfg_.n_layers && ds_target_[size_t(l)] >= 0)  // DSpark: the streams entering a target layer
      dspark_stream_mean(s.X, s.ds_means.rows(int64_t(ds_target_[size_t(l)]) * M, M));
    block(l, s);
    const uint64_t n = be_.counters().ops - before;
    ops_min = std::min(ops_min, n);
    ops_max = std::max(ops_max, n);
  }
  if (batch.keep_hidden) be_.gather_rows(s.X, s.hrows, hidden_.rows(0, M));
  if (s.d.F) {  // DSpark: every row's position enters every stage's ring (spec §7.1)
    dspark_main_x(s.ds_means, s.ds_fidx, s.ds_feat, s.ds_x);
    for (int l = cfg_.n_layers; l < cfg_.n_layers + cfg_.n_dspark_stages; ++l) {
      window_kv(l, s, s.ds_x);
      be_.window_store(s.kv, s.meta, s.snaps, kv.view(l));
    }
  }
  if (stats) {
    stats->ops_per_layer_min = ops_min;
    stats->ops_per_layer_max = ops_max;
    stats->downloads_in_layers = be_.counters().downloads - dl0;
  }
  if (!pipe_.last()) {  // the next stage continues from these streams
    pipe_.p2p->send(s.X.rows(0, M), pipe_.next);
    if (stats) {
      stats->ops_total = be_.counters().ops - ops0;
      stats->host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    }
    return Tensor();
  }
  // Head on the requested rows only (fp32 head, as the reference).
  const float eps = float(cfg_.rms_norm_eps);
  Tensor logits;
  if (s.d.R > 0) {
    Tensor Xr = s.Xr.rows(0, s.d.R), yr = s.yr.rows(0, s.d.R);
    logits = s.logits.rows(0, s.d.R);
    be_.gather_rows(s.X, s.head_rows, Xr);
    // The drafter's next recursive step continues from these rows' streams (spec §2.10: vLLM re-feeds them).
    if (batch.mtp) be_.gather_rows(s.X, s.head_rows, hidden_.rows(hidden_main_rows_, s.d.R));
    be_.hc_head(Xr, hc_params(batch.mtp ? w_.mtp.hc_head : s.dspark_block ? w_.dspark.hc_head : w_.hc_head), yr);
    round(yr);
    be_.rms_norm(yr, D, batch.mtp ? w_.mtp.norm : s.dspark_block ? w_.dspark.norm : w_.norm, eps, yr,
                 numerics_ == Numerics::Reference);
    be_.linear(yr, w_.head, logits, {});
    if (comm_) {
      Tensor all = s.logits_all.rows(0, int64_t(tp_) * s.d.R);
      comm_->all_gather(logits, all);
      logits = all.view({int64_t(tp_), s.d.R, cfg_.vocab_size / tp_});
    }
  }
  if (stats) {
    stats->ops_total = be_.counters().ops - ops0;
    stats->host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  }
  // Expert load counts the main model's routing only: an MTP batch runs the drafter's layer, not the model's.
  if (count_experts_ && !batch.mtp && !dspark_pass) count_routes(s);  // after the head is queued: the download waits for the step
  return logits;
}

void Dsv4Model::block(int l, Step& s) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const int64_t D = cfg_.dim;
  const float eps = float(cfg_.rms_norm_eps);
  const bool ref = numerics_ == Numerics::Reference;  // bf16 activations between the ops, as the reference
  // Each sub-layer: hyper-connection pre-mix, norm, the sub-layer, post-mix back into the hc streams.
  auto sublayer = [&](const HcWeights& hc, const Tensor& norm, auto&& body) {
    be_.hc_pre(s.X, hc_params(hc), s.y, s.post, s.comb, ref);
    be_.rms_norm(s.y, D, norm, eps, s.y, ref);
    body(s.y, s.sub);
    be_.hc_post(s.sub, s.X, s.post, s.comb, cfg_.hc_mult, s.X2, ref);
    std::swap(s.X, s.X2);
  };
  sublayer(L.hc_attn, L.attn_norm, [&](const Tensor& x, const Tensor& out) { attention(l, s, x, out); });
  sublayer(L.hc_ffn, L.ffn_norm, [&](const Tensor& x, const Tensor& out) { moe(l, s, x, out); });
}

void Dsv4Model::enable_mtp(const StepLimits& lim) {
  DSV4_CHECK(w_.drafter == Drafter::Mtp && int64_t(w_.layers.size()) > cfg_.n_layers, "enable_mtp: the MTP weights are not loaded");
  const int64_t hc = cfg_.hc_mult, rows = lim.max_rows + lim.max_logit_rows, M = lim.max_rows;
  const int64_t hidden_bytes = rows * hc * cfg_.dim * 4, ones_bytes = M * hc * 4;
  hidden_buf_ = be_.alloc(size_t(hidden_bytes + ones_bytes + M * hc * hc * 4), BufferUsage::Workspace);
  hidden_main_rows_ = M;
  hidden_ = Tensor(hidden_buf_.get(), 0, DType::F32, {rows, hc * cfg_.dim});
  ones_ = Tensor(hidden_buf_.get(), hidden_bytes, DType::F32, {M, hc});
  ident_ = Tensor(hidden_buf_.get(), hidden_bytes + ones_bytes, DType::F32, {M, hc * hc});
  std::vector<float> ones(size_t(M * hc), 1.0f), ident(size_t(M * hc * hc), 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t h = 0; h < hc; ++h) ident[size_t((m * hc + h) * hc + h)] = 1.0f;
  be_.upload(ones_, ones.data(), ones.size() * 4);
  be_.upload(ident_, ident.data(), ident.size() * 4);
}

// The drafter's input streams (spec §2.10): X0[h] = e_proj . enorm(embed(token)) + h_proj . hnorm(H[h]).
void Dsv4Model::mtp_input(Step& s, const StepBatch& batch) {
  const int64_t D = cfg_.dim, hc = cfg_.hc_mult, M = s.d.M;
  const float eps = float(cfg_.rms_norm_eps);
  const bool ref = numerics_ == Numerics::Reference;
  const LinearOpts q8{ref, ref};
  const MtpWeights& m = w_.mtp;
  Tensor e = s.y.rows(0, M);
  be_.embed(s.tokens, w_.embed, 1, e);
  be_.rms_norm(e, D, m.enorm, eps, e, ref);
  int64_t row0 = 0;
  for (const StepItem& it : batch.items) {  // vLLM masks the token input at position 0
    if (it.start == 0) be_.scale(e.rows(row0, 1), 0.0f);
    row0 += int64_t(it.tokens.size());
  }
  be_.linear(e, m.e_proj, s.sub.rows(0, M), q8);
  be_.gather_rows(hidden_, s.hrows, s.X2.rows(0, M));
  be_.rms_norm(s.X2.rows(0, M), D, m.hnorm, eps, s.X2.rows(0, M));  // each stream on its own
  round(s.X2);
  be_.linear(s.X2.rows(0, M).view({M * hc, D}), m.h_proj, s.X.rows(0, M).view({M * hc, D}), q8);
  be_.hc_post(s.sub.rows(0, M), s.X.rows(0, M), ones_.rows(0, M), ident_.rows(0, M), int(hc), s.X2.rows(0, M));
  round(s.X2);
  std::swap(s.X, s.X2);
}

void Dsv4Model::count_routes(const Step& s) {
  const int64_t L = cfg_.n_layers, E = cfg_.n_routed_experts, K = cfg_.n_experts_per_tok, M = s.d.M;
  routes_.resize(size_t(L * M * K));
  be_.download(routes_.data(), s.ex_all, routes_.size() * 4);
  expert_counts_.assign(size_t(L * E), 0);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < M * K; ++i) {
      const int32_t e = routes_[size_t(l * M * K + i)];
      DSV4_CHECK(e >= 0 && e < E, "router output: expert {} out of range at layer {}", e, l);
      ++expert_counts_[size_t(l * E + e)];
    }
}

void Dsv4Model::compressor(int l, bool indexer, Step& s, const Tensor& x) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const CompressorWeights& cw = indexer ? L.idx_compressor : L.compressor;
  const int64_t M = s.d.M, w = int64_t(cw.coff) * cw.d;
  const EntryList& entries = cw.ratio == 4 ? s.e4 : s.e128;
  const bool ref = numerics_ == Numerics::Reference;
  // The step's u/g tensors are sized for the widest compressor; this one uses the first M * w values.
  Tensor u = leading(indexer ? s.iu : s.u, M, w), g = leading(indexer ? s.ig : s.g, M, w);
  be_.linear(x, cw.wkv, u, {});  // fp32 weights and math, as the reference
  be_.linear(x, cw.wgate, g, {});
  const int64_t n = entries.n;
  Tensor pooled = n ? (indexer ? s.ipooled : s.pooled).rows(0, n) : Tensor();
  CompressArgs a;
  a.ratio = cw.ratio;
  a.coff = cw.coff;
  a.d = cw.d;
  a.indexer = indexer;
  a.u = u;
  a.g = g;
  a.ape = cw.ape;
  a.meta = &s.meta;
  a.entries = &entries;
  static const SnapshotList kNone{};
  a.snapshots = cw.ratio == 4 ? &s.snaps : &kNone;
  a.view = s.kv_storage->view(l);
  a.out = pooled;
  be_.compress(a);
  if (n == 0) return;
  // Entry j covers tokens [j*r, (j+1)*r): normalized, then rotated at the window's first position.
  round(pooled);
  be_.rms_norm(pooled, cw.d, cw.norm, float(cfg_.rms_norm_eps), pooled, ref);
  be_.rope(pooled, 1, cw.d, entries.pos, rope_for(l), false, ref);
  if (ref) {
    if (indexer) be_.hadamard_fp4(pooled, cw.d);
    else be_.fp8_roundtrip(pooled, cw.d, cfg_.nope_dim(), 64);
  }
  be_.store_entries(pooled, entries, s.meta, a.view, indexer);
}

void Dsv4Model::window_kv(int l, Step& s, const Tensor& x) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const bool ref = numerics_ == Numerics::Reference;
  const int64_t hd = cfg_.head_dim;
  const KvLayerView view = s.kv_storage->view(l);
  be_.linear(x, L.wkv, s.kv, {ref, ref});
  be_.rms_norm(s.kv, hd, L.kv_norm, float(cfg_.rms_norm_eps), s.kv, ref);
  be_.rope(s.kv, 1, hd, s.meta.pos, rope_for(l), false, ref);
  if (ref) be_.fp8_roundtrip(s.kv, hd, cfg_.nope_dim(), 64);
  // This step's keys go through the cache's storage format like everything cached, so a value read back from
  // the cache (a later step, a prefix-cache hit) is the value this step used.
  if (view.shape.main.dtype != KvDtype::F32) be_.kv_roundtrip(s.kv, view.shape.main);
}

void Dsv4Model::attention(int l, Step& s, const Tensor& x, const Tensor& out) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const bool ref = numerics_ == Numerics::Reference;
  const LinearOpts q8{ref, ref};
  const int64_t H = cfg_.n_heads / tp_, hd = cfg_.head_dim;  // this rank's heads
  const float eps = float(cfg_.rms_norm_eps);
  const Tensor& rope = rope_for(l);
  const KvLayerView view = s.kv_storage->view(l);

  be_.linear(x, L.wq_a, s.qr, q8);
  be_.rms_norm(s.qr, cfg_.q_lora_rank, L.q_norm, eps, s.qr, ref);
  be_.linear(s.qr, L.wq_b, s.q, q8);
  be_.rms_norm(s.q, hd, Tensor(), eps, s.q, ref);  // per head, unweighted
  be_.rope(s.q, H, hd, s.meta.pos, rope, false, ref);
  window_kv(l, s, x);

  // Indexer selection (ratio 4) needs its compressor's keys first, as in the reference. The indexer is
  // replicated on every rank, not split by head: each rank computes the same selection with no collective
  // (a split would all-reduce an M x entries score matrix per layer, which grows with the context).
  if (L.ratio == 4) {
    compressor(l, true, s, x);
    const int64_t IH = cfg_.index_n_heads, ID = cfg_.index_head_dim;
    be_.linear(s.qr, L.idx_wq_b, s.iq, q8);
    be_.rope(s.iq, IH, ID, s.meta.pos, rope, false, ref);
    if (ref) be_.hadamard_fp4(s.iq, ID);
    be_.linear(x, L.idx_weights_proj, s.iw, {false, ref});
    be_.scale(s.iw, float(1.0 / std::sqrt(double(ID)) / std::sqrt(double(IH))));
    IndexTopkArgs ia;
    ia.q = s.iq;
    ia.w = s.iw;
    ia.meta = &s.meta;
    ia.view = view;
    ia.heads = IH;
    ia.dim = ID;
    ia.k = cfg_.index_topk;
    ia.bf16 = ref;
    ia.scratch = s.index_scratch;
    ia.out = s.sel;
    be_.index_topk(ia);
  }
  if (L.ratio) compressor(l, false, s, x);

  AttentionArgs aa;
  aa.q = s.q;
  aa.kv = s.kv;
  aa.sink = L.attn_sink;
  if (L.ratio == 4) aa.selected = s.sel;
  aa.meta = &s.meta;
  aa.view = view;
  aa.H = H;
  aa.scale = float(1.0 / std::sqrt(double(hd)));
  aa.probs_bf16 = ref;
  // q was rounded to bf16 and the keys went through fp8_roundtrip and the cache codec (window_kv, compressor).
  aa.bf16_operands = ref && view.shape.main.dtype != KvDtype::F32;
  aa.block_bidirectional = s.dspark_block;
  aa.out = s.o;
  be_.attention(aa);
  round(s.o);
  // After attention, which reads the ring for positions before this step. A DSpark block's keys are not
  // kept: the stages' rings hold accepted positions only, written by the main model's steps.
  if (!s.dspark_block) be_.window_store(s.kv, s.meta, s.snaps, view);

  // Remove the value's absolute rotation, then the grouped low-rank output projection.
  be_.rope(s.o, H, hd, s.meta.pos, rope, true, ref);
  // bf16 weights in the reference; s.o was rounded to bf16 above in reference numerics.
  be_.linear(s.o, L.wo_a, s.z, {false, ref, cfg_.o_groups / tp_, ref});
  be_.linear(s.z, L.wo_b, out, {ref, ref && !comm_});  // row-parallel: a partial sum per rank
  reduce(out);
}

void Dsv4Model::moe(int l, Step& s, const Tensor& x, const Tensor& out) {
  const LayerWeights& L = w_.layers[size_t(l)];
  const bool ref = numerics_ == Numerics::Reference;
  be_.linear(x, L.gate, s.elog, {});
  RouteArgs ra;
  ra.logits = s.elog;
  ra.k = cfg_.n_experts_per_tok;
  ra.score_func = cfg_.scoring_func == "sqrtsoftplus" ? 0 : cfg_.scoring_func == "sigmoid" ? 1 : 2;
  if (L.hash_routed) ra.tid2eid = L.tid2eid;
  else ra.bias = L.gate_bias;
  ra.tokens = s.tokens;
  ra.normalize = cfg_.norm_topk_prob;
  ra.route_scale = float(cfg_.routed_scaling_factor);
  ra.experts = s.ex;
  ra.weights = s.ew;
  be_.route(ra);
  MoeArgs ma;
  ma.x = x;
  ma.experts = s.ex;
  ma.weights = s.ew;
  ma.routed = &L.experts;
  ma.shared = &L.shared;
  // Expert parallelism: whole experts, this rank's range; otherwise every expert split by width.
  const Placement& pl = w_.placement;
  if (pl.eplb && l < cfg_.n_layers) {
    // EPLB: the experts this rank holds under the current placement; each row to one replica of its expert.
    DSV4_CHECK(eplb_, "moe: weights placed for EPLB but no placement set (Dsv4Model::set_eplb)");
    ma.routed = &eplb_->experts->layers[size_t(l)];
    ma.share = &eplb_->shares[size_t(l)];
    ma.inter = cfg_.moe_inter_dim;
  } else if (pl.expert_parallel && tp_ > 1) {
    const int64_t per = cfg_.n_routed_experts / tp_;
    ma.expert_begin = pl.rank * per;
    ma.expert_end = ma.expert_begin + per;
    ma.inter = cfg_.moe_inter_dim;
  } else {
    ma.inter = cfg_.moe_inter_dim / tp_;
  }
  ma.shared_inter = cfg_.moe_inter_dim / tp_;
  ma.swiglu_limit = float(cfg_.swiglu_limit);
  ma.lin = {ref, ref};
  ma.round_hidden = ref;
  ma.round_out = ref && !comm_;
  ma.scratch = s.moe_scratch;
  ma.out = out;
  be_.moe(ma);
  reduce(out);
}

}  // namespace dsv4
