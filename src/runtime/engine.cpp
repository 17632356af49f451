#include "runtime/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <thread>

#include "core/error.h"
#include "runtime/dspark_drafting.h"
#include "runtime/kv_block_manager.h"
#include "runtime/kv_offload.h"
#include "runtime/latency_budget.h"
#include "runtime/prefix_cache.h"
#include "runtime/request_text.h"
#include "runtime/speculative.h"
#include "runtime/stop_matcher.h"

namespace dsv4 {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::None: return "";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    case FinishReason::Error: return "error";
  }
  return "";
}

namespace {

struct Request {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t prompt_len = 0;
  SamplingParams params;
  SequenceKv kv;                       // slot -1 while waiting (or after preemption)
  std::vector<ArenaCopy> resume;       // prefix-cache hit: copies the next plan must carry
  std::unique_ptr<SamplerState> sampler;
  std::unique_ptr<RequestText> text;  // when the engine has a tokenizer
  int64_t cached_tokens = 0;
  int64_t registered_blocks = 0;  // full blocks already offered to the prefix cache
  // Disk tier: a read in flight (the request waits in `restoring`), the blocks it pins meanwhile, whether the
  // disk was already asked for this admission.
  std::shared_ptr<KvDiskRead> restore;
  int64_t restore_first = 0;
  std::vector<int32_t> pins;
  bool disk_probed = false;
  RequestOutput pending;          // accumulates this step's output
  bool has_output = false;
  // Speculative decoding: drafts for the next step, what its verify may overwrite, the drafter's own RNG
  // (independent of the sampler's, which verification draws from).
  std::vector<Draft> drafts;
  std::vector<SpecSave> saves;
  SamplerRng draft_rng{0};

  bool has_seq() const { return kv.slot >= 0; }
  int64_t computed() const { return kv.pos; }
  int64_t generated() const { return int64_t(tokens.size()) - prompt_len; }
};

}  // namespace

struct Engine::Impl {
  EngineConfig cfg;
  const Tokenizer* tok = nullptr;
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<BlockPool> pool;
  std::unique_ptr<SlotPool> slots;
  std::unique_ptr<PrefixCache> prefix;
  std::unique_ptr<KvOffload> offload;
  std::deque<std::unique_ptr<Request>> restoring;  // waiting for their blocks from disk
  int block_tokens = 256;
  int64_t max_len = 0;
  int vocab = 0;
  int32_t eos = 1;
  uint64_t seq_fixed_bytes = 0, block_bytes = 0;
  uint64_t next_id = 1, next_step = 1;
  std::deque<std::unique_ptr<Request>> waiting;
  std::vector<std::unique_ptr<Request>> running;  // in admission order
  std::vector<RequestOutput> finished_outside_step;  // aborts of waiting requests, admission errors
  struct Scheduled {
    Request* r;
    int64_t n;
    bool sample;
    int drafts = 0;    // verify step: the item is [last token, drafts...] with logits on every row
    int64_t start = 0, row0 = 0;  // the item's first position and its first row in the batch
  };
  SpeculativeConfig spec;
  int n_main_layers = 0;
  std::vector<Scheduled> scheduled;  // the plan in flight
  EngineStats st;
  PrefillLatencyBudget latency{0};
  int64_t step_prefill = 0;  // prefill tokens of the plan in flight
  std::chrono::steady_clock::time_point step_start;

  uint64_t used_bytes() const {
    return uint64_t(pool->used()) * block_bytes + uint64_t(running.size()) * seq_fixed_bytes;
  }

  void drop_seq(Request& r) {
    r.drafts.clear();
    r.saves.clear();
    r.kv.release(*pool, *slots);
    r.resume.clear();
    r.registered_blocks = 0;
    unpin(r);
    r.restore.reset();
    r.disk_probed = false;
  }

  void unpin(Request& r) {
    for (int32_t b : r.pins) pool->release(b);
    r.pins.clear();
  }

  // Before admission: the blocks after the memory hit that are on disk start loading; the request waits in
  // `restoring` (the memory hit pinned) while the others go on. False when the disk has nothing to add.
  bool begin_restore(Request& r) {
    if (!offload || r.disk_probed) return false;
    r.disk_probed = true;
    const int64_t max_blocks = (int64_t(r.tokens.size()) - 1) / block_tokens;
    auto hit = prefix->lookup(r.tokens, max_blocks);
    if (int64_t(hit.size()) == max_blocks) return false;
    r.restore = offload->probe(r.tokens, int64_t(hit.size()), max_blocks);
    if (!r.restore) return false;
    for (int32_t b : hit) pool->retain(b);
    r.pins = hit;
    r.restore_first = int64_t(hit.size());
    return true;
  }

