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
  Choice(const Tokenizer& tok, bool skip_special) : detok(tok, skip_special) {}
  std::unique_ptr<OutputStream> stream;
  uint64_t engine_id = 0;
  IncrementalDetokenizer detok;
  std::unique_ptr<StreamingOutputParser> parser;  // chat only
  std::unique_ptr<StopMatcher> stop;              // content channel; null without stop strings
  int index = 0;
  ChoiceResult result;
  std::vector<TokenLogprobs> pending_logprobs;
  int64_t cached = 0;
  bool running = true;
  std::optional<clock_type::time_point> last_output;
};

Generation::Generation(ServerContext& ctx, GenerationRequest req) : ctx_(ctx), req_(std::move(req)) {
  stops_ = std::move(req_.params.stop);
  req_.params.stop.clear();
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
  try {
    for (size_t p = 0; p < req_.prompts.size(); ++p)
      for (int j = 0; j < req_.n; ++j) {
        // Chat output keeps special tokens: the parser needs `</think>` and the DSML markers.
        auto c = std::make_unique<Choice>(ctx_.tok, !req_.chat && req_.skip_special_tokens);
        c->index = int(choices_.size());
        c->result.prompt_index = int(p);
        if (req_.chat) c->parser = std::make_unique<StreamingOutputParser>(req_.thinking);
        if (!stops_.empty()) c->stop = std::make_unique<StopMatcher>(stops_, req_.params.include_stop_str_in_output);
        SamplingParams sp = req_.params;
        if (sp.seed) sp.seed = *sp.seed + uint64_t(choices_.size());
        c->stream = ctx_.backend.submit(req_.prompts[p], std::move(sp));
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
    ctx_.backend.abort(c->engine_id);
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
      (o.new_tokens.back() == ctx_.backend.eos_token_id() || !o.stop_reason.empty()))
    --text_tokens;
  std::string text;
  for (size_t k = 0; k < text_tokens; ++k) {
    try {
      c.detok.push(o.new_tokens[k], text);
    } catch (const Error&) {  // an id the tokenizer lacks (model vocab larger than the tokenizer's)
      text += "\xEF\xBF\xBD";
    }
  }
  for (auto& lp : o.logprobs) {
    c.result.logprobs.push_back(lp);
    c.pending_logprobs.push_back(std::move(lp));
  }
  c.result.generated += int64_t(o.new_tokens.size());
  if (!text.empty()) feed(c, text, events);
  if (!c.running || !o.finished()) return;

  text = c.detok.finish();
  if (!text.empty()) feed(c, text, events);
  if (!c.running) return;
  if (c.parser) {
    std::vector<OutputEvent> pe;
    c.parser->finish(pe);
    handle_parser_events(c, pe, events);
    if (!c.running) return;
  }
  if (c.stop) content(c, c.stop->flush(), events, /*through_stop=*/false);
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

void Generation::feed(Choice& c, std::string_view text, std::vector<GenEvent>& events) {
  if (!c.parser) {
    content(c, text, events, true);
    return;
  }
  std::vector<OutputEvent> pe;
  c.parser->feed(text, pe);
  handle_parser_events(c, pe, events);
}

void Generation::handle_parser_events(Choice& c, std::vector<OutputEvent>& pe, std::vector<GenEvent>& events) {
  const int idx = c.index;
  for (auto& e : pe) {
    if (!c.running) return;
    switch (e.kind) {
      case OutputEvent::Kind::Reasoning:
        if (e.text.empty()) break;
        c.result.reasoning += e.text;
        events.push_back({GenEvent::Kind::Reasoning, idx, std::move(e.text), {}});
        break;
      case OutputEvent::Kind::ReasoningEnd:
        break;
      case OutputEvent::Kind::Content:
        content(c, e.text, events, true);
        break;
      case OutputEvent::Kind::ToolCall:
        if (!req_.tools) {
          content(c, e.raw, events, true);
          break;
        }
        // Content before a tool call is complete: release what a stop string prefix held back.
        if (c.stop) {
          content(c, c.stop->flush(), events, false);
          c.stop = std::make_unique<StopMatcher>(stops_, req_.params.include_stop_str_in_output);
        }
        c.result.tool_calls.push_back(e.call);
        events.push_back({GenEvent::Kind::ToolCall, idx, {}, std::move(e.call)});
        break;
      case OutputEvent::Kind::ToolCallsEnd:
        if (!req_.tools) content(c, e.raw, events, true);
        break;
    }
  }
}

void Generation::content(Choice& c, std::string_view text, std::vector<GenEvent>& events, bool through_stop) {
  std::string out = c.stop && through_stop ? c.stop->feed(text) : std::string(text);
  if (!out.empty()) {
    c.result.content += out;
    events.push_back({GenEvent::Kind::Content, c.index, std::move(out), {}});
  }
  if (through_stop && c.stop && c.stop->stopped()) {
    ctx_.backend.abort(c.engine_id);
    finish(c, "stop", c.stop->stop_string(), events);
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

int64_t Generation::completion_tokens() const {
  int64_t s = 0;
  for (const auto& c : choices_) s += c->result.generated;
  return s;
}

}  // namespace dsv4::server
