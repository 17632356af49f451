#include "runtime/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <map>

#include "core/error.h"
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
  std::unique_ptr<SequenceState> seq;  // null while waiting (or after preemption)
  std::unique_ptr<SamplerState> sampler;
  std::unique_ptr<RequestText> text;  // when the engine has a tokenizer
  int64_t cached_tokens = 0;
  int64_t registered_blocks = 0;  // full blocks already offered to the prefix cache
  RequestOutput pending;          // accumulates this step's output
  bool has_output = false;

  int64_t computed() const { return seq ? seq->pos : 0; }
  int64_t generated() const { return int64_t(tokens.size()) - prompt_len; }
};

}  // namespace

struct Engine::Impl {
  EngineConfig cfg;
  const Tokenizer* tok = nullptr;
  std::unique_ptr<Dsv4Model> model;
  std::unique_ptr<KvPool> pool;
  std::unique_ptr<PrefixCache> prefix;
  int64_t max_len = 0;
  uint64_t seq_fixed_bytes = 0;
  uint64_t next_id = 1;
  std::deque<std::unique_ptr<Request>> waiting;
  std::vector<std::unique_ptr<Request>> running;  // in admission order
  std::vector<RequestOutput> finished_outside_step;  // aborts of waiting requests
  EngineStats st;

  uint64_t used_bytes() const {
    return uint64_t(pool->used()) * uint64_t(pool->layout().block_bytes) + uint64_t(running.size()) * seq_fixed_bytes;
  }

  // Makes room for `tokens` positions of r's sequence: evicts unreferenced cached blocks, then preempts the
  // most recently admitted running requests. False when r itself is the one to give way.
  bool reserve(Request& r, int64_t tokens) {
    while (!r.seq->ensure_blocks(tokens)) {
      int64_t need = r.seq->blocks_needed(tokens) - int64_t(r.seq->blocks().size()) - pool->free_blocks();
      if (prefix && prefix->evict(need) > 0) continue;
      Request* victim = running.back().get();
      if (victim == &r) return false;
      preempt(*victim);
    }
    return true;
  }

  // Preemption by recompute: drop the KV, keep the tokens; the request re-prefills prompt + output later.
  void preempt(Request& r) {
    r.seq.reset();
    r.registered_blocks = 0;
    ++st.preemptions;
    for (auto it = running.begin(); it != running.end(); ++it)
      if (it->get() == &r) {
        waiting.push_front(std::move(*it));
        running.erase(it);
        break;
      }
    spdlog::debug("preempted request {} ({} tokens to recompute)", r.id, r.tokens.size());
  }

  std::unique_ptr<SequenceState> new_seq() {
    return std::make_unique<SequenceState>(model->config(), pool.get(), pool->layout().dtype);
  }

  void offer_full_blocks(Request& r) {
    if (!prefix) return;
    const int64_t bt = pool->layout().block_tokens;
    const int64_t full = r.computed() / bt;
    for (int64_t k = r.registered_blocks; k < full; ++k) prefix->insert(r.tokens, k, r.seq->blocks()[size_t(k)]);
    r.registered_blocks = std::max(r.registered_blocks, full);
  }

  void finish(Request& r, FinishReason why, std::string reason = {}) {
    r.pending.finish = why;
    r.pending.stop_reason = std::move(reason);
    r.has_output = true;
  }
};