  // Finished reads go into the arena and the prefix cache; their requests rejoin the queue's front in order.
  // With nothing else to run, waits a little for the oldest read instead of spinning (at most 5 ms a step, so
  // the engine loop still takes submits and aborts while a long restore reads).
  void poll_restores() {
    if (restoring.empty()) return;
    if (running.empty() && waiting.empty())
      for (int i = 0; i < 25 && !restoring.front()->restore->done(); ++i)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    std::vector<std::unique_ptr<Request>> ready;
    for (auto it = restoring.begin(); it != restoring.end();) {
      Request& r = **it;
      if (!r.restore->done()) {
        ++it;
        continue;
      }
      auto ids = offload->install(*r.restore, r.tokens, r.restore_first);
      if (!ids.empty() && ids.size() == r.restore->blocks.size())  // else the run has no snapshot: unused
        st.prefix_disk_hits += uint64_t(ids.size()) * uint64_t(block_tokens);
      r.pins.insert(r.pins.end(), ids.begin(), ids.end());
      r.restore.reset();
      ready.push_back(std::move(*it));
      it = restoring.erase(it);
    }
    for (auto it = ready.rbegin(); it != ready.rend(); ++it) waiting.push_front(std::move(*it));
  }

  // Makes room for `tokens` positions of r's sequence: evicts unreferenced cached blocks, then preempts the
  // most recently admitted running requests. False when r itself is the one to give way.
  bool reserve(Request& r, int64_t tokens) {
    while (!r.kv.ensure(*pool, tokens, block_tokens)) {
      int64_t need = SequenceKv::blocks_for(tokens, block_tokens) - int64_t(r.kv.blocks.size()) - pool->free_blocks();
      if (prefix && prefix->evict(need) > 0) continue;
      Request* victim = running.back().get();
      if (victim == &r) return false;
      preempt(*victim);
    }
    return true;
  }

  // Preemption by recompute: drop the KV, keep the tokens; the request re-prefills prompt + output later.
  void preempt(Request& r) {
    drop_seq(r);
    ++st.preemptions;
    for (auto it = running.begin(); it != running.end(); ++it)
      if (it->get() == &r) {
        waiting.push_front(std::move(*it));
        running.erase(it);
        break;
      }
    spdlog::debug("preempted request {} ({} tokens to recompute)", r.id, r.tokens.size());
  }

  // A sequence slot, and the longest cached prefix (keeping at least one token to compute: its logits give
  // the next token).
  bool start_seq(Request& r) {
    r.kv.slot = slots->allocate();
    if (r.kv.slot < 0) return false;
    if (!prefix) return true;
    const int64_t max_blocks = (int64_t(r.tokens.size()) - 1) / block_tokens;
    auto hit = prefix->lookup(r.tokens, max_blocks);
    st.prefix_queries += uint64_t(r.tokens.size());
    if (hit.empty()) {
      unpin(r);
      return true;
    }
    for (int32_t b : hit) pool->retain(b);
    r.kv.blocks = hit;
    r.kv.pos = int64_t(hit.size()) * block_tokens;
    append_resume_copies(runner->kv_layout(), r.kv.slot, hit.back(), r.kv.pos, r.resume);
    r.registered_blocks = int64_t(hit.size());
    unpin(r);  // the sequence holds them now
    st.prefix_hits += uint64_t(r.kv.pos);
    if (r.generated() == 0) r.cached_tokens = r.kv.pos;
    return true;
  }

  void offer_full_blocks(Request& r) {
    if (!prefix) return;
    const int64_t full = r.computed() / block_tokens;
    if (r.registered_blocks >= full) return;
    uint64_t h = offload ? prefix->hash_upto(r.tokens, r.registered_blocks) : 0;
    for (int64_t k = r.registered_blocks; k < full; ++k) {
      const bool added = prefix->insert(r.tokens, k, r.kv.blocks[size_t(k)]);
      if (!offload) continue;
      const uint64_t parent = h;
      h = PrefixCache::chain_hash(parent, std::span<const int32_t>(r.tokens).subspan(size_t(k * block_tokens),
                                                                                   size_t(block_tokens)));
      if (added) offload->save(r.tokens, k, parent, h, r.kv.blocks[size_t(k)]);
    }
    r.registered_blocks = std::max(r.registered_blocks, full);
  }

