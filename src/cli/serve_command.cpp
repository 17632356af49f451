// dsv4 serve: the OpenAI- and Anthropic-compatible server, with vLLM's flag names where they exist.
#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <atomic>
#include <chrono>
#include <thread>

#include "cli/commands.h"
#include "cli/serve_command.h"
#include "core/error.h"
#include "core/log.h"
#include "model/tiny_checkpoint.h"
#include "runtime/engine.h"
#include "server/http_request.h"
#include "server/http_server.h"
#include "server/json_fields.h"
#include "server/tracked_generator.h"
#include "server/weight_preload.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;


// Coding agents send 12-20K-token first requests; the demo model's KV budget holds far more.
constexpr int64_t kDemoMaxModelLen = 65536;
constexpr int64_t kDemoMaxNewTokens = 256;

uint64_t parse_size(const std::string& s, const char* flag) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    fail("{}: '{}' is not a size (e.g. 4GiB, 512MiB, 1000000)", flag, s);
  }
  std::string unit = s.substr(pos);
  double mul = 1;
  if (unit == "" || unit == "B")
    mul = 1;
  else if (unit == "K" || unit == "KB")
    mul = 1e3;
  else if (unit == "KiB")
    mul = 1024.0;
  else if (unit == "M" || unit == "MB")
    mul = 1e6;
  else if (unit == "MiB")
    mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB")
    mul = 1e9;
  else if (unit == "GiB")
    mul = 1024.0 * 1024 * 1024;
  else
    fail("{}: unknown unit '{}' in '{}' (B, KB, KiB, MB, MiB, GB, GiB)", flag, unit, s);
  if (!(v > 0)) fail("{}: '{}' must be positive", flag, s);
  return uint64_t(v * mul);
}

std::string exe_dir() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

json read_json_file(const fs::path& p) {
  std::ifstream f(p);
  if (!f) fail("cannot open {}", p.string());
  try {
    return json::parse(f);
  } catch (const json::exception& e) {
    fail("{}: {}", p.string(), e.what());
  }
}

// vLLM's generation-config keys that become request defaults.
void apply_generation_config(const json& j, server::SamplingDefaults& d, const std::string& origin) {
  if (!j.is_object()) fail("{}: expected a JSON object", origin);
  for (const auto& [k, v] : j.items()) {
    if (v.is_null()) continue;
    const bool num = v.is_number();
    if (k == "temperature" && num)
      d.temperature = v.get<float>();
    else if (k == "top_p" && num)
      d.top_p = v.get<float>();
    else if (k == "top_k" && v.is_number_integer())
      d.top_k = v.get<int>();
    else if (k == "min_p" && num)
      d.min_p = v.get<float>();
    else if (k == "repetition_penalty" && num)
      d.repetition_penalty = v.get<float>();
    else if (k == "max_new_tokens" && v.is_number_integer())
      d.max_new_tokens = v.get<int64_t>();
    else if (k == "temperature" || k == "top_p" || k == "top_k" || k == "min_p" || k == "repetition_penalty" ||
             k == "max_new_tokens")
      fail("{}: '{}' has the wrong type", origin, k);
  }
}

}  // namespace

