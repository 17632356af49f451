#include "runtime/model_runner.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "kernels/timing_backend.h"
#include "dist/watchdog.h"
#include "runtime/rank_identity.h"

namespace dsv4 {

ModelRunner::ModelRunner(RunnerOptions o) : opts_(std::move(o)) {
  cfg_ = ModelConfig::load((std::filesystem::path(opts_.model_dir) / "config.json").string());
  const int pp = opts_.pipeline.size, world = opts_.dist.active() ? opts_.dist.world_size : 1;
  if (pp < 1 || world % pp)
    fail("--pipeline-parallel-size {} does not divide the {} ranks", pp, world);
  tp_size_ = world / pp;
  // A bad layout is refused before the group forms (the other ranks get rank 0's spec at the rendezvous).
  if (world == 1 || opts_.dist.rank == 0) pipeline_stages(cfg_, pp, opts_.pipeline.layers);
  if (opts_.dist.active()) {
    opts_.dist.group_size = tp_size_;
    // Before anything slow: every rank must agree on dsv4, the model and (from rank 0) the options.
    std::string payload = opts_.dist.rank == 0 ? options_json(opts_) : std::string();
    auto identity = rank_identity(opts_.model_dir, opts_.load_format);
    identity.push_back({"pipeline-parallel size", std::to_string(pp)});
    control_ = dist::join(opts_.dist, identity, payload);
    if (opts_.dist.rank != 0) apply_options_json(payload, opts_);
  }
  if (opts_.n_slots < 1) fail("the runner needs at least one sequence slot");
  if (pp > 1) {
    // Rank 0 schedules with its own stage's KV layout; what addresses bytes of the others' layers is not here yet.
    if (opts_.prefix_tails)
      fail("prefix caching with pipeline parallelism is not supported yet (each stage's KV arena has its own "
           "layout): add --no-enable-prefix-caching");
    if (opts_.drafter != Drafter::None)  // every rank refuses: each has rank 0's options by now
      fail("speculative decoding with pipeline parallelism is not supported yet (the drafter needs the first "
           "stage's embedding and the last stage's head): drop --speculative-config or --pipeline-parallel-size");
    if (opts_.eplb.enabled)
      fail("--enable-eplb with pipeline parallelism is not supported yet (each stage routes its own layers)");
    if (opts_.expert_load_window > 0) {
      spdlog::warn("expert load statistics are not collected with pipeline parallelism yet (each stage routes its "
                   "own layers)");
      opts_.expert_load_window = 0;
    }
  }
  const std::vector<StageLayers> stages = pipeline_stages(cfg_, pp, opts_.pipeline.layers);
  const int rank = control_ ? control_->rank() : 0;
  stage_.index = rank / tp_size_;
  stage_.count = pp;
  stage_.layers = stages[size_t(stage_.index)];
  micro_batches_ = opts_.pipeline.micro_batches > 0 ? opts_.pipeline.micro_batches : pp;
  be_ = opts_.backend_factory ? opts_.backend_factory() : make_backend(opts_.device, opts_.local_rank);
  if (opts_.profile_ops) be_ = std::make_unique<TimingBackend>(std::move(be_));
  if (opts_.eplb.enabled) {
    if (be_->name() != "cpu")  // the CUDA MoE has neither expert parallelism nor replica shares yet
      fail("--enable-eplb is not implemented on the {} backend yet (CPU only)", be_->name());
    if (!opts_.expert_parallel || tp_size_ < 2) fail("--enable-eplb needs --enable-expert-parallel over 2 or more ranks");
    if (opts_.load_format != "auto")
      fail("--enable-eplb places expert replicas from the checkpoint: it needs --load-format auto");
    if (rank == 0 && opts_.expert_load_window < 1)
      fail("--enable-eplb rebalances from the expert load statistics: --expert-load-window must be > 0");
  }
  Placement placement;
  placement.first_layer = stage_.layers.begin;
  placement.end_layer = stage_.layers.end;
  if (control_) {
    if (dist::ControlGroup* tg = control_->tensor_group()) {
      comm_ = dist::make_communicator(*tg, *be_);
      placement.rank = tg->rank(), placement.size = tg->size(), placement.expert_parallel = opts_.expert_parallel;
      placement.eplb = opts_.eplb.enabled;
      // Device collectives have no timeout of their own.
      if (comm_->name() == "nccl") watchdog_ = std::make_unique<dist::Watchdog>(*comm_, opts_.dist.timeout);
    }
    if (pp > 1) {
      p2p_ = dist::make_communicator(*control_, *be_);
      if (p2p_->name() == "nccl" && micro_batches_ > 1)
        fail("pipeline parallelism on CUDA runs one micro-batch per step for now (--pipeline-micro-batches 1): "
             "rank 0's stream-ordered receive of the logits would wait behind its own stage's later micro-batches");
      stage_.p2p = p2p_.get();
      if (!stage_.first()) stage_.prev = rank - tp_size_;
      if (!stage_.last()) stage_.next = rank + tp_size_;
    }
  }
  const auto t_load = std::chrono::steady_clock::now();
  const bool mtp = opts_.drafter == Drafter::Mtp, dspark = opts_.drafter == Drafter::DSpark;
  DSV4_CHECK(opts_.drafter == Drafter::None || opts_.draft_tokens > 0, "a drafter with no draft tokens");
  if (opts_.load_format == "dummy")
    weights_ = ModelWeights::load_dummy(cfg_, *be_, 1, placement, opts_.progress, opts_.drafter);
  else if (opts_.load_format == "auto")
    weights_ = ModelWeights::load(cfg_, opts_.model_dir, *be_, placement, opts_.progress, opts_.drafter);
  else fail("unknown --load-format '{}' (auto or dummy)", opts_.load_format);
  model_ = std::make_unique<Dsv4Model>(cfg_, *weights_, *be_, opts_.numerics, comm_.get());
  model_->set_pipeline(stage_);
  if (opts_.eplb.enabled) eplb_start();
  if (opts_.expert_load_window > 0 && (!control_ || control_->rank() == 0)) {
    model_->set_count_experts(true);  // before the workspace is sized: it keeps every layer's router output
    expert_load_ = std::make_unique<ExpertLoad>(cfg_.n_layers, cfg_.n_routed_experts, opts_.expert_load_window);
  }
  be_->synchronize();
  load_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  mem_.weights = weights_->placed_bytes;

  const KvLayout layout =
      KvLayout::make(cfg_, opts_.block_tokens, opts_.kv_dtype, opts_.prefix_tails,
                     {mtp, dspark ? cfg_.n_dspark_stages : 0, opts_.draft_tokens}, stage_.layers.begin,
                     stage_.layers.end);
  const uint64_t slots = uint64_t(layout.slot_bytes()) * uint64_t(opts_.n_slots);
  const int64_t bt = layout.block_tokens();
  if (opts_.max_model_len > cfg_.max_position_embeddings)
    fail("--max-model-len {} exceeds the model's max_position_embeddings {}", opts_.max_model_len,
         cfg_.max_position_embeddings);
  StepLimits lim = opts_.limits;
  lim.max_items = std::max<int64_t>(lim.max_items, 1);
  // Sized for the longest sequence the KV may hold (a default of 128K when neither the budget nor
  // --max-model-len bounds it): the block tables grow with it, and the indexer's scores on a backend that does not
  // score in tiles.
  int64_t ctx = opts_.max_model_len;
  int64_t blocks = 0;
  if (opts_.kv_cache_memory) {
    if (opts_.kv_cache_memory <= slots)
      fail("--kv-cache-memory {} bytes cannot even hold the fixed state of {} sequences ({} bytes each)",
           opts_.kv_cache_memory, opts_.n_slots, layout.slot_bytes());
    blocks = int64_t((opts_.kv_cache_memory - slots) / uint64_t(layout.block_bytes()));
    if (blocks < 1) fail("--kv-cache-memory is too small for one KV block ({} bytes)", layout.block_bytes());
    if (!ctx) ctx = std::min<int64_t>(cfg_.max_position_embeddings, blocks * bt);
  }
  if (!ctx) ctx = std::min<int64_t>(cfg_.max_position_embeddings, 131072);
  lim.max_context = ctx;
  if (dspark) model_->enable_dspark(lim);  // before sizing: its main steps carve more
  const uint64_t ws_bytes = model_->workspace_bytes(lim, int(bt));
  ws_ = std::make_unique<Workspace>(*be_, ws_bytes);
  if (mtp) model_->enable_mtp(lim);
  mem_.workspace = ws_bytes;
  mem_.index_scratch = model_->index_scratch_bytes(lim);
  mem_.host_scratch = be_->host_scratch_bytes(layout.shape, ctx, lim.max_rows, cfg_.index_topk);
  if (!blocks) {
    const MemoryInfo mi = be_->memory_info();
    const double reserve = double(mi.total) * (1.0 - opts_.memory_utilization);
    const double avail = double(mi.free) - reserve;
    const int64_t per_seq = (ctx + bt - 1) / bt;
    const int64_t cap = 2 * per_seq * opts_.n_slots;
    if (avail <= double(slots + uint64_t(layout.block_bytes())))
      fail("not enough {} memory for the KV cache: {:.2f} GB free after weights and workspace, {:.0f}% usable; "
           "lower --max-num-seqs or --max-model-len, or set --kv-cache-memory", be_->name(), double(mi.free) / 1e9,
           opts_.memory_utilization * 100);
    blocks = std::min<int64_t>(cap, int64_t((avail - double(slots)) / double(layout.block_bytes())));
  }
  if (control_) {
    // Rank 0 schedules blocks for every rank: the smallest budget holds everywhere. Ranks finish loading at
    // different times, hence the long wait here.
    control_->barrier(opts_.dist.load_timeout);
    blocks = control_->all_reduce_min(blocks);
  }
  const int64_t cap_tokens = blocks * bt;
  mem_.max_model_len = opts_.max_model_len ? opts_.max_model_len : std::min<int64_t>(ctx, cap_tokens);
  if (mem_.max_model_len > cap_tokens)
    fail("--max-model-len {} does not fit in the KV cache ({} tokens with {} bytes); lower it or give the cache "
         "more memory", mem_.max_model_len, cap_tokens, uint64_t(blocks) * uint64_t(layout.block_bytes()) + slots);
  kv_ = std::make_unique<KvStorage>(*be_, layout.sized(blocks, opts_.n_slots));
  mem_.kv = kv_->bytes();
  mem_.kv_slots = slots;
  mem_.kv_blocks = blocks;
  // Arena copies of one step: at most every slot resumes once.
  int64_t max_copies = 0;
  for (auto& L : layout.layers) max_copies += cfg_.window + (L.ratio == 4 ? 8 : 0);
  // Speculative saves: per draft position and layer at most 5 ranges, plus one block end's (tail, 8 records).
  if (opts_.draft_tokens)
    max_copies += int64_t(layout.layers.size()) * (5 * (opts_.draft_tokens + 1) + cfg_.window + 8);
  max_copies = std::max<int64_t>(max_copies * opts_.n_slots, 1);
  copy_buf_ = be_->alloc(size_t(max_copies * 24), BufferUsage::Io);
  copy_list_ = Tensor(copy_buf_.get(), 0, DType::I64, {max_copies, 3});
  mem_.copy_list = uint64_t(max_copies) * 24;
  StepLimits far = lim, farther = lim;
  far.max_context = int64_t(1) << 24, farther.max_context = int64_t(1) << 30;
  const bool index_scratch_bounded = model_->index_scratch_bytes(far) == model_->index_scratch_bytes(farther);
  mem_.kv_per_seq = uint64_t((mem_.max_model_len + bt - 1) / bt) * uint64_t(layout.block_bytes()) +
                    uint64_t(layout.slot_bytes());
  spdlog::info("memory ({}): weights {:.3f} GB, workspace {:.3f} GB, KV {:.3f} GB = {} blocks x {} tokens ({} B/block, "
               "{}{}) + {} slots x {} B; max model length {}",
               be_->name(), double(mem_.weights) / 1e9, double(mem_.workspace) / 1e9, double(mem_.kv) / 1e9, blocks,
               bt, layout.block_bytes(), kv_dtype_name(opts_.kv_dtype), opts_.prefix_tails ? ", prefix caching" : "",
               opts_.n_slots, layout.slot_bytes(), mem_.max_model_len);
  if (pp > 1) {
    // tensors: this stage's weight tensors (placed: with the imported checkpoint mappings, which are shared).
    spdlog::info("pipeline stage {} of {} (rank {}, layers {}-{}{}{}): tensors {} B, weights placed {} B, KV {} B "
                 "({} B/block, {} B/slot)",
                 stage_.index, pp, rank, stage_.layers.begin, stage_.layers.end - 1,
                 stage_.first() ? ", embedding" : "", stage_.last() ? ", head" : "", weights_->tensor_bytes,
                 mem_.weights, mem_.kv, layout.block_bytes(), layout.slot_bytes());
    // Rank 0 receives the last stage's logits of a whole step here ([tp, rows, vocab / tp] per micro-batch).
    if (rank == 0)
      pipe_logits_buf_ =
          be_->alloc(size_t(std::max<int64_t>(lim.max_logit_rows, 1) * cfg_.vocab_size * 4), BufferUsage::Io);
  }
  spdlog::info("memory plan: KV {:.1f} B/token, {:.3f} GB per {}-token sequence; workspace for {} tokens per step, of "
               "it indexer scores {:.1f} MB ({}); per-call host scratch {:.1f} MB; total {:.3f} GB",
               double(layout.block_bytes()) / double(bt), double(mem_.kv_per_seq) / 1e9, mem_.max_model_len,
               lim.max_rows, double(mem_.index_scratch) / 1e6,
               index_scratch_bounded ? "bounded by the step" : "grows with the context on this backend",
               double(mem_.host_scratch) / 1e6, double(mem_.total()) / 1e9);
}

ModelRunner::~ModelRunner() {
  if (eplb_next_.valid()) eplb_next_.wait();  // a placement being prepared reads the weights
  if (comm_ && steps_)
    spdlog::info("tensor-parallel rank {}: {} collectives, {} bytes over {} forward passes ({} and {} bytes per pass)",
                 comm_->rank(), comm_->calls(), comm_->bytes(), steps_, comm_->calls() / steps_, comm_->bytes() / steps_);
  if (p2p_ && steps_)
    spdlog::info("pipeline stage {}: {} point-to-point transfers, {} bytes sent over {} steps", stage_.index,
                 p2p_->calls(), p2p_->bytes(), steps_);
  if (control_ && control_->rank() == 0 && !failed_) {
    try {
      send(kStop, {});
    } catch (const std::exception& e) {
      spdlog::warn("tensor-parallel group: could not tell the other ranks to stop: {}", e.what());
    }
  }
}

void ModelRunner::send(char kind, const std::string& body) {
  std::string msg(1, kind);
  msg += body;
  guard_group([&] { control_->broadcast(msg, 0, opts_.dist.timeout); });
}

void ModelRunner::guard_group(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const dist::PeerError&) {
    failed_ = true;
    if (comm_) comm_->abort();  // NCCL: unblock kernels waiting on the lost peer
    throw;
  }
}

