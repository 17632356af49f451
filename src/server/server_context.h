// What every handler shares: options, the tokenizer, the generator and the metrics.
#pragma once
#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "server/generator.h"
#include "server/http_limits.h"
#include "server/metrics.h"
#include "server/response_store.h"
#include "tokenizer/chat_encoding.h"

namespace dsv4 {
class Tokenizer;
}

namespace dsv4::server {

// Sampling defaults for fields a request leaves out: the model's generation_config.json, then
// --override-generation-config (vLLM's keys: temperature, top_p, top_k, min_p, repetition_penalty,
// max_new_tokens).
struct SamplingDefaults {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k;
  std::optional<int64_t> max_new_tokens;  // default max_tokens (else: the rest of the context)
};

struct ServerOptions {
  std::vector<std::string> model_names = {"dsv4"};  // served names; the first is reported
  std::string model_dir;                            // reported as the model's root
  std::string api_key;                              // empty: no auth
  size_t max_body_bytes = 32u << 20;
  // Bodies of prompt-carrying routes beyond this cannot fit the context (see prompt_body_limit); 0: no cap.
  size_t max_prompt_body_bytes = 0;
  HttpLimits http;
  SamplingDefaults sampling;
  ChatEncodeOptions chat;            // default thinking mode and reasoning effort
  bool completions_add_bos = false;  // tokenizer_config.json add_bos_token: /v1/completions prompts get BOS
  int max_choices = 64;              // n x prompts in one request
  size_t max_stored_responses = 1024;  // Responses API `store: true` entries kept (oldest evicted)
  // tool_choice auto: calls the model opens follow the DSML grammar and the tools' schemas.
  bool auto_tool_grammar = true;
};

struct ServerContext {
  ServerContext(ServerOptions o, const Tokenizer& t, Generator& b)
      : opt(std::move(o)), tok(t), generator(b), responses(opt.max_stored_responses) {}
  ServerOptions opt;
  const Tokenizer& tok;
  Generator& generator;
  Metrics metrics;
  ResponseStore responses;
  std::atomic<bool> stopping{false};  // shutdown: handlers abort what they stream
  const std::chrono::system_clock::time_point started = std::chrono::system_clock::now();
};

}  // namespace dsv4::server