Engine::Engine(EngineConfig cfg, const Tokenizer* tokenizer) : impl_(std::make_unique<Impl>()) {
  Impl& I = *impl_;
  I.cfg = std::move(cfg);
  I.tok = tokenizer;
  if (I.cfg.max_num_seqs < 1) fail("--max-num-seqs must be >= 1");
  if (I.cfg.max_num_batched_tokens < 1) fail("--max-num-batched-tokens must be >= 1");
  I.model = std::make_unique<Dsv4Model>(I.cfg.model_dir, I.cfg.numerics);
  const ModelConfig& c = I.model->config();
  KvDtype dt = I.cfg.kv_cache_dtype == "auto" ? I.model->default_kv_dtype() : parse_kv_dtype(I.cfg.kv_cache_dtype);
  KvLayout layout = KvLayout::make(c, I.cfg.block_size, dt, I.cfg.enable_prefix_caching);
  // Fixed per-sequence state: window rings and compressor partial windows (fp32).
  uint64_t fixed = uint64_t(c.n_layers) * c.window * c.head_dim * 4;
  for (int l = 0; l < c.n_layers; ++l) {
    if (c.ratio(l) == 4) fixed += 2ull * 8 * 2 * (c.head_dim + c.index_head_dim) * 4;
    if (c.ratio(l) == 128) fixed += 2ull * 128 * c.head_dim * 4;
  }
  I.seq_fixed_bytes = fixed;
  const uint64_t reserved = fixed * uint64_t(I.cfg.max_num_seqs);
  if (I.cfg.kv_cache_memory <= reserved)
    fail("--kv-cache-memory {} bytes cannot even hold the fixed state of {} sequences ({} bytes each)",
         I.cfg.kv_cache_memory, I.cfg.max_num_seqs, fixed);
  const int64_t blocks = int64_t((I.cfg.kv_cache_memory - reserved) / uint64_t(layout.block_bytes));
  if (blocks < 1) fail("--kv-cache-memory is too small for one KV block ({} bytes)", layout.block_bytes);
  const int64_t cap_tokens = blocks * layout.block_tokens;
  I.max_len = I.cfg.max_model_len > 0 ? I.cfg.max_model_len : std::min<int64_t>(c.max_position_embeddings, cap_tokens);
  if (I.max_len > c.max_position_embeddings)
    fail("--max-model-len {} exceeds the model's max_position_embeddings {}", I.max_len, c.max_position_embeddings);
  if (I.max_len > cap_tokens)
    fail("--max-model-len {} does not fit in the KV cache ({} tokens with --kv-cache-memory {}); lower it or give "
         "the cache more memory", I.max_len, cap_tokens, I.cfg.kv_cache_memory);
  I.pool = std::make_unique<KvPool>(layout, blocks);
  if (I.cfg.enable_prefix_caching) I.prefix = std::make_unique<PrefixCache>(*I.pool);
  I.st.kv_blocks_total = blocks;
  I.st.kv_bytes_total = I.cfg.kv_cache_memory;
  I.st.bytes_per_block = uint64_t(layout.block_bytes);
  I.st.bytes_per_sequence = fixed;
  spdlog::info("KV cache: {} blocks x {} tokens ({} B/block, dtype {}{}) = {} tokens; {} B fixed per sequence; "
               "{} max-length ({}) sequences fit", blocks, layout.block_tokens, layout.block_bytes, kv_dtype_name(dt),
               I.cfg.enable_prefix_caching ? ", prefix caching" : "", cap_tokens, fixed, cap_tokens / I.max_len,
               I.max_len);
}

Engine::~Engine() = default;

const ModelConfig& Engine::model_config() const { return impl_->model->config(); }
const EngineConfig& Engine::config() const { return impl_->cfg; }
int64_t Engine::max_model_len() const { return impl_->max_len; }

uint64_t Engine::add_request(std::vector<int32_t> prompt, SamplingParams params) {
  Impl& I = *impl_;
  const int V = I.model->config().vocab_size;
  if (prompt.empty()) fail("the prompt is empty");
  for (int32_t t : prompt)
    if (t < 0 || t >= V) fail("token id {} is out of range [0, {})", t, V);
  params.validate(V);
  if (int64_t(prompt.size()) >= I.max_len)
    fail("the prompt has {} tokens, the maximum context length is {} (prompt plus at least one generated token)",
         prompt.size(), I.max_len);
  if (int64_t(prompt.size()) + params.max_tokens > I.max_len)
    fail("prompt ({} tokens) + max_tokens ({}) exceeds the maximum context length {}", prompt.size(),
         params.max_tokens, I.max_len);
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
      I.running.erase(it);  // the SequenceState's destructor returns its blocks at once
      return;
    }
  for (auto it = I.waiting.begin(); it != I.waiting.end(); ++it)
    if ((*it)->id == id) {
      out(**it);
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
  return s;
}