  void finish(Request& r, FinishReason why, std::string reason = {}) {
    r.pending.finish = why;
    r.pending.stop_reason = std::move(reason);
    r.has_output = true;
  }

  // One generated token into the request's output, with its stop conditions; true when it finished.
  bool emit(Request& r, const SampleResult& sr) {
    const int32_t tok = sr.token;
    r.tokens.push_back(tok);
    ++st.generation_tokens;
    r.pending.new_tokens.push_back(tok);
    if (sr.has_logprobs) r.pending.logprobs.push_back(sr);
    r.has_output = true;
    TokenStop ts = check_token_stop(r.params, tok, r.generated(), std::span<const int32_t>(&eos, 1));
    if (ts == TokenStop::None && int64_t(r.tokens.size()) >= max_len) ts = TokenStop::Length;
    const bool stop_token = ts == TokenStop::Eos || ts == TokenStop::StopToken;
    if (r.text) {
      r.pending.text += r.text->add(tok, stop_token);
      if (r.text->stopped()) {
        finish(r, FinishReason::Stop, r.text->stop_string());
        return true;
      }
      if (ts != TokenStop::None) r.pending.text += r.text->finish();
    }
    if (ts != TokenStop::None)
      finish(r, ts == TokenStop::Length ? FinishReason::Length : FinishReason::Stop,
             ts == TokenStop::StopToken ? std::to_string(tok) : std::string());
    return ts != TokenStop::None;
  }

  void execute_copies(std::vector<ArenaCopy> copies) {
    StepPlan p;
    p.step = next_step++;
    p.copies = std::move(copies);
    runner->execute(p);
  }

  void draft(const std::vector<Scheduled>& sched);
  void draft_dspark(const std::vector<Scheduled>& sched);
  void draft_hook(Request& r, int k) {
    if (!cfg.draft_hook) return;
    cfg.draft_hook(r.id, r.tokens, r.drafts);
    DSV4_CHECK(int(r.drafts.size()) <= k, "draft hook: {} drafts, at most {}", r.drafts.size(), k);
  }
};

// The DSpark drafter after a step (runtime/dspark_drafting.h): one block per decoding request. Its rings
// already hold every computed position (the main model's step wrote them), so finished requests need nothing.
void Engine::Impl::draft_dspark(const std::vector<Scheduled>& sched) {
  const int B = spec.num_speculative_tokens;
  std::vector<DSparkJob> jobs;
  for (const Scheduled& s : sched) {
    Request& r = *s.r;
    if (!r.has_seq() || r.pending.finished()) continue;
    const int64_t end = r.kv.pos;
    if (int64_t(r.tokens.size()) != end + 1) continue;  // still prefilling
    int k = int(std::min<int64_t>({int64_t(B), max_len - 1 - end, int64_t(r.params.max_tokens) - r.generated() - 1}));
    while (k > 0 && !r.kv.ensure(*pool, end + k + 1, block_tokens)) --k;
    if (k > 0) jobs.push_back({r.kv.slot, end, r.tokens.back(), k, *r.sampler, &r.draft_rng, &r.drafts});
  }
  dspark_draft(*runner, jobs, next_step);
  for (const Scheduled& s : sched)
    if (!s.r->drafts.empty()) draft_hook(*s.r, int(s.r->drafts.size()));
}

