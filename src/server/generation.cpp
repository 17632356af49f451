#include "server/generation.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {
double seconds(clock_type::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

struct Generation::Choice {
  std::unique_ptr<OutputStream> stream;
  uint64_t engine_id = 0;
  std::unique_ptr<RequestText> text;
  int index = 0;
  ChoiceResult result;
  std::vector<TokenLogprobs> pending_logprobs;
  int64_t cached = 0;
  bool running = true;
  bool in_reasoning = false;
  std::optional<clock_type::time_point> last_output;
};

Generation::Generation(ServerContext& ctx, GenerationRequest req) : ctx_(ctx), req_(std::move(req)) {
  text_params_.stop = std::move(req_.params.stop);
  text_params_.include_stop_str_in_output = req_.params.include_stop_str_in_output;
  req_.params.stop.clear();
  TextOptions to;
  to.skip_special_tokens = req_.skip_special_tokens;
  if (req_.chat) to.chat = req_.thinking;
  to.tool_calls = req_.tools;
  try {
    for (size_t p = 0; p < req_.prompts.size(); ++p)
      for (int j = 0; j < req_.n; ++j) {
        auto c = std::make_unique<Choice>();
        c->index = int(choices_.size());
        c->result.prompt_index = int(p);
        c->text = std::make_unique<RequestText>(ctx_.tok, text_params_, to);
        c->in_reasoning = req_.chat && req_.thinking == ThinkingMode::Thinking;
        SamplingParams sp = req_.params;
        if (sp.seed) sp.seed = *sp.seed + uint64_t(choices_.size());
        c->stream = ctx_.generator.submit(req_.prompts[p], std::move(sp));
        c->engine_id = c->stream->id();
        ctx_.metrics.add_prompt_tokens(int64_t(req_.prompts[p].size()));
        choices_.push_back(std::move(c));
        ++active_;
      }
  } catch (const Error& e) {
    abort_all();
    throw ApiError(400, e.what());
  } catch (...) {
    abort_all();
    throw;
  }
}

Generation::~Generation() { abort_all(); }

void Generation::abort_all() {
  for (auto& c : choices_) {
    if (!c->running) continue;
    ctx_.generator.abort(c->engine_id);
    c->running = false;
    c->result.finish_reason = "abort";
    c->stream.reset();
    ctx_.metrics.record_finished("abort");
    --active_;
  }
}

void Generation::poll(std::vector<GenEvent>& events, std::chrono::milliseconds wait) {
  if (active_ == 0) return;
  std::vector<Choice*> run;
  for (auto& c : choices_)
    if (c->running) run.push_back(c.get());
  auto drain = [&](Choice& c) {
    bool got = false;
    while (c.running) {
      auto o = c.stream->next(0ms);
      if (!o) break;
      process(c, *o, events);
      got = true;
    }
    return got;
  };
  if (run.size() == 1) {
    if (auto o = run[0]->stream->next(wait)) {
      process(*run[0], *o, events);
      drain(*run[0]);
    }
    return;
  }
  // Several choices: take whatever is ready, else wait on each in turn in short slices.
  bool any = false;
  for (size_t k = 0; k < run.size(); ++k) any |= drain(*run[(rr_ + k) % run.size()]);
  ++rr_;
  if (any) return;
  const auto deadline = clock_type::now() + wait;
  for (size_t k = rr_; clock_type::now() < deadline; ++k) {
    Choice& c = *run[k % run.size()];
    if (!c.running) continue;
    if (auto o = c.stream->next(2ms)) {
      process(c, *o, events);
      return;
    }
  }
}

void Generation::process(Choice& c, RequestOutput& o, std::vector<GenEvent>& events) {
  const auto now = clock_type::now();
  if (!o.new_tokens.empty()) {
    if (!c.last_output)
      ctx_.metrics.observe_ttft(seconds(now - req_.arrival));
    else
      ctx_.metrics.observe_inter_token(seconds(now - *c.last_output));
    c.last_output = now;
    ctx_.metrics.add_generation_tokens(int64_t(o.new_tokens.size()));
  }
  c.cached = o.cached_tokens;
  // The token that ended generation (EOS, a stop token id) is not part of the text, as in vLLM.
  size_t text_tokens = o.new_tokens.size();
  if (o.finish == FinishReason::Stop && text_tokens > 0 &&
      (o.new_tokens.back() == ctx_.generator.eos_token_id() || !o.stop_reason.empty()))
    --text_tokens;
  for (auto& lp : o.logprobs) {
    c.result.logprobs.push_back(lp);
    c.pending_logprobs.push_back(std::move(lp));
  }
  std::vector<OutputEvent> te;
  for (size_t k = 0; k < o.new_tokens.size() && c.running; ++k) {
    ++c.result.generated;
    if (c.in_reasoning) ++c.result.reasoning_tokens;  // the token that ends reasoning counts as reasoning
    if (k < text_tokens) c.text->add(o.new_tokens[k], false, te);
    emit(c, te, events);
  }
  if (!c.running || !o.finished()) return;

  c.text->finish(te);
  emit(c, te, events);
  if (!c.running) return;
  std::string reason;
  Json stop_reason = nullptr;
  switch (o.finish) {
    case FinishReason::Stop:
      reason = req_.tools && !c.result.tool_calls.empty() ? "tool_calls" : "stop";
      if (!o.stop_reason.empty()) {
        try {
          stop_reason = std::stoi(o.stop_reason);
        } catch (const std::exception&) {
          stop_reason = o.stop_reason;
        }
      }
      break;
    case FinishReason::Length:
      reason = "length";
      break;
    case FinishReason::Abort:
      reason = "abort";
      break;
    default:
      reason = "error";
      c.result.error = o.error.empty() ? "generation failed" : o.error;
  }
  finish(c, reason, std::move(stop_reason), events);
}

void Generation::emit(Choice& c, std::vector<OutputEvent>& te, std::vector<GenEvent>& events) {
  using K = OutputEvent::Kind;
  const int idx = c.index;
  for (auto& e : te) {
    switch (e.kind) {
      case K::Reasoning:
        if (e.text.empty()) break;
        c.result.reasoning += e.text;
        events.push_back({GenEvent::Kind::Reasoning, idx, std::move(e.text), {}});
        break;
      case K::ReasoningEnd:
        c.in_reasoning = false;
        break;
      case K::Content:
        c.result.content += e.text;
        events.push_back({GenEvent::Kind::Content, idx, std::move(e.text), {}});
        break;
      case K::ToolCallStart:
        events.push_back({GenEvent::Kind::ToolCallStart, idx, {}, std::move(e.call)});
        break;
      case K::ToolCallArguments:
        events.push_back({GenEvent::Kind::ToolCallArguments, idx, std::move(e.text), {}});
        break;
      case K::ToolCall:
        c.result.tool_calls.push_back(e.call);
        events.push_back({GenEvent::Kind::ToolCall, idx, {}, std::move(e.call)});
        break;
      case K::ToolCallsEnd:
        break;
    }
  }
  te.clear();
  if (c.running && c.text->stopped()) {
    ctx_.generator.abort(c.engine_id);
    finish(c, "stop", c.text->stop_string(), events);
  }
}

void Generation::finish(Choice& c, const std::string& reason, Json stop_reason, std::vector<GenEvent>& events) {
  c.running = false;
  --active_;
  c.stream.reset();
  c.result.finish_reason = reason;
  c.result.stop_reason = std::move(stop_reason);
  ctx_.metrics.record_finished(reason);
  ctx_.metrics.observe_e2e(seconds(clock_type::now() - req_.arrival));
  events.push_back({GenEvent::Kind::Finished, c.index, {}, {}});
}

const ChoiceResult& Generation::result(int i) const { return choices_[size_t(i)]->result; }

std::vector<TokenLogprobs> Generation::take_logprobs(int i) {
  std::vector<TokenLogprobs> r;
  r.swap(choices_[size_t(i)]->pending_logprobs);
  return r;
}

int64_t Generation::prompt_tokens() const {
  int64_t s = 0;
  for (const auto& p : req_.prompts) s += int64_t(p.size());
  return s;
}

int64_t Generation::cached_tokens() const {
  int64_t s = 0;
  for (size_t p = 0; p < req_.prompts.size(); ++p) s += choices_[p * size_t(req_.n)]->cached;
  return s;
}

int64_t Generation::reasoning_tokens() const {
  int64_t s = 0;
  for (const auto& c : choices_) s += c->result.reasoning_tokens;
  return s;
}

int64_t Generation::completion_tokens() const {
  int64_t s = 0;
  for (const auto& c : choices_) s += c->result.generated;
  return s;
}

}  // namespace dsv4::server
