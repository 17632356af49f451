#include "runtime/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>

#include "core/error.h"
#include "runtime/kv_block_manager.h"
#include "runtime/latency_budget.h"
#include "runtime/prefix_cache.h"
#include "runtime/request_text.h"
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
  RequestOutput pending;          // accumulates this step's output
  bool has_output = false;

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
  };
  std::vector<Scheduled> scheduled;  // the plan in flight
  EngineStats st;
  PrefillLatencyBudget latency{0};
  int64_t step_prefill = 0;  // prefill tokens of the plan in flight
  std::chrono::steady_clock::time_point step_start;

  uint64_t used_bytes() const {
    return uint64_t(pool->used()) * block_bytes + uint64_t(running.size()) * seq_fixed_bytes;
  }

  void drop_seq(Request& r) {
    r.kv.release(*pool, *slots);
    r.resume.clear();
    r.registered_blocks = 0;
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
    if (hit.empty()) return true;
    for (int32_t b : hit) pool->retain(b);
    r.kv.blocks = hit;
    r.kv.pos = int64_t(hit.size()) * block_tokens;
    append_resume_copies(runner->kv_layout(), r.kv.slot, hit.back(), r.kv.pos, r.resume);
    r.registered_blocks = int64_t(hit.size());
    st.prefix_hits += uint64_t(r.kv.pos);
    if (r.generated() == 0) r.cached_tokens = r.kv.pos;
    return true;
  }

  void offer_full_blocks(Request& r) {
    if (!prefix) return;
    const int64_t full = r.computed() / block_tokens;
    for (int64_t k = r.registered_blocks; k < full; ++k) prefix->insert(r.tokens, k, r.kv.blocks[size_t(k)]);
    r.registered_blocks = std::max(r.registered_blocks, full);
  }

  void finish(Request& r, FinishReason why, std::string reason = {}) {
    r.pending.finish = why;
    r.pending.stop_reason = std::move(reason);
    r.has_output = true;
  }
};

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
  ro.local_rank = c.local_rank;
  ro.expert_load_window = c.expert_load_window;
  return ro;
}

Engine::Engine(EngineConfig cfg, const Tokenizer* tokenizer) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.cfg = std::move(cfg);
  I.tok = tokenizer;
  if (I.cfg.max_num_seqs < 1) fail("--max-num-seqs must be >= 1");
  if (I.cfg.max_num_batched_tokens < 1) fail("--max-num-batched-tokens must be >= 1");
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
  I.seq_fixed_bytes = uint64_t(I.runner->kv_layout().slot_bytes());
  I.block_bytes = uint64_t(I.runner->kv_layout().block_bytes());
  I.st.kv_blocks_total = mp.kv_blocks;
  I.st.kv_bytes_total = uint64_t(mp.kv_blocks) * I.block_bytes + uint64_t(I.cfg.max_num_seqs) * I.seq_fixed_bytes;
  I.st.bytes_per_block = I.block_bytes;
  I.st.bytes_per_sequence = I.seq_fixed_bytes;
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
}

bool Engine::has_work() const { return !impl_->running.empty() || !impl_->waiting.empty() || !impl_->finished_outside_step.empty(); }

EngineStats Engine::stats() const {
  EngineStats s = impl_->st;
  s.running = int(impl_->running.size());
  s.waiting = int(impl_->waiting.size());
  s.kv_blocks_used = impl_->pool->used();
  s.kv_blocks_reusable = impl_->prefix ? impl_->prefix->reusable() : 0;
  s.kv_bytes_used = impl_->used_bytes();
  if (const ExpertLoad* el = impl_->runner->expert_load()) s.expert_load = el->snapshot();
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
    const int64_t n = std::min<int64_t>(left, left > 1 ? std::min(budget, prefill_room) : budget);
    if (left > 1) prefill_room -= n;
    if (!I.reserve(*r, r->computed() + n)) {
      I.preempt(*r);  // nothing else to take memory from: retry it later
      continue;
    }
    sched.push_back({r, n, false});
    budget -= n;
  }
  // Requests preempted above may already be in `sched`: drop them and give back their budget.
  for (auto& s : sched)
    if (!s.r->has_seq()) budget += s.n;
  std::erase_if(sched, [](const Impl::Scheduled& s) { return !s.r->has_seq(); });

  // 2. Admit waiting requests (FIFO) while there is room.
  while (budget > 0 && prefill_room > 0 && !I.waiting.empty() && int(I.running.size()) < I.cfg.max_num_seqs) {
    Request& r = *I.waiting.front();
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
  I.step_prefill = 0;
  for (auto& s : sched) {
    Request& r = *s.r;
    if (int64_t(r.tokens.size()) - r.computed() > 1) I.step_prefill += s.n;
    s.sample = r.computed() + s.n == int64_t(r.tokens.size());
    StepItem it;
    it.slot = r.kv.slot;
    it.start = r.computed();
    it.tokens.assign(r.tokens.begin() + r.computed(), r.tokens.begin() + r.computed() + s.n);
    it.blocks = r.kv.blocks;
    it.logits = s.sample ? LogitRows::Last : LogitRows::None;
    plan.batch.items.push_back(std::move(it));
    plan.copies.insert(plan.copies.end(), r.resume.begin(), r.resume.end());
    r.resume.clear();
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

  // Sample, check stop conditions, collect outputs.
  const int64_t V = I.vocab;
  size_t row = 0;
  for (auto& s : sched) {
    Request& r = *s.r;
    r.kv.pos += s.n;
    I.offer_full_blocks(r);
    if (!s.sample) continue;
    DSV4_CHECK(int64_t(row) < result.rows, "step result has {} logit rows, the plan asked for more", result.rows);
    const float* lg = result.logits.data() + row * size_t(V);
    ++row;
    SampleResult sr;
    try {
      sr = r.sampler->sample(std::span<const float>(lg, size_t(V)));
    } catch (const Error& e) {  // e.g. a grammar with no way on: this request fails, the batch goes on
      r.pending.error = e.what();
      I.finish(r, FinishReason::Error);
      continue;
    }
    const int32_t tok = sr.token;
    r.tokens.push_back(tok);
    ++I.st.generation_tokens;
    r.pending.new_tokens.push_back(tok);
    if (sr.has_logprobs) r.pending.logprobs.push_back(sr);
    r.has_output = true;
    const int32_t eos = I.eos;
    TokenStop ts = check_token_stop(r.params, tok, r.generated(), std::span<const int32_t>(&eos, 1));
    if (ts == TokenStop::None && int64_t(r.tokens.size()) >= I.max_len) ts = TokenStop::Length;
    const bool stop_token = ts == TokenStop::Eos || ts == TokenStop::StopToken;
    if (r.text) {
      r.pending.text += r.text->add(tok, stop_token);
      if (r.text->stopped()) {
        I.finish(r, FinishReason::Stop, r.text->stop_string());
        continue;
      }
      if (ts != TokenStop::None) r.pending.text += r.text->finish();
    }
    if (ts != TokenStop::None)
      I.finish(r, ts == TokenStop::Length ? FinishReason::Length : FinishReason::Stop,
               ts == TokenStop::StopToken ? std::to_string(tok) : std::string());
  }
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
      I.drop_seq(r);  // frees the blocks (cached ones stay with the prefix cache)
      it = I.running.erase(it);
    } else {
      ++it;
    }
  }
  return outputs;
}

}  // namespace dsv4