// The MTP drafter after a step: first over every row the step computed (the MTP layer's KV follows the main
// model's, and those rows' next tokens are known now), which gives each decoding request its first draft; then
// once per further draft, recursively from its own streams. The recursive steps' KV writes are speculative:
// saved before them and put back after.
void Engine::Impl::draft(const std::vector<Scheduled>& sched) {
  if (spec.dspark()) return draft_dspark(sched);
  const KvLayout& layout = runner->kv_layout();
  const int64_t main_rows = runner->options().limits.max_rows, V = vocab;
  const int N = spec.num_speculative_tokens;
  const int64_t mtp_area = layout.write_bound(0, n_main_layers, N);
  struct Job {
    Request* r;
    int k;             // drafts to make
    int64_t end;       // positions computed: the next verify starts here
    SamplerState tmp;  // the request's sampler advanced over the drafts so far
    int64_t logit_row = 0;
  };
  std::vector<Job> jobs;
  StepPlan p;
  p.step = next_step++;
  p.batch.mtp = true;
  for (const Scheduled& s : sched) {
    Request& r = *s.r;
    // Finished requests too (no drafts): the blocks they leave in the prefix cache carry the MTP layer's tail.
    if (!r.has_seq() || r.pending.finish == FinishReason::Error) continue;
    const int64_t end = r.kv.pos, rows_end = std::min<int64_t>(end, int64_t(r.tokens.size()) - 1);
    if (rows_end <= s.start) continue;
    StepItem it;
    it.slot = r.kv.slot;
    it.start = s.start;
    for (int64_t q = s.start; q < rows_end; ++q) {
      it.tokens.push_back(r.tokens[size_t(q + 1)]);
      it.hidden.push_back(int32_t(s.row0 + q - s.start));
    }
    int k = 0;
    if (!r.pending.finished() && int64_t(r.tokens.size()) == end + 1) {  // decoding: drafts for the next step
      k = int(std::min<int64_t>({int64_t(N), max_len - 1 - end, int64_t(r.params.max_tokens) - r.generated() - 1}));
      while (k > 0 && !r.kv.ensure(*pool, end + k + 1, block_tokens)) --k;
    }
    it.blocks = r.kv.blocks;
    it.logits = k > 0 ? LogitRows::Last : LogitRows::None;
    if (k > 0) jobs.push_back({&r, k, end, *r.sampler});
    p.batch.items.push_back(std::move(it));
  }
  if (p.batch.items.empty()) return;
  StepResult res = runner->execute(p);
  // A draft: sampled with the request's parameters over the history so far, from the drafter's own RNG.
  auto take = [&](Job& j, int64_t row) {
    j.logit_row = row;
    Draft d;
    d.q = j.tmp.distribution(std::span<const float>(res.logits.data() + row * V, size_t(V)));
    d.token = draw_token(d.q, j.r->draft_rng.uniform());
    j.tmp.record_output(d.token);
    j.r->drafts.push_back(std::move(d));
  };
  for (size_t i = 0; i < jobs.size(); ++i) take(jobs[i], int64_t(i));
  std::vector<ArenaCopy> restore;
  for (int made = 1; made < N; ++made) {
    StepPlan q;
    q.step = next_step++;
    q.batch.mtp = true;
    std::vector<Job*> active;
    for (Job& j : jobs) {
      if (j.k <= made) continue;
      Request& r = *j.r;
      if (made == 1) {  // positions end .. end + k - 2 of the MTP layer are written speculatively
        const auto saves = spec_saves(layout, r.kv.slot, r.kv.blocks, n_main_layers, n_main_layers + 1, j.end,
                                      j.k - 1, mtp_area);
        append_spec_saves(saves, q.copies);
        append_spec_restores(saves, 0, restore);
      }
      StepItem it;
      it.slot = r.kv.slot;
      it.start = j.end + made - 1;
      it.tokens = {r.drafts.back().token};
      it.hidden = {int32_t(main_rows + j.logit_row)};
      it.blocks = r.kv.blocks;
      it.logits = LogitRows::Last;
      q.batch.items.push_back(std::move(it));
      active.push_back(&j);
    }
    if (active.empty()) break;
    res = runner->execute(q);
    for (size_t i = 0; i < active.size(); ++i) take(*active[i], int64_t(i));
  }
  if (!restore.empty()) execute_copies(std::move(restore));
  for (Job& j : jobs) draft_hook(*j.r, j.k);
}

RunnerOptions runner_options(const EngineConfig& c) {
  RunnerOptions ro;
  ro.model_dir = c.model_dir;
  ro.device = c.device;
  ro.load_format = c.load_format;
  ro.numerics = c.numerics;
  ro.kv_dtype = c.kv_cache_dtype == "auto" ? default_kv_dtype(c.numerics) : parse_kv_dtype(c.kv_cache_dtype);
  ro.block_tokens = c.block_size;
  ro.prefix_tails = c.enable_prefix_caching;
  ro.n_slots = c.max_num_seqs;
  ro.limits.max_rows = c.max_num_batched_tokens;
  ro.limits.max_items = c.max_num_seqs;
  ro.limits.max_logit_rows = c.max_num_seqs;
  ro.kv_cache_memory = c.kv_cache_memory;
  ro.memory_utilization = c.gpu_memory_utilization;
  ro.max_model_len = c.max_model_len;
  ro.dist = c.dist;
  ro.expert_parallel = c.enable_expert_parallel;
  ro.eplb = c.eplb;
  ro.pipeline = c.pipeline;
  ro.local_rank = c.local_rank;
  SpeculativeConfig sc = parse_speculative_config(c.speculative_config);
  if (sc.dspark()) sc = resolve_speculative_config(sc, ModelConfig::load(c.model_dir + "/config.json"));
  if (sc.enabled()) {
    ro.drafter = sc.dspark() ? Drafter::DSpark : Drafter::Mtp;
    ro.draft_tokens = sc.num_speculative_tokens;
    ro.limits.max_logit_rows = int64_t(c.max_num_seqs) * (sc.num_speculative_tokens + 1);  // a verify: every row
  }
  ro.expert_load_window = c.expert_load_window;
  return ro;
}