void run_serve(const ServeOpts& o, const GeneratorFactory& make) {
  // Signals go to one waiting thread (below), never to engine or HTTP threads; a closed client socket must
  // not kill the process.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const bool demo = o.model.empty();
  std::string model_dir = o.model;
  if (demo) {
    model_dir = (fs::path(exe_dir()) / "tiny-model").string();
    if (!fs::exists(fs::path(model_dir) / "model.safetensors")) {
      const std::string tok = default_tokenizer_json();
      if (tok.empty())
        fail(
            "no --model given and the demo model {} does not exist; it needs the tokenizer "
            "(run scripts/fetch_tokenizer.sh, or `dsv4 make-tiny --out DIR --tokenizer FILE`)",
            model_dir);
      spdlog::info("creating the demo model in {} (tiny DeepSeek-V4, random weights: its text is meaningless)",
                   model_dir);
      make_tiny_checkpoint(model_dir, kTinyDemoSeed, tok);
    }
    spdlog::info(
        "serving the embedded demo model (random weights: output text is meaningless); pass --model DIR "
        "to serve a real checkpoint");
  }
  if (!fs::exists(fs::path(model_dir) / "config.json")) fail("model directory '{}' has no config.json", model_dir);
  o.parallel.validate();
  o.parallel.validate_stages(model_dir);
  if (o.parallel.headless) {  // a worker node: its ranks, no HTTP
    LocalRanks others(o.parallel, model_dir, o.device, o.load_format);
    RunnerOptions ro;
    ro.model_dir = model_dir;
    ro.device = o.device;
    ro.load_format = o.load_format;
    ro.dist = o.parallel.dist_config(o.parallel.first_rank());
    ro.pipeline = o.parallel.pipeline();
    spdlog::info("headless node {}: ranks {}..{} of {}, rank 0 at {}:{}", o.parallel.node_rank,
                 o.parallel.first_rank(), o.parallel.first_rank() + o.parallel.ranks_per_node() - 1,
                 o.parallel.world_size(), o.parallel.master_addr, o.parallel.master_port);
    if (run_rank(std::move(ro)) != 0) fail("this node's rank failed (see above)");
    return;
  }

  server::ServerOptions so;
  so.model_dir = fs::absolute(model_dir).lexically_normal().string();
  if (!o.served_model_name.empty())
    so.model_names = o.served_model_name;
  else if (demo)
    so.model_names = {"dsv4-tiny"};
  else {
    fs::path p(so.model_dir);
    so.model_names = {(p.has_filename() ? p : p.parent_path()).filename().string()};  // ".../X/" -> X
  }
  if (so.model_names[0].empty()) so.model_names[0] = "dsv4";
  so.api_key = o.api_key;
  if (so.api_key.empty())
    for (const char* env : {"DSV4_API_KEY", "VLLM_API_KEY"})
      if (const char* v = std::getenv(env); v && *v) {
        so.api_key = v;
        break;
      }
  so.max_body_bytes = parse_size(o.max_request_body_bytes, "--max-request-body-bytes");
  so.max_choices = std::max(1, o.max_num_seqs);
  so.max_stored_responses = std::max<size_t>(1, o.max_stored_responses);
  so.auto_tool_grammar = o.auto_tool_grammar == "on";

  // Sampling defaults: generation_config.json (auto) or a given directory's, then the overrides.
  if (o.generation_config != "vllm") {
    const fs::path gdir = o.generation_config == "auto" ? fs::path(model_dir) : fs::path(o.generation_config);
    if (fs::exists(gdir / "generation_config.json"))
      apply_generation_config(read_json_file(gdir / "generation_config.json"), so.sampling, "generation_config.json");
    else if (o.generation_config != "auto")
      fail("--generation-config: {} has no generation_config.json", gdir.string());
  }
  if (demo && !so.sampling.max_new_tokens) so.sampling.max_new_tokens = kDemoMaxNewTokens;
  if (!o.override_generation_config.empty()) {
    json j;
    try {
      j = json::parse(o.override_generation_config);
    } catch (const json::exception& e) {
      fail("--override-generation-config: {}", e.what());
    }
    apply_generation_config(j, so.sampling, "--override-generation-config");
  }
  so.chat.thinking_mode = o.default_thinking == "on" ? ThinkingMode::Thinking : ThinkingMode::Chat;
  so.chat.reasoning_effort = parse_reasoning_effort(o.default_reasoning_effort);
  if (!o.default_chat_template_kwargs.empty()) {
    try {
      const json kw = json::parse(o.default_chat_template_kwargs);
      if (kw.contains("thinking"))
        so.chat.thinking_mode = kw["thinking"].get<bool>() ? ThinkingMode::Thinking : ThinkingMode::Chat;
      if (kw.contains("reasoning_effort"))
        so.chat.reasoning_effort = kw["reasoning_effort"].is_null()
                                       ? ReasoningEffort::None
                                       : parse_reasoning_effort(kw["reasoning_effort"].get<std::string>());
    } catch (const json::exception& e) {
      fail("--default-chat-template-kwargs: {}", e.what());
    }
  }

  const std::string tok_path = o.tokenizer.empty() ? (fs::path(model_dir) / "tokenizer.json").string() : o.tokenizer;
  if (!fs::exists(tok_path)) fail("tokenizer {} does not exist (pass --tokenizer)", tok_path);
  const Tokenizer tok = Tokenizer::from_file(tok_path);
  if (fs::exists(fs::path(model_dir) / "tokenizer_config.json")) {
    const json tc = read_json_file(fs::path(model_dir) / "tokenizer_config.json");
    so.completions_add_bos = tc.value("add_bos_token", false);
  }

  const int64_t max_len = o.max_model_len > 0 ? o.max_model_len : (demo ? kDemoMaxModelLen : 0);
  ServeSetup setup{tok, model_dir, demo, {}};
  EngineConfig& ec = setup.engine;
  ec.model_dir = model_dir;
  ec.numerics = parse_numerics(o.numerics);
  ec.max_num_seqs = o.max_num_seqs;
  ec.max_num_batched_tokens = o.max_num_batched_tokens;
  ec.max_inter_token_latency_ms = o.max_inter_token_latency_ms;
  if (o.expert_load_window < 0) fail("--expert-load-window {} must be >= 0", o.expert_load_window);
  ec.expert_load_window = o.expert_load_window;
  ec.max_model_len = max_len;
  ec.block_size = o.block_size;
  ec.kv_cache_dtype = o.kv_cache_dtype;
  ec.enable_prefix_caching = o.enable_prefix_caching;
  ec.speculative_config = o.speculative_config;
  ec.kv_cache_memory = o.kv_cache_memory == "auto" ? 0 : parse_size(o.kv_cache_memory, "--kv-cache-memory");
  ec.kv_offload_dir = o.kv_offload_dir;
  if (!o.kv_offload_dir.empty()) ec.kv_offload_size = parse_size(o.kv_offload_size, "--kv-offload-size");
  if (o.gpu_memory_utilization <= 0 || o.gpu_memory_utilization > 1)
    fail("--gpu-memory-utilization {} must be in (0, 1]", o.gpu_memory_utilization);
  ec.gpu_memory_utilization = o.gpu_memory_utilization;
  ec.device = o.device;
  ec.load_format = o.load_format;
  std::unique_ptr<LocalRanks> local_ranks;  // outlives the engine, which tells them to stop
  if (o.parallel.pipeline_parallel_size > 1) {
    // Each stage's KV arena has its own layout; the scheduler's prefix-cache copies address rank 0's only.
    if (!o.kv_offload_dir.empty()) fail("--kv-offload-dir with pipeline parallelism is not supported yet");
    if (ec.enable_prefix_caching) spdlog::warn("prefix caching is off with pipeline parallelism (not supported yet)");
    ec.enable_prefix_caching = false;
  }
  ec.pipeline = o.parallel.pipeline();
  if (o.parallel.world_size() > 1) {
    ec.dist = o.parallel.dist_config(0);
    ec.enable_expert_parallel = o.parallel.enable_expert_parallel;
    ec.eplb = o.parallel.eplb();
    if (!make) local_ranks = std::make_unique<LocalRanks>(o.parallel, model_dir, o.device, o.load_format);
  }
  std::unique_ptr<server::Generator> generator;
  if (make) {
    generator = make(setup);
  } else {
    if (o.load_format != "dummy") server::preload_weights(model_dir);
    generator = std::make_unique<server::EngineGenerator>(std::make_unique<Engine>(ec));
  }

  // Limits that scale with the model: a body that cannot hold a prompt fitting the context is refused
  // from its Content-Length, before anything is parsed or tokenized.
  size_t max_token_bytes = 1;
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    max_token_bytes = std::max(max_token_bytes, tok.token_bytes(id).size());
  so.max_prompt_body_bytes = server::prompt_body_limit(generator->max_model_len(), max_token_bytes);
  so.http = o.http;
  server::JsonLimits jl = o.json;
  // Token-id prompts are one value per token: room for a full context of them, and never below 1M.
  if (jl.max_values == 0) jl.max_values = size_t(std::max<int64_t>(1 << 20, 2 * generator->max_model_len() + 65536));
  server::set_json_limits(jl);
  spdlog::info("limits: request body {} bytes ({} for prompt routes: {} tokens x {} bytes/token), {} connections",
               so.max_body_bytes, std::min(so.max_body_bytes, so.max_prompt_body_bytes), generator->max_model_len(),
               max_token_bytes, so.http.max_connections);

  // A failed tensor-parallel group: requests in flight already got their error; /health says unhealthy.
  // Shut down after a grace period (so those error events reach their clients) and exit non-zero.
  std::atomic<bool> fatal{false};
  generator->on_fatal([&fatal](const std::string&) {
    fatal = true;
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::seconds(2));
      kill(getpid(), SIGTERM);
    }).detach();
  });
  // Shutdown ends running generations through this wrapper, so every stream writes its final event.
  server::TrackedGenerator tracked(*generator);
  // Every connection is a descriptor: raise the soft limit toward the hard one so that --max-connections,
  // not EMFILE, is what refuses clients.
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    const rlim_t want = rlim_t(so.http.max_connections) + 256;
    if (rl.rlim_cur < want) {
      rl.rlim_cur = std::min(want, rl.rlim_max);
      setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < want)
      spdlog::warn("open-file limit {} is below --max-connections {} + 256: accept fails before the cap (ulimit -n)",
                   rl.rlim_cur, so.http.max_connections);
  }
  server::ServerContext ctx(std::move(so), tok, tracked);
  const int threads = o.http_threads > 0 ? o.http_threads : std::max(32, 2 * o.max_num_seqs + 8);
  server::HttpServer http(ctx, threads, [&tracked] { tracked.abort_all(); });
  const int port = http.bind(o.host, o.port);
  std::thread waiter([&http, sigs] {
    int sig = 0;
    sigwait(&sigs, &sig);
    spdlog::info("signal {}: shutting down", sig);
    http.stop();
  });
  spdlog::info("model {} ({}), max model len {}, serving as {}", ctx.opt.model_dir, make ? "test generator" : "engine",
               generator->max_model_len(),
               fmt::join(ctx.opt.model_names, ", "));
  spdlog::info("listening on http://{}:{}", o.host, port);
  http.run();
  pthread_kill(waiter.native_handle(), SIGTERM);  // wakes the waiter when run() ended otherwise
  waiter.join();
  if (fatal) fail("stopped: {}", generator->fatal_error().value_or("the engine failed"));
  spdlog::info("server stopped");
}