StepResult ModelRunner::execute(const StepPlan& plan) {
  if (control_) {
    DSV4_CHECK(control_->rank() == 0, "execute: only rank 0 schedules; the other ranks run serve_worker()");
    if (plan.batch.items.empty() && plan.copies.empty()) return execute_local(plan);  // nothing to send
    if (failed_) throw dist::PeerError("the tensor-parallel group failed earlier; it cannot compute again");
    if (eplb_cur_) eplb_before_step();
    send(kPlan, plan.serialize());
    StepResult r;
    guard_group([&] { r = execute_local(plan); });
    if (eplb_cur_ && !plan.batch.items.empty() && !plan.batch.mtp && plan.batch.dspark == DSparkPass::None)
      eplb_after_step();
    return r;
  }
  return execute_local(plan);
}

void ModelRunner::heartbeat() {
  if (!control_) return;
  if (failed_) throw dist::PeerError("the tensor-parallel group failed earlier");
  send(kHeartbeat, {});
  guard_group([&] { control_->barrier(opts_.dist.timeout); });
}

void ModelRunner::serve_worker() {
  DSV4_CHECK(control_ && control_->rank() != 0, "serve_worker: only for ranks > 0 of a group");
  // Rank 0 sends a heartbeat at least every timeout / 3 while idle, so a silent timeout means it is gone.
  while (true) {
    std::string msg;
    control_->broadcast(msg, 0, opts_.dist.timeout);
    DSV4_CHECK(!msg.empty(), "tensor-parallel group: empty message from rank 0");
    if (msg[0] == kStop) return;
    if (msg[0] == kHeartbeat) {
      control_->barrier(opts_.dist.timeout);
      continue;
    }
    if (msg[0] == kEplbPlacement) {
      eplb_prepare(EplbPlacement::deserialize(msg.substr(1)));
      continue;
    }
    if (msg[0] == kEplbSwitch) {
      eplb_switch(std::stoull(msg.substr(1)));
      continue;
    }
    DSV4_CHECK(msg[0] == kPlan, "tensor-parallel group: unknown message kind {} from rank 0", int(msg[0]));
    execute_local(StepPlan::deserialize(msg.substr(1)));
  }
}