Engine::Engine(EngineConfig cfg, const Tokenizer* tokenizer) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.cfg = std::move(cfg);
  I.tok = tokenizer;
  if (I.cfg.max_num_seqs < 1) fail("--max-num-seqs must be >= 1");
  if (I.cfg.max_num_batched_tokens < 1) fail("--max-num-batched-tokens must be >= 1");
  I.spec = parse_speculative_config(I.cfg.speculative_config);
  // With tensor parallelism the drafter passes, their arena copies and the rollback go to every rank in the step
  // plans like any other step (the KV layout, drafter layers included, is the same on every rank); pipelines
  // refuse a drafter in the runner.
  if (I.spec.enabled()) {
    I.spec = resolve_speculative_config(I.spec, ModelConfig::load(I.cfg.model_dir + "/config.json"));
  }
  I.runner = std::make_unique<ModelRunner>(runner_options(I.cfg));
  if (I.cfg.max_inter_token_latency_ms < 0) fail("--max-inter-token-latency-ms must be >= 0");
  I.latency = PrefillLatencyBudget(I.cfg.max_inter_token_latency_ms / 1000.0);
  const ModelConfig& c = I.runner->config();
  const MemoryPlan& mp = I.runner->memory();
  I.block_tokens = I.runner->kv_layout().block_tokens();
  I.max_len = mp.max_model_len;
  I.vocab = c.vocab_size;
  I.eos = c.eos_token_id;
  I.pool = std::make_unique<BlockPool>(mp.kv_blocks);
  I.slots = std::make_unique<SlotPool>(I.cfg.max_num_seqs);
  if (I.cfg.enable_prefix_caching) I.prefix = std::make_unique<PrefixCache>(*I.pool, I.block_tokens);
  if (!I.cfg.kv_offload_dir.empty()) {
    if (!I.prefix) fail("--kv-offload-dir needs prefix caching (drop --no-enable-prefix-caching)");
    I.offload = std::make_unique<KvOffload>(*I.runner, *I.pool, *I.prefix, I.cfg.kv_offload_dir, I.cfg.kv_offload_size,
                                            I.cfg.kv_offload_checkpoint_blocks);
    spdlog::info("{}", I.offload->store().describe());
  }
  I.seq_fixed_bytes = uint64_t(I.runner->kv_layout().slot_bytes());
  I.block_bytes = uint64_t(I.runner->kv_layout().block_bytes());
  I.st.kv_blocks_total = mp.kv_blocks;
  I.st.kv_bytes_total = uint64_t(mp.kv_blocks) * I.block_bytes + uint64_t(I.cfg.max_num_seqs) * I.seq_fixed_bytes;
  I.st.bytes_per_block = I.block_bytes;
  I.st.bytes_per_sequence = I.seq_fixed_bytes;
  I.n_main_layers = c.n_layers;
  I.st.spec_accepted_per_pos.assign(size_t(I.spec.num_speculative_tokens), 0);
  const int64_t cap_tokens = mp.kv_blocks * I.block_tokens;
  spdlog::info("KV cache: {} tokens; {} max-length ({}) sequences fit", cap_tokens, cap_tokens / I.max_len, I.max_len);
}

Engine::~Engine() = default;

const ModelConfig& Engine::model_config() const { return impl_->runner->config(); }
const EngineConfig& Engine::config() const { return impl_->cfg; }
int64_t Engine::max_model_len() const { return impl_->max_len; }
ModelRunner& Engine::runner() { return *impl_->runner; }
void Engine::heartbeat() { impl_->runner->heartbeat(); }
bool Engine::distributed() const { return impl_->runner->distributed(); }