std::vector<RequestOutput> Engine::step() {
  Impl& I = *impl_;
  std::vector<RequestOutput> outputs = std::move(I.finished_outside_step);
  I.finished_outside_step.clear();
  int64_t budget = I.cfg.max_num_batched_tokens;
  struct Sched {
    Request* r;
    int64_t n;
  };
  std::vector<Sched> sched;

  // 1. Running requests: decodes first (a long prefill never starves them), then prefill chunks.
  std::vector<Request*> order;
  for (auto& r : I.running)
    if (int64_t(r->tokens.size()) - r->computed() == 1) order.push_back(r.get());
  for (auto& r : I.running)
    if (int64_t(r->tokens.size()) - r->computed() > 1) order.push_back(r.get());
  for (Request* r : order) {
    if (budget <= 0) break;
    if (!r->seq) continue;  // preempted while making room for an earlier one
    const int64_t n = std::min<int64_t>(int64_t(r->tokens.size()) - r->computed(), budget);
    if (!I.reserve(*r, r->computed() + n)) {
      I.preempt(*r);  // nothing else to take memory from: retry it later
      continue;
    }
    sched.push_back({r, n});
    budget -= n;
  }
  // Requests preempted above may already be in `sched`: drop them and give back their budget.
  for (auto& s : sched)
    if (!s.r->seq) budget += s.n;
  std::erase_if(sched, [](const Sched& s) { return !s.r->seq; });

  // 2. Admit waiting requests (FIFO) while there is room.
  while (budget > 0 && !I.waiting.empty() && int(I.running.size()) < I.cfg.max_num_seqs) {
    Request& r = *I.waiting.front();
    if (!r.seq) {
      r.seq = I.new_seq();
      if (I.prefix) {
        // Keep at least one token to compute: its logits give the next token.
        const int64_t max_blocks = (int64_t(r.tokens.size()) - 1) / I.pool->layout().block_tokens;
        auto hit = I.prefix->lookup(r.tokens, max_blocks);
        const int64_t query = int64_t(r.tokens.size());
        I.st.prefix_queries += uint64_t(query);
        if (!hit.empty()) {
          r.seq->resume_from_blocks(hit);
          r.registered_blocks = int64_t(hit.size());
          I.st.prefix_hits += uint64_t(r.seq->pos);
          if (r.generated() == 0) r.cached_tokens = r.seq->pos;
        }
      }
    }
    const int64_t n = std::min<int64_t>(int64_t(r.tokens.size()) - r.computed(), budget);
    if (!r.seq->ensure_blocks(r.computed() + n)) {
      if (I.prefix && I.prefix->evict(r.seq->blocks_needed(r.computed() + n) - int64_t(r.seq->blocks().size())) > 0)
        continue;
      if (I.running.empty()) {  // cannot fit even alone: max_model_len checks make this unreachable
        r.seq.reset();
        RequestOutput o;
        o.id = r.id;
        o.finish = FinishReason::Error;
        o.error = "the KV cache cannot hold this request";
        outputs.push_back(std::move(o));
        I.waiting.pop_front();
        continue;
      }
      r.seq.reset();  // wait for running requests to free memory
      break;
    }
    I.running.push_back(std::move(I.waiting.front()));
    I.waiting.pop_front();
    sched.push_back({I.running.back().get(), n});
    budget -= n;
  }
  if (sched.empty()) return outputs;

  // 3. One forward over every scheduled chunk.
  std::vector<ForwardItem> items;
  std::vector<bool> samples;
  for (auto& s : sched) {
    const bool last = s.r->computed() + s.n == int64_t(s.r->tokens.size());
    ForwardItem it;
    it.seq = s.r->seq.get();
    it.tokens = std::span<const int32_t>(s.r->tokens).subspan(size_t(s.r->computed()), size_t(s.n));
    it.skip_logits = !last;
    items.push_back(it);
    samples.push_back(last);
    if (s.r->generated() == 0) I.st.prompt_tokens += uint64_t(s.n);
  }
  std::vector<float> logits;
  I.model->forward(items, logits);

  // 4. Sample, check stop conditions, collect outputs.
  const int64_t V = I.model->config().vocab_size;
  size_t row = 0;
  for (size_t i = 0; i < sched.size(); ++i) {
    Request& r = *sched[i].r;
    I.offer_full_blocks(r);
    if (!samples[i]) continue;
    const float* lg = logits.data() + row * size_t(V);
    ++row;
    SampleResult sr = r.sampler->sample(std::span<const float>(lg, size_t(V)));
    const int32_t tok = sr.token;
    r.tokens.push_back(tok);
    ++I.st.generation_tokens;
    r.pending.new_tokens.push_back(tok);
    if (sr.has_logprobs) r.pending.logprobs.push_back(sr);
    r.has_output = true;
    const int32_t eos = I.model->config().eos_token_id;
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
    if (done) it = I.running.erase(it);  // frees the blocks (cached ones stay with the prefix cache)
    else ++it;
  }
  return outputs;
}

}  // namespace dsv4