StepResult ModelRunner::execute_local(const StepPlan& plan) {
  StepResult r;
  r.step = plan.step;
  r.vocab = cfg_.vocab_size;
  if (!plan.copies.empty()) {
    DSV4_CHECK(int64_t(plan.copies.size()) <= copy_list_.rows(), "step plan: {} arena copies (at most {})",
               plan.copies.size(), copy_list_.rows());
    const int64_t arena = int64_t(kv_->bytes());
    for (const ArenaCopy& c : plan.copies)
      DSV4_CHECK(c.src >= 0 && c.dst >= 0 && c.bytes >= 0 && c.src + c.bytes <= arena && c.dst + c.bytes <= arena,
                 "step plan: arena copy outside the KV arena");
    be_->upload(copy_list_, plan.copies.data(), plan.copies.size() * sizeof(ArenaCopy));
    be_->arena_copy(kv_->arena(), copy_list_, int64_t(plan.copies.size()));
  }
  if (plan.batch.items.empty()) return r;
  DSV4_CHECK(!p2p_ || plan.copies.empty(), "step plan: arena copies under pipeline parallelism");
  const StepLimits& lim = opts_.limits;
  DSV4_CHECK(plan.batch.rows() <= lim.max_rows && plan.batch.logit_rows() <= lim.max_logit_rows &&
                 int64_t(plan.batch.items.size()) <= lim.max_items,
             "step plan: {} tokens / {} logit rows / {} sequences exceed the step limits ({} / {} / {})",
             plan.batch.rows(), plan.batch.logit_rows(), plan.batch.items.size(), lim.max_rows, lim.max_logit_rows,
             lim.max_items);
  if (p2p_) {
    auto run = [&] { execute_pipeline(plan, r); };
    if (watchdog_) watchdog_->run("a pipelined forward pass", run);
    else run();
    ++steps_;
    return r;
  }
  Tensor logits;
  auto forward = [&] {
    logits = model_->forward(plan.batch, *kv_, *ws_, &r.stats);
    if (control_) be_->synchronize();  // errors (and a lost peer) surface in this step, not the next
  };
  if (watchdog_) watchdog_->run("a forward pass", forward);
  else forward();
  ++steps_;
  if (expert_load_ && !plan.batch.mtp && plan.batch.dspark == DSparkPass::None)
    expert_load_->add(model_->expert_counts());  // drafter passes: not the model's routing
  if (control_ && control_->rank() != 0) return r;
  if (!logits.valid()) return r;
  append_logits(logits, r);
  return r;
}

