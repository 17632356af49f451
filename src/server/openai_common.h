// Pieces the OpenAI and Anthropic handlers share: model check, sampling fields, context-length checks,
// usage and logprobs JSON, ids, and the loop that drives a Generation to its end.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "server/generation.h"
#include "server/handlers.h"

namespace dsv4::server {

std::string random_id(const std::string& prefix);  // prefix + 24 random alphanumerics
int64_t unix_time();

// The served name the request asked for (or the first one when it names none); an unknown model is a 404.
std::string check_model(const ServerContext& ctx, const Json& body);

// SamplingParams holding the server's defaults (generation config, overrides).
SamplingParams default_sampling(const ServerContext& ctx);
// vLLM/OpenAI sampling fields: temperature, top_p, top_k, min_p, frequency/presence/repetition penalties,
// seed, stop, stop_token_ids, ignore_eos, include_stop_str_in_output. Type errors are 400s; value ranges
// are checked by SamplingParams::validate() (also a 400).
void apply_openai_sampling(const Json& body, SamplingParams& p);
// The request fields /v1/chat/completions and /v1/completions share: the server's sampling defaults, then
// the request's sampling fields, n (x prompts within --max-num-seqs), stream and stream_options.
struct OpenAIFields {
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: "usage": null per chunk, a final usage chunk
};
OpenAIFields apply_openai_fields(const ServerContext& ctx, const Json& body, size_t prompts, GenerationRequest& gr);

// The envelope of a streamed chunk, and the end of the stream (the usage chunk when asked, then [DONE]).
struct OpenAIChunkHead {
  std::string id;
  const char* object;
  int64_t created;
  std::string model;
  bool include_usage;
  Json chunk(Json choices) const;
  void finish(StreamSink& sink, const Generation& g) const;
};

// Parses `stop`: a string or an array of strings.
std::vector<std::string> parse_stop(const Json& v, const char* field);

// 400 when the prompt leaves no room for one generated token.
void check_prompt_length(const ServerContext& ctx, int64_t prompt_tokens);
// max_tokens: the request's (a 400 when it exceeds the room the prompt leaves); else that room, capped by
// max_new_tokens from the generation config.
int resolve_max_tokens(const ServerContext& ctx, std::optional<int64_t> requested, int64_t prompt_tokens,
                       const char* field);

Json usage_json(const Generation& g);
// OpenAI chat logprobs: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}.
Json chat_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprobs>& lps, int top);
// Legacy completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}.
Json completion_logprobs_json(const Tokenizer& tok, const std::vector<TokenLogprobs>& lps, int top, size_t text_offset);

// Polls `g` until every choice finished, handing each batch of events to `on_events`. Returns false (and
// aborts what runs) when on_events fails to write, the client went away, or the server is stopping.
bool run_generation(ServerContext& ctx, Generation& g, const std::function<bool(std::vector<GenEvent>&)>& on_events,
                    const std::function<bool()>& client_gone);

// A non-streaming request to its end. Throws 499 when the client left (nobody reads it; the status keeps
// it apart in the metrics), 503 on shutdown, 500 when a choice failed.
void run_non_streaming(ServerContext& ctx, Generation& g, const HttpRequest& hreq);

}  // namespace dsv4::server