void Engine::validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const {
  const Impl& I = *impl_;
  if (prompt.empty()) fail("the prompt is empty");
  for (int32_t t : prompt)
    if (t < 0 || t >= I.vocab) fail("token id {} is out of range [0, {})", t, I.vocab);
  params.validate(I.vocab);
  if (int64_t(prompt.size()) >= I.max_len)
    fail("the prompt has {} tokens, the maximum context length is {} (prompt plus at least one generated token)",
         prompt.size(), I.max_len);
  if (int64_t(prompt.size()) + params.max_tokens > I.max_len)
    fail("prompt ({} tokens) + max_tokens ({}) exceeds the maximum context length {}", prompt.size(),
         params.max_tokens, I.max_len);
}

uint64_t Engine::add_request(std::vector<int32_t> prompt, SamplingParams params) {
  Impl& I = *impl_;
  validate(prompt, params);
  auto r = std::make_unique<Request>();
  r->id = I.next_id++;
  r->prompt_len = int64_t(prompt.size());
  r->tokens = std::move(prompt);
  r->sampler = std::make_unique<SamplerState>(params, r->tokens);
  // A stream of its own for drafting: reusing the sampler's would correlate drafts with their acceptance tests.
  r->draft_rng = SamplerRng(params.seed ? *params.seed ^ 0x5deece66dull : SamplerRng::random_seed());
  r->params = std::move(params);
  if (I.tok) r->text = std::make_unique<RequestText>(*I.tok, r->params);
  r->pending.id = r->id;
  const uint64_t id = r->id;
  I.waiting.push_back(std::move(r));
  return id;
}

void Engine::abort(uint64_t id) {
  Impl& I = *impl_;
  DSV4_CHECK(I.scheduled.empty(), "Engine::abort during a step");
  auto out = [&](Request& r) {
    RequestOutput o = std::move(r.pending);
    o.id = r.id;
    o.finish = FinishReason::Abort;
    o.prompt_tokens = r.prompt_len;
    o.cached_tokens = r.cached_tokens;
    o.generated_tokens = r.generated();
    I.finished_outside_step.push_back(std::move(o));
  };
  for (auto it = I.running.begin(); it != I.running.end(); ++it)
    if ((*it)->id == id) {
      out(**it);
      I.drop_seq(**it);  // its blocks go back at once (cached ones stay with the prefix cache)
      I.running.erase(it);
      return;
    }
  for (auto it = I.waiting.begin(); it != I.waiting.end(); ++it)
    if ((*it)->id == id) {
      out(**it);
      I.drop_seq(**it);
      I.waiting.erase(it);
      return;
    }
  for (auto it = I.restoring.begin(); it != I.restoring.end(); ++it)
    if ((*it)->id == id) {
      out(**it);
      I.drop_seq(**it);  // the read finishes on its own; nobody looks at it
      I.restoring.erase(it);
      return;
    }
}

bool Engine::has_work() const {
  return !impl_->running.empty() || !impl_->waiting.empty() || !impl_->restoring.empty() ||
         !impl_->finished_outside_step.empty();
}

EngineStats Engine::stats() const {
  EngineStats s = impl_->st;
  s.running = int(impl_->running.size());
  s.waiting = int(impl_->waiting.size() + impl_->restoring.size());  // restoring: waiting for disk reads
  s.kv_blocks_used = impl_->pool->used();
  s.kv_blocks_reusable = impl_->prefix ? impl_->prefix->reusable() : 0;
  s.kv_bytes_used = impl_->used_bytes();
  if (impl_->offload) {
    s.kv_offload = true;
    s.disk = impl_->offload->store().stats();
  }
  if (const ExpertLoad* el = impl_->runner->expert_load()) {
    s.expert_load = el->snapshot();
    s.expert_load.eplb = impl_->runner->eplb_epochs();
  }
  return s;
}

void Engine::discard_step() { impl_->scheduled.clear(); }

std::vector<RequestOutput> Engine::step() { return complete(execute(schedule())); }

StepResult Engine::execute(const StepPlan& plan) { return impl_->runner->execute(plan); }

