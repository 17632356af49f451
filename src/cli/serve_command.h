// `dsv4 serve` as pieces the test server (tests/server/fake/test_server_main.cpp) reuses, so both parse the
// same flags and run the same HTTP stack; only what makes the tokens differs (a GeneratorFactory).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cli/parallel.h"
#include "runtime/engine.h"
#include "server/generator.h"
#include "server/http_limits.h"
#include "server/json_fields.h"

namespace dsv4 {
class Tokenizer;
}

namespace dsv4::cli {

struct ServeOpts {
  // Engine defaults come from EngineConfig, so the CLI and the library cannot disagree.
  ServeOpts() {
    const EngineConfig d;
    max_num_seqs = d.max_num_seqs;
    max_num_batched_tokens = d.max_num_batched_tokens;
    block_size = d.block_size;
    enable_prefix_caching = d.enable_prefix_caching;
    expert_load_window = d.expert_load_window;
  }
  std::string model, tokenizer;
  std::vector<std::string> served_model_name;
  std::string host = "0.0.0.0";
  int port = 8000;
  int64_t max_model_len = 0;
  int max_num_seqs, max_num_batched_tokens, block_size, expert_load_window;
  double max_inter_token_latency_ms = 0;
  std::string kv_cache_dtype = "auto", kv_cache_memory = "auto";
  std::string kv_offload_dir, kv_offload_size = "16GiB";
  std::string device = "auto", load_format = "auto";
  double gpu_memory_utilization = 0.9;
  bool enable_prefix_caching;
  std::string speculative_config;  // vLLM's JSON; empty = off
  std::string api_key, numerics = "reference";
  std::string generation_config = "auto", override_generation_config, default_chat_template_kwargs;
  std::string default_thinking = "off", default_reasoning_effort = "none";
  std::string max_request_body_bytes = "32MiB";
  int http_threads = 0;
  size_t max_stored_responses = 1024;
  std::string auto_tool_grammar = "on";  // on | off: tool_choice auto constrains the calls the model opens
  server::HttpLimits http;
  server::JsonLimits json;
  ParallelOpts parallel;
  // vLLM flags accepted for drop-in command lines; they change nothing here.
  bool trust_remote_code = false, enable_auto_tool_choice = false;
  std::string tool_call_parser, reasoning_parser;
};

// What run_serve resolved before it needs a generator.
struct ServeSetup {
  const Tokenizer& tok;
  std::string model_dir;
  bool demo = false;
  EngineConfig engine;  // everything the flags say (max_model_len: the demo default applied)
};
using GeneratorFactory = std::function<std::unique_ptr<server::Generator>(const ServeSetup&)>;

// Registers every serve flag on `cmd`.
void add_serve_options(CLI::App& cmd, ServeOpts& o);
// Resolves model, tokenizer and defaults, builds the generator (`make`, or the engine when empty) and serves
// until SIGINT/SIGTERM.
void run_serve(const ServeOpts& o, const GeneratorFactory& make = {});

}  // namespace dsv4::cli