void add_serve_options(CLI::App& app, ServeOpts& opts) {
  auto* cmd = &app;
  add_parallel_options(app, opts.parallel, true);
  auto* o = &opts;
  cmd->add_option("--model", o->model,
                  "checkpoint directory (config.json, *.safetensors, tokenizer.json). Default: the demo model "
                  "<dsv4 dir>/tiny-model, created on the fly if missing");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: <model>/tokenizer.json)");
  cmd->add_option("--served-model-name", o->served_model_name,
                  "name(s) clients use in \"model\"; the first is reported (default: the model directory's name, "
                  "dsv4-tiny for the demo)")
      ->expected(1, 16);
  cmd->add_option("--host", o->host, "address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "port to listen on (0: any free port, printed at start)")->capture_default_str();
  cmd->add_option("--max-model-len", o->max_model_len,
                  "prompt + output limit in tokens (default: what the model and KV cache allow; 65536 for the demo)");
  cmd->add_option("--max-num-seqs", o->max_num_seqs, "sequences running at once")->capture_default_str();
  cmd->add_option("--max-inter-token-latency-ms", o->max_inter_token_latency_ms,
                  "while requests decode, cap a step's prefill tokens so it stays within this (0: off; the "
                  "bound adapts to measured step times)")
      ->capture_default_str();
  cmd->add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "tokens per engine step")
      ->capture_default_str();
  cmd->add_option("--expert-load-window", o->expert_load_window,
                  "steps of expert load statistics (tokens per expert and layer) on /metrics and GET /expert_load "
                  "(0: not counted)")
      ->capture_default_str();
  cmd->add_option("--block-size", o->block_size, "KV block size in tokens (multiple of 128)")->capture_default_str();
  cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype,
                  "auto (bf16; f32 under exact numerics) | bf16 | fp8 (also fp8_e4m3, fp8_ds_mla) | f32")
      ->capture_default_str();
  cmd->add_option("--kv-cache-memory", o->kv_cache_memory,
                  "memory for KV blocks + per-sequence state (e.g. 8GiB); auto: the device's free memory after "
                  "weights and workspace, times --gpu-memory-utilization (at most what --max-num-seqs full-length "
                  "sequences can use twice over)")
      ->capture_default_str();
  cmd->add_option("--kv-offload-dir", o->kv_offload_dir,
                  "directory for the prefix cache's disk tier: full KV blocks persist there (checksummed, shared "
                  "safely by servers of any model) and are read back instead of recomputed, across restarts");
  cmd->add_option("--kv-offload-size", o->kv_offload_size,
                  "bytes of block files the --kv-offload-dir may hold (least recently used go first), e.g. 64GiB")
      ->capture_default_str();
  cmd->add_option("--gpu-memory-utilization", o->gpu_memory_utilization,
                  "share of the device's memory the server may take (vLLM's flag; with --kv-cache-memory auto)")
      ->capture_default_str();
  cmd->add_option("--device", o->device, "cpu | cuda | auto (cuda when a GPU is present)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--load-format", o->load_format,
                  "auto (the checkpoint) | dummy (random weights of the checkpoint's config.json, for benchmarks)")
      ->check(CLI::IsMember({"auto", "dummy"}))
      ->capture_default_str();
  cmd->add_flag("--enable-prefix-caching", o->enable_prefix_caching,
                "reuse the KV of shared prompt prefixes (the default, as in vLLM v1)");
  cmd->add_flag_callback(
      "--no-enable-prefix-caching", [o] { o->enable_prefix_caching = false; }, "turn prefix caching off");
  cmd->add_option("--speculative-config", o->speculative_config,
                  "speculative decoding, vLLM's JSON: '{\"method\": \"mtp\", \"num_speculative_tokens\": N}' (N = 1..4; "
                  "the checkpoint's MTP layer, applied recursively) or '{\"method\": \"dspark\"}' (0731 checkpoints' "
                  "DSpark block drafter, block size from config.json); lossless");
  cmd->add_option("--api-key", o->api_key,
                  "require this key on /v1/*, /tokenize and /detokenize (Authorization: Bearer KEY or x-api-key: "
                  "KEY); default: $DSV4_API_KEY or $VLLM_API_KEY, else no auth");
  cmd->add_option("--numerics", o->numerics, "exact | reference (the rounding the model was trained with)")
      ->check(CLI::IsMember({"exact", "reference"}))
      ->capture_default_str();
  cmd->add_option("--generation-config", o->generation_config,
                  "sampling defaults: auto (the model's generation_config.json), vllm (none), or a directory "
                  "holding generation_config.json")
      ->capture_default_str();
  cmd->add_option("--override-generation-config", o->override_generation_config,
                  "JSON over the generation config: temperature, top_p, top_k, min_p, repetition_penalty, "
                  "max_new_tokens (default max_tokens), e.g. '{\"temperature\":0.6,\"top_p\":0.95}'");
  cmd->add_option("--default-thinking", o->default_thinking,
                  "thinking mode when a request does not say (chat_template_kwargs.thinking): on | off")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd->add_option("--default-reasoning-effort", o->default_reasoning_effort,
                  "reasoning effort when a request does not say: none | high | max")
      ->check(CLI::IsMember({"none", "high", "max"}))
      ->capture_default_str();
  cmd->add_option("--default-chat-template-kwargs", o->default_chat_template_kwargs,
                  "vLLM's form of the two above, e.g. '{\"thinking\": true, \"reasoning_effort\": \"max\"}'");
  cmd->add_option("--max-request-body-bytes", o->max_request_body_bytes, "larger request bodies get HTTP 413")
      ->capture_default_str();
  cmd->add_option("--http-threads", o->http_threads,
                  "handler threads (each running request holds one; idle connections hold none; default max(32, 2 x "
                  "max-num-seqs + 8))");
  cmd->add_option("--max-stored-responses", o->max_stored_responses,
                  "Responses API: `store: true` responses kept in memory for previous_response_id and GET (oldest "
                  "evicted first)")
      ->capture_default_str();
  cmd->add_option("--auto-tool-grammar", o->auto_tool_grammar,
                  "tool_choice auto: once the model opens a DSML tool call, its markup and arguments follow the tools' "
                  "schemas (docs/structured-outputs.md); response_format, tool_choice required and named tools are "
                  "always enforced")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  auto* lim = "HTTP limits (docs/security.md)";
  auto& h = o->http;
  cmd->add_option("--max-connections", h.max_connections, "open connections; beyond it new ones get 503 and close")
      ->capture_default_str()->group(lim);
  cmd->add_option("--max-header-bytes", h.max_header_bytes, "request line + headers (431 beyond)")
      ->capture_default_str()->group(lim);
  cmd->add_option("--http-header-timeout", h.header_timeout,
                  "seconds for a whole request head from its first byte (slow-loris); 408 and close beyond")
      ->capture_default_str()->group(lim);
  cmd->add_option("--http-body-timeout", h.body_timeout, "seconds for a whole request body after its head")
      ->capture_default_str()->group(lim);
  cmd->add_option("--http-idle-timeout", h.idle_timeout, "seconds a connection may wait for its next request")
      ->capture_default_str()->group(lim);
  cmd->add_option("--http-write-timeout", h.write_timeout,
                  "seconds a response write may make no progress before the client counts as gone (its "
                  "generation is aborted)")
      ->capture_default_str()->group(lim);
  cmd->add_option("--max-stream-buffer-bytes", h.max_stream_buffer_bytes,
                  "unsent stream output per client before it counts as gone")
      ->capture_default_str()->group(lim);
  cmd->add_option("--shutdown-grace-period", h.shutdown_grace,
                  "seconds running requests may finish after SIGTERM before their streams end with finish_reason "
                  "abort")
      ->capture_default_str()->group(lim);
  cmd->add_option("--http-io-threads", h.io_threads, "event-loop threads")->capture_default_str()->group(lim);
  cmd->add_option("--max-json-depth", o->json.max_depth, "nesting depth of request JSON")
      ->capture_default_str()->group(lim);
  cmd->add_option("--max-json-object-keys", o->json.max_object_keys, "keys in any one object of request JSON")
      ->capture_default_str()->group(lim);
  o->json.max_values = 0;  // 0: from the context (below)
  cmd->add_option("--max-json-values", o->json.max_values,
                  "values in one request's JSON (default: max(1M, 2 x max-model-len + 64K))")
      ->group(lim);
  auto* compat = "vLLM compatibility (accepted, no effect)";
  cmd->add_flag("--trust-remote-code", o->trust_remote_code, "no effect: nothing remote runs")->group(compat);
  cmd->add_flag("--enable-auto-tool-choice", o->enable_auto_tool_choice, "no effect: tool calls are always parsed")
      ->group(compat);
  cmd->add_option("--tool-call-parser", o->tool_call_parser, "no effect: the DeepSeek-V4 DSML parser is built in")
      ->group(compat);
  cmd->add_option("--reasoning-parser", o->reasoning_parser, "no effect: the DeepSeek-V4 reasoning parser is built in")
      ->group(compat);
}

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOpts>();
  auto* cmd =
      app.add_subcommand("serve",
                         "OpenAI- and Anthropic-compatible HTTP server (vLLM's flags where they exist). Without "
                         "--model it serves the embedded tiny demo model (random weights: meaningless text)");
  add_serve_options(*cmd, *o);
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace dsv4::cli