StepPlan Engine::schedule() {
  Impl& I = *impl_;
  DSV4_CHECK(I.scheduled.empty(), "Engine::schedule: the previous step was not completed");
  int64_t budget = I.cfg.max_num_batched_tokens;
  std::vector<Impl::Scheduled>& sched = I.scheduled;
  I.step_start = std::chrono::steady_clock::now();
  I.poll_restores();

  // 1. Running requests: decodes first (a long prefill never starves them), then prefill chunks.
  std::vector<Request*> order;
  int64_t decodes = 0;
  for (auto& r : I.running)
    if (int64_t(r->tokens.size()) - r->computed() == 1) order.push_back(r.get()), ++decodes;
  for (auto& r : I.running)
    if (int64_t(r->tokens.size()) - r->computed() > 1) order.push_back(r.get());
  // With decodes in the step, prefill tokens (running chunks and admissions) are capped by the latency bound.
  int64_t prefill_room = decodes ? I.latency.prefill_tokens(std::max<int64_t>(budget - decodes, 0)) : budget;
  for (Request* r : order) {
    if (budget <= 0) break;
    if (!r->has_seq()) continue;  // preempted while making room for an earlier one
    const int64_t left = int64_t(r->tokens.size()) - r->computed();
    if (left > 1 && prefill_room <= 0) continue;
    if (left == 1 && int64_t(r->drafts.size()) + 1 > budget) r->drafts.clear();  // verify next step instead
    const int k = left == 1 ? int(r->drafts.size()) : 0;
    const int64_t n = k ? 1 + k : std::min<int64_t>(left, left > 1 ? std::min(budget, prefill_room) : budget);
    if (left > 1) prefill_room -= n;
    if (!I.reserve(*r, r->computed() + n)) {
      I.preempt(*r);  // nothing else to take memory from: retry it later
      continue;
    }
    sched.push_back({r, n, false, k});
    budget -= n;
  }
  // Requests preempted above may already be in `sched`: drop them and give back their budget.
  for (auto& s : sched)
    if (!s.r->has_seq()) budget += s.n;
  std::erase_if(sched, [](const Impl::Scheduled& s) { return !s.r->has_seq(); });

  // 2. Admit waiting requests (FIFO) while there is room.
  while (budget > 0 && prefill_room > 0 && !I.waiting.empty() && int(I.running.size()) < I.cfg.max_num_seqs) {
    Request& r = *I.waiting.front();
    if (!r.has_seq() && I.begin_restore(r)) {
      I.restoring.push_back(std::move(I.waiting.front()));
      I.waiting.pop_front();
      continue;
    }
    if (!r.has_seq() && !I.start_seq(r)) break;  // no free slot
    const int64_t n = std::min<int64_t>(int64_t(r.tokens.size()) - r.computed(), std::min(budget, prefill_room));
    if (!r.kv.ensure(*I.pool, r.computed() + n, I.block_tokens)) {
      const int64_t need = SequenceKv::blocks_for(r.computed() + n, I.block_tokens) - int64_t(r.kv.blocks.size());
      if (I.prefix && I.prefix->evict(need) > 0) continue;
      if (I.running.empty()) {  // cannot fit even alone: max_model_len checks make this unreachable
        I.drop_seq(r);
        RequestOutput o;
        o.id = r.id;
        o.finish = FinishReason::Error;
        o.error = "the KV cache cannot hold this request";
        I.finished_outside_step.push_back(std::move(o));
        I.waiting.pop_front();
        continue;
      }
      I.drop_seq(r);  // wait for running requests to free memory
      break;
    }
    I.running.push_back(std::move(I.waiting.front()));
    I.waiting.pop_front();
    sched.push_back({I.running.back().get(), n, false});
    budget -= n;
    prefill_room -= n;
  }

  // 3. The plan: every scheduled chunk, and the copies that resume prefix-cache hits first.
  StepPlan plan;
  plan.step = I.next_step++;
  plan.batch.keep_hidden = I.spec.enabled() && !I.spec.dspark();  // the MTP drafter continues from every row
  I.step_prefill = 0;
  int64_t rows = 0;
  for (auto& s : sched) {
    Request& r = *s.r;
    if (int64_t(r.tokens.size()) - r.computed() > 1) I.step_prefill += s.n;
    s.sample = s.drafts > 0 || r.computed() + s.n == int64_t(r.tokens.size());
    s.start = r.computed();
    s.row0 = rows;
    rows += s.n;
    StepItem it;
    it.slot = r.kv.slot;
    it.start = r.computed();
    it.blocks = r.kv.blocks;
    plan.copies.insert(plan.copies.end(), r.resume.begin(), r.resume.end());
    r.resume.clear();
    if (s.drafts) {  // verify: the last token and the drafts, logits on every row; save what the drafts overwrite
      it.tokens = {r.tokens.back()};
      for (const Draft& d : r.drafts) it.tokens.push_back(d.token);
      it.logits = LogitRows::All;
      r.saves = spec_saves(I.runner->kv_layout(), r.kv.slot, r.kv.blocks, 0, I.runner->kv_layout().n_step_layers(),
                           r.computed() + 1, s.drafts);
      append_spec_saves(r.saves, plan.copies);
    } else {
      it.tokens.assign(r.tokens.begin() + r.computed(), r.tokens.begin() + r.computed() + s.n);
      it.logits = s.sample ? LogitRows::Last : LogitRows::None;
    }
    plan.batch.items.push_back(std::move(it));
    if (r.generated() == 0) I.st.prompt_tokens += uint64_t(s.n);
  }
  return plan;
}

