#include "runtime/session.h"

#include <filesystem>

#include "core/error.h"

namespace dsv4 {

Session::Session(SessionOptions o) : opts_(std::move(o)) {
  if (opts_.n_sequences < 1) fail("a session needs at least one sequence");
  const ModelConfig cfg = ModelConfig::load((std::filesystem::path(opts_.model_dir) / "config.json").string());
  RunnerOptions ro;
  ro.model_dir = opts_.model_dir;
  ro.device = opts_.device;
  ro.backend_factory = opts_.backend_factory;
  ro.dist = opts_.dist;
  ro.expert_parallel = opts_.expert_parallel;
  ro.eplb = opts_.eplb;
  ro.pipeline = opts_.pipeline;
  ro.expert_load_window = opts_.expert_load_window;
  ro.numerics = opts_.numerics;
  ro.kv_dtype = opts_.kv_dtype == "auto" ? default_kv_dtype(opts_.numerics) : parse_kv_dtype(opts_.kv_dtype);
  ro.block_tokens = opts_.block_tokens;
  ro.prefix_tails = opts_.prefix_tails;
  ro.n_slots = opts_.n_sequences;
  ro.limits.max_rows = opts_.max_step_tokens;
  ro.limits.max_items = opts_.n_sequences;
  ro.limits.max_logit_rows = opts_.max_step_tokens;
  ro.max_model_len = std::min<int64_t>(opts_.max_tokens, cfg.max_position_embeddings);
  const KvLayout L = KvLayout::make(cfg, opts_.block_tokens, ro.kv_dtype, opts_.prefix_tails);
  const int64_t blocks = SequenceKv::blocks_for(opts_.max_tokens, opts_.block_tokens) * opts_.n_sequences;
  ro.kv_cache_memory = uint64_t(blocks) * uint64_t(L.block_bytes()) + uint64_t(L.slot_bytes()) * uint64_t(opts_.n_sequences);
  runner_ = std::make_unique<ModelRunner>(ro);
  pool_ = std::make_unique<BlockPool>(runner_->memory().kv_blocks);
  slots_ = std::make_unique<SlotPool>(opts_.n_sequences);
  seqs_.resize(size_t(opts_.n_sequences));
  live_.assign(size_t(opts_.n_sequences), false);
}

Session::~Session() = default;

int Session::new_sequence() {
  for (size_t i = 0; i < seqs_.size(); ++i)
    if (!live_[i]) {
      live_[i] = true;
      seqs_[i] = SequenceKv{};
      seqs_[i].slot = slots_->allocate();
      return int(i);
    }
  fail("session: all {} sequences are in use", seqs_.size());
}

void Session::release(int seq) {
  DSV4_CHECK(live_.at(size_t(seq)), "session: sequence {} is not live", seq);
  seqs_[size_t(seq)].release(*pool_, *slots_);
  live_[size_t(seq)] = false;
}

void Session::resume_from(int dst, int src, int64_t n_blocks) {
  SequenceKv& d = seqs_.at(size_t(dst));
  const SequenceKv& s = seqs_.at(size_t(src));
  DSV4_CHECK(d.pos == 0 && d.blocks.empty(), "session: resume_from needs a new sequence");
  DSV4_CHECK(n_blocks > 0 && n_blocks * opts_.block_tokens <= s.pos, "session: sequence {} has no {} full blocks", src,
             n_blocks);
  for (int64_t b = 0; b < n_blocks; ++b) {
    pool_->retain(s.blocks[size_t(b)]);
    d.blocks.push_back(s.blocks[size_t(b)]);
  }
  d.pos = n_blocks * opts_.block_tokens;
  append_resume_copies(runner_->kv_layout(), d.slot, d.blocks.back(), d.pos, pending_copies_);
}

void Session::forward(std::span<const Chunk> chunks, std::vector<float>& logits, ForwardStats* stats) {
  StepPlan plan;
  plan.step = ++step_;
  plan.copies = std::move(pending_copies_);
  pending_copies_.clear();
  for (const Chunk& c : chunks) {
    DSV4_CHECK(live_.at(size_t(c.seq)), "session: sequence {} is not live", c.seq);
    SequenceKv& s = seqs_[size_t(c.seq)];
    if (!s.ensure(*pool_, s.pos + int64_t(c.tokens.size()), opts_.block_tokens))
      fail("KV cache is full: no free block for {} more tokens", c.tokens.size());
    StepItem it;
    it.slot = s.slot;
    it.start = s.pos;
    it.tokens.assign(c.tokens.begin(), c.tokens.end());
    it.blocks = s.blocks;
    it.logits = c.logits;
    plan.batch.items.push_back(std::move(it));
  }
  StepResult r = runner_->execute(plan);
  for (const Chunk& c : chunks) seqs_[size_t(c.seq)].pos += int64_t(c.tokens.size());
  logits.insert(logits.end(), r.logits.begin(), r.logits.end());
  if (stats) *stats = r.stats;
}

}  // namespace dsv4