void ModelRunner::append_logits(const Tensor& logits, StepResult& r) {
  if (logits.ndim == 2) {
    const int64_t R = logits.rows();
    r.logits.resize(size_t((r.rows + R) * r.vocab));
    be_->download(r.logits.data() + r.rows * r.vocab, logits, size_t(R * r.vocab) * 4);
    r.rows += R;
    return;
  }
  // [ranks, rows, vocab / ranks] -> [rows, vocab]: rank k's columns are the k-th vocabulary slice.
  const int64_t N = logits.dim(0), R = logits.dim(1), Vl = logits.dim(2);
  std::vector<float> parts(size_t(N * R * Vl));
  be_->download(parts.data(), logits, parts.size() * 4);
  float* out = (r.logits.resize(size_t((r.rows + R) * r.vocab)), r.logits.data() + r.rows * r.vocab);
  for (int64_t k = 0; k < N; ++k)
    for (int64_t row = 0; row < R; ++row)
      std::copy_n(parts.data() + (k * R + row) * Vl, Vl, out + row * r.vocab + k * Vl);
  r.rows += R;
}

void ModelRunner::execute_pipeline(const StepPlan& plan, StepResult& r) {
  // Every stage runs the micro-batches in order: stage k works on micro-batch j while stage k + 1 works on
  // j - 1 (each forward receives its streams from the stage before and sends its own on). The last stage's
  // tensor-parallel rank 0 sends each micro-batch's logits to rank 0, which posts every receive before its own
  // stage starts, so the last stage never waits for rank 0 to finish its part of the step.
  const std::vector<StepBatch> micro = split_micro_batches(plan.batch, micro_batches_);
  const int rank = control_->rank(), source = (stage_.count - 1) * tp_size_;
  const int64_t Vl = cfg_.vocab_size / tp_size_;
  std::vector<Tensor> landing(micro.size());
  std::vector<std::unique_ptr<dist::Communicator::Pending>> pending(micro.size());
  if (rank == 0) {
    int64_t off = 0;
    for (size_t j = 0; j < micro.size(); ++j) {
      const int64_t R = micro[j].logit_rows();
      if (!R) continue;
      landing[j] = tp_size_ > 1 ? Tensor(pipe_logits_buf_.get(), size_t(off), DType::F32, {tp_size_, R, Vl})
                                : Tensor(pipe_logits_buf_.get(), size_t(off), DType::F32, {R, cfg_.vocab_size});
      off += R * cfg_.vocab_size * 4;
      pending[j] = p2p_->irecv(landing[j], source);
    }
  }
  for (size_t j = 0; j < micro.size(); ++j) {
    ForwardStats st;
    const Tensor logits = model_->forward(micro[j], *kv_, *ws_, &st);
    be_->synchronize();  // errors (and a lost peer) surface in this step, not the next
    r.stats.ops_total += st.ops_total;
    r.stats.host_seconds += st.host_seconds;
    if (rank == source && rank != 0 && logits.valid()) p2p_->send(logits, 0);
  }
  if (rank != 0) return;
  for (size_t j = 0; j < micro.size(); ++j)
    if (pending[j]) {
      pending[j]->wait();
      append_logits(landing[j], r);
    }
}

}  // namespace dsv4
