#include "server/openai_common.h"

#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "server/json_fields.h"
#include "server/sse.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

using namespace std::chrono_literals;

std::string random_id(const std::string& prefix) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string s = prefix;
  for (int i = 0; i < 24; ++i) s += kChars[rng() % (sizeof(kChars) - 1)];
  return s;
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string check_model(const ServerContext& ctx, const Json& body) {
  auto m = get_string(body, "model");
  if (!m) return ctx.opt.model_names.front();
  for (const auto& n : ctx.opt.model_names)
    if (n == *m) return n;
  throw ApiError(404, fmt::format("The model `{}` does not exist.", *m), "model", "model_not_found");
}

SamplingParams default_sampling(const ServerContext& ctx) {
  SamplingParams p;
  const auto& d = ctx.opt.sampling;
  if (d.temperature) p.temperature = *d.temperature;
  if (d.top_p) p.top_p = *d.top_p;
  if (d.top_k) p.top_k = *d.top_k;
  if (d.min_p) p.min_p = *d.min_p;
  if (d.repetition_penalty) p.repetition_penalty = *d.repetition_penalty;
  return p;
}

std::vector<std::string> parse_stop(const Json& v, const char* field) {
  std::vector<std::string> r;
  if (v.is_null()) return r;
  if (v.is_string()) {
    r.push_back(v.get<std::string>());
    return r;
  }
  if (!v.is_array()) throw ApiError(400, fmt::format("'{}' must be a string or an array of strings", field), field);
  for (const auto& s : v) {
    if (!s.is_string()) throw ApiError(400, fmt::format("'{}' must be a string or an array of strings", field), field);
    r.push_back(s.get<std::string>());
  }
  return r;
}

void apply_openai_sampling(const Json& body, SamplingParams& p) {
  if (auto v = get_number(body, "temperature")) p.temperature = float(*v);
  if (auto v = get_number(body, "top_p")) p.top_p = float(*v);
  if (auto v = get_int(body, "top_k")) p.top_k = int(std::clamp<int64_t>(*v, -2, 1 << 30));
  if (auto v = get_number(body, "min_p")) p.min_p = float(*v);
  if (auto v = get_number(body, "frequency_penalty")) p.frequency_penalty = float(*v);
  if (auto v = get_number(body, "presence_penalty")) p.presence_penalty = float(*v);
  if (auto v = get_number(body, "repetition_penalty")) p.repetition_penalty = float(*v);
  if (auto v = get_int(body, "seed")) p.seed = uint64_t(*v);
  if (const Json* v = find_field(body, "stop")) p.stop = parse_stop(*v, "stop");
  if (const Json* v = get_array(body, "stop_token_ids")) {
    for (const auto& t : *v) {
      if (!t.is_number_integer())
        throw ApiError(400, "'stop_token_ids' must be an array of integers", "stop_token_ids");
      const int64_t id = t.get<int64_t>();
      p.stop_token_ids.push_back(int32_t(std::clamp<int64_t>(id, -1, INT32_MAX)));
    }
  }
  if (auto v = get_bool(body, "ignore_eos")) p.ignore_eos = *v;
  if (auto v = get_bool(body, "include_stop_str_in_output")) p.include_stop_str_in_output = *v;
  if (const Json* v = find_field(body, "logit_bias"); v && !(v->is_object() && v->empty()))
    throw ApiError(400, "'logit_bias' is not supported", "logit_bias");
}

OpenAIFields apply_openai_fields(const ServerContext& ctx, const Json& body, size_t prompts, GenerationRequest& gr) {
  gr.params = default_sampling(ctx);
  apply_openai_sampling(body, gr.params);
  const int64_t n = get_int(body, "n").value_or(1);
  if (n < 1) throw ApiError(400, fmt::format("'n' must be at least 1, got {}", n), "n");
  if (n * int64_t(prompts) > ctx.opt.max_choices)
    throw ApiError(400, fmt::format("at most {} choices per request (n x prompts)", ctx.opt.max_choices), "n");
  gr.n = int(n);
  OpenAIFields f;
  f.stream = get_bool(body, "stream").value_or(false);
  if (const Json* so = get_object(body, "stream_options"))
    f.include_usage = get_bool(*so, "include_usage").value_or(false);
  return f;
}

Json OpenAIChunkHead::chunk(Json choices) const {
  Json c = {{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"choices", std::move(choices)}};
  if (include_usage) c["usage"] = nullptr;
  return c;
}

void OpenAIChunkHead::finish(StreamSink& sink, const Generation& g) const {
  if (include_usage) {
    Json c = chunk(Json::array());
    c["usage"] = usage_json(g);
    if (!sink.write(sse_data(dump(c)))) return;
  }
  sink.write(sse_data("[DONE]"));
}