std::vector<RequestOutput> Engine::complete(const StepResult& result) {
  Impl& I = *impl_;
  std::vector<RequestOutput> outputs = std::move(I.finished_outside_step);
  I.finished_outside_step.clear();
  std::vector<Impl::Scheduled> sched = std::move(I.scheduled);
  I.scheduled.clear();
  if (!sched.empty())
    I.latency.observe(I.step_prefill,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - I.step_start).count());

  // Sample (or verify drafts), check stop conditions, collect outputs.
  const int64_t V = I.vocab;
  size_t row = 0;
  std::vector<ArenaCopy> restores;
  for (auto& s : sched) {
    Request& r = *s.r;
    if (!s.sample) {
      r.kv.pos += s.n;
      I.offer_full_blocks(r);
      continue;
    }
    const size_t nrows = size_t(s.drafts) + 1;
    DSV4_CHECK(int64_t(row + nrows) <= result.rows, "step result has {} logit rows, the plan asked for more",
               result.rows);
    const std::span<const float> lg(result.logits.data() + row * size_t(V), nrows * size_t(V));
    row += nrows;
    std::vector<SampleResult> emitted;
    int accepted = 0;
    try {
      if (s.drafts) emitted = verify_drafts(*r.sampler, lg, V, r.drafts, &accepted);
      else emitted.push_back(r.sampler->sample(lg));
    } catch (const Error& e) {  // e.g. a grammar with no way on: this request fails, the batch goes on
      r.pending.error = e.what();
      I.finish(r, FinishReason::Error);
      continue;
    }
    if (s.drafts) {
      ++I.st.spec_num_drafts;
      I.st.spec_num_draft_tokens += uint64_t(s.drafts);
      I.st.spec_num_accepted_tokens += uint64_t(accepted);
      for (int k = 0; k < accepted; ++k) ++I.st.spec_accepted_per_pos[size_t(k)];
    }
    for (const SampleResult& sr : emitted)
      if (I.emit(r, sr)) break;  // finished: what follows a stop is dropped
    // Computed: the chunk's positions, of a verify only the last token's and the accepted drafts'.
    r.kv.pos = std::min<int64_t>(s.start + (s.drafts ? 1 + accepted : s.n), int64_t(r.tokens.size()));
    if (s.drafts) {
      if (!r.pending.finished()) {  // rejected drafts leave no trace: their arena writes go back, then blocks
        append_spec_restores(r.saves, r.kv.pos, restores);
        r.kv.truncate(*I.pool, r.kv.pos, I.block_tokens);
      }
      r.saves.clear();
      r.drafts.clear();
    }
    I.offer_full_blocks(r);
  }
  if (!restores.empty()) I.execute_copies(std::move(restores));
  if (I.spec.enabled()) I.draft(sched);
  for (auto it = I.running.begin(); it != I.running.end();) {
    Request& r = **it;
    if (!r.has_output) {
      ++it;
      continue;
    }
    RequestOutput o = std::move(r.pending);
    o.id = r.id;
    o.prompt_tokens = r.prompt_len;
    o.cached_tokens = r.cached_tokens;
    o.generated_tokens = r.generated();
    r.pending = RequestOutput{};
    r.has_output = false;
    const bool done = o.finished();
    outputs.push_back(std::move(o));
    if (done) {
      // Where this conversation would resume: its last full block's snapshot goes to disk too.
      if (I.offload && r.registered_blocks > 0)
        I.offload->save_tail(r.tokens, r.registered_blocks - 1, r.kv.blocks[size_t(r.registered_blocks - 1)]);
      I.drop_seq(r);  // frees the blocks (cached ones stay with the prefix cache)
      it = I.running.erase(it);
    } else {
      ++it;
    }
  }
  return outputs;
}

}  // namespace dsv4