void check_prompt_length(const ServerContext& ctx, int64_t prompt_tokens) {
  const int64_t max_len = ctx.generator.max_model_len();
  if (prompt_tokens >= max_len)
    throw ApiError(400,
                   fmt::format("This model's maximum context length is {} tokens. However, your request has {} "
                               "input tokens. Please reduce the length of the input.",
                               max_len, prompt_tokens),
                   "messages", "context_length_exceeded");
}

int resolve_max_tokens(const ServerContext& ctx, std::optional<int64_t> requested, int64_t prompt_tokens,
                       const char* field) {
  check_prompt_length(ctx, prompt_tokens);
  const int64_t room = ctx.generator.max_model_len() - prompt_tokens;
  if (requested) {
    if (*requested < 1) throw ApiError(400, fmt::format("'{}' must be at least 1, got {}", field, *requested), field);
    // Beyond the room the context leaves is an error, as in vLLM: clamping would hide the truncation.
    if (*requested > room)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                                 "tokens ({} in the input, {} in the completion). Please reduce the length of the "
                                 "input or of '{}'.",
                                 ctx.generator.max_model_len(), prompt_tokens + *requested, prompt_tokens, *requested,
                                 field),
                     field, "context_length_exceeded");
    return int(*requested);
  }
  int64_t n = room;
  if (ctx.opt.sampling.max_new_tokens) n = std::min(n, *ctx.opt.sampling.max_new_tokens);
  return int(std::clamp<int64_t>(n, 1, INT32_MAX));
}

Json usage_json(const Generation& g) {
  const int64_t p = g.prompt_tokens(), c = g.completion_tokens();
  return Json{{"prompt_tokens", p},
              {"completion_tokens", c},
              {"total_tokens", p + c},
              {"prompt_tokens_details", {{"cached_tokens", g.cached_tokens()}}},
              {"completion_tokens_details", {{"reasoning_tokens", g.reasoning_tokens()}}}};
}

namespace {
// JSON cannot hold -inf; vLLM reports -9999.0 for impossible tokens.
double finite_logprob(float v) { return std::isfinite(v) ? double(v) : -9999.0; }

Json token_entry(const Tokenizer& tok, int32_t id, float logprob) {
  const std::string_view b = tok.token_bytes(id);
  Json bytes = Json::array();
  for (unsigned char ch : b) bytes.push_back(int(ch));
  return Json{{"token", utf8_lossy(b)}, {"logprob", finite_logprob(logprob)}, {"bytes", std::move(bytes)}};
}
}  // namespace

Json chat_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprobs>& lps, int top) {
  Json content = Json::array();
  for (const auto& lp : lps) {
    Json e = token_entry(tok, lp.token, lp.logprob);
    Json tops = Json::array();
    for (size_t k = 0; k < lp.top.size() && int(k) < top; ++k)
      tops.push_back(token_entry(tok, lp.top[k].token, lp.top[k].logprob));
    e["top_logprobs"] = std::move(tops);
    content.push_back(std::move(e));
  }
  return Json{{"content", std::move(content)}};
}

Json completion_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprobs>& lps, int top,
                              size_t text_offset) {
  Json tokens = Json::array(), token_lps = Json::array(), tops = Json::array(), offsets = Json::array();
  for (const auto& lp : lps) {
    const std::string t = utf8_lossy(tok.token_bytes(lp.token));
    tokens.push_back(t);
    token_lps.push_back(finite_logprob(lp.logprob));
    Json m = Json::object();
    for (size_t k = 0; k < lp.top.size() && int(k) < top; ++k)
      m[utf8_lossy(tok.token_bytes(lp.top[k].token))] = finite_logprob(lp.top[k].logprob);
    tops.push_back(std::move(m));
    offsets.push_back(text_offset);
    text_offset += t.size();
  }
  return Json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_lps)},
              {"top_logprobs", std::move(tops)},
              {"text_offset", std::move(offsets)}};
}

bool run_generation(ServerContext& ctx, Generation& g, const std::function<bool(std::vector<GenEvent>&)>& on_events,
                    const std::function<bool()>& client_gone) {
  std::vector<GenEvent> events;
  while (!g.done()) {
    g.poll(events, 50ms);
    if (!events.empty()) {
      if (!on_events(events)) {
        g.abort_all();
        return false;
      }
      events.clear();
    }
    if (ctx.stopping || client_gone()) {
      g.abort_all();
      return false;
    }
  }
  return true;
}

void run_non_streaming(ServerContext& ctx, Generation& g, const HttpRequest& hreq) {
  if (!run_generation(
          ctx, g, [](std::vector<GenEvent>&) { return true; }, hreq.client_gone)) {
    if (ctx.stopping) throw ApiError(503, "the server is shutting down");
    throw ApiError(499, "client disconnected");
  }
  for (int i = 0; i < g.num_choices(); ++i)
    if (g.result(i).finish_reason == "error") throw ApiError(500, "generation failed: " + g.result(i).error);
}

}  // namespace dsv4::server
