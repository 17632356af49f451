// The serving engine: the server's only entry point. Requests go in as token ids + sampling parameters;
// each step() runs one continuous-batching iteration and returns what every request produced.
// Single-threaded by design; EngineLoop (engine_loop.h) runs it on its own thread for the server.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/dsv4_model.h"
#include "runtime/kv_disk_store.h"
#include "runtime/model_runner.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "runtime/step_plan.h"

namespace dsv4 {

class Tokenizer;  // src/tokenizer: used for stop strings and text output when given

struct EngineConfig {
  std::string model_dir;
  std::string device = "auto";           // cpu | cuda | auto (cuda when a GPU is present)
  std::string load_format = "auto";      // auto (the checkpoint) | dummy (random weights, benchmarks)
  Numerics numerics = Numerics::Reference;
  int max_num_seqs = 64;                 // running sequences at once
  int max_num_batched_tokens = 2048;     // tokens per step (decodes + prefill chunks)
  int64_t max_model_len = 0;             // prompt + output limit; 0 = min(max_position_embeddings, what fits)
  int block_size = 256;                  // KV block, in tokens (multiple of 128)
  std::string kv_cache_dtype = "bf16";   // bf16 | fp8
  bool enable_prefix_caching = true;   // as in vLLM v1 (`dsv4 serve` reads its defaults from here)
  // Disk tier of the prefix cache (runtime/kv_offload.h): full blocks persist in this directory, at most
  // kv_offload_size bytes of files; empty = off.
  std::string kv_offload_dir;
  uint64_t kv_offload_size = 0;
  int kv_offload_checkpoint_blocks = 16;  // resume snapshots on disk every this many blocks (and at sequence ends)
  // Bytes for KV blocks + per-sequence state; 0 = from the device's free memory after weights and workspace
  // (times gpu_memory_utilization), capped at what max_num_seqs full-length sequences can use twice over.
  uint64_t kv_cache_memory = 0;
  double gpu_memory_utilization = 0.9;
  // While requests decode, a step's prefill tokens are capped so its predicted time stays within this
  // (runtime/latency_budget.h); 0 = off (the step token budget alone bounds a step).
  double max_inter_token_latency_ms = 0;
  // Tensor parallelism (this process is rank 0 when dist.world_size > 1; the others run a worker).
  dist::DistConfig dist;
  bool enable_expert_parallel = false;
  EplbOptions eplb;  // RunnerOptions::eplb
  PipelineOptions pipeline;  // stages of dist's ranks (RunnerOptions::pipeline)
  int local_rank = 0;
  // vLLM's --speculative-config JSON ('{"method": "mtp", "num_speculative_tokens": N}'); empty = off.
  std::string speculative_config;
  // Tests: sees (and may replace or drop) each request's drafts after the drafter made them, before they are
  // verified: (request id, its tokens so far, the drafts). At most as many drafts as were made.
  std::function<void(uint64_t, const std::vector<int32_t>&, std::vector<Draft>&)> draft_hook;
  int expert_load_window = 1000;  // steps of expert load statistics (RunnerOptions::expert_load_window); 0: off
};

// The model runner's options for an engine configuration (rank 0's engine, and the other ranks' workers).
RunnerOptions runner_options(const EngineConfig& c);

// Per generated token: its logprob, rank and the top alternatives (the sampler's result).
using TokenLogprobs = SampleResult;
using TokenLogprob = LogprobEntry;

enum class FinishReason { None, Stop, Length, Abort, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "abort", "error"

struct RequestOutput {
  uint64_t id = 0;
  std::vector<int32_t> new_tokens;        // generated since the previous output of this request
  std::vector<TokenLogprobs> logprobs;    // one per new token when requested
  std::string text;                       // detokenized delta (stop-string aware) when a tokenizer is set
  FinishReason finish = FinishReason::None;
  std::string stop_reason;                // the matched stop string, or the stop token id as text
  std::string error;                      // FinishReason::Error
  int64_t prompt_tokens = 0, cached_tokens = 0, generated_tokens = 0;
  bool finished() const { return finish != FinishReason::None; }
};

struct EngineStats {
  int running = 0, waiting = 0;
  uint64_t kv_bytes_used = 0, kv_bytes_total = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  int64_t kv_blocks_reusable = 0;  // of the used: held only by the prefix cache (evictable on demand)
  uint64_t bytes_per_block = 0, bytes_per_sequence = 0;  // fixed per-sequence state (window rings etc.)
  uint64_t prefix_queries = 0, prefix_hits = 0;  // in tokens (hits include blocks restored from disk)
  bool kv_offload = false;
  uint64_t prefix_disk_hits = 0;  // tokens restored from disk into the prefix cache
  KvDiskStats disk;               // the disk tier's own counters (bytes, restore time, bad files)
  uint64_t preemptions = 0;
  uint64_t prompt_tokens = 0, generation_tokens = 0;  // totals
  // Speculative decoding (vLLM's spec_decode_* counters): verify steps, drafts proposed, drafts accepted, and
  // accepted drafts by position in the draft.
  uint64_t spec_num_drafts = 0, spec_num_draft_tokens = 0, spec_num_accepted_tokens = 0;
  std::vector<uint64_t> spec_accepted_per_pos;
  ExpertLoadSnapshot expert_load;  // window 0 when not counted
};

class Engine {
 public:
  explicit Engine(EngineConfig cfg, const Tokenizer* tokenizer = nullptr);
  ~Engine();

  const ModelConfig& model_config() const;
  const EngineConfig& config() const;
  int64_t max_model_len() const;

  // Validates (prompt not empty, ids in range, prompt + max_tokens <= max_model_len, sampling values) and
  // throws dsv4::Error with a user-facing message; otherwise queues the request and returns its id.
  uint64_t add_request(std::vector<int32_t> prompt, SamplingParams params);
  // Finishes the request with FinishReason::Abort and frees its KV at once (its last output says so).
  void abort(uint64_t id);
  // The validation add_request does, without queueing; safe from any thread.
  void validate(const std::vector<int32_t>& prompt, const SamplingParams& params) const;
  // One scheduler iteration; returns an output for every request that produced tokens or finished.
  // Equivalent to complete(execute(schedule())).
  std::vector<RequestOutput> step();
  // The same iteration in three parts, so a loop can take submits and aborts while the model computes:
  // schedule() and complete() change the engine's state; execute() only runs the plan on the model runner.
  // Between schedule() and complete() the engine must not be called otherwise.
  StepPlan schedule();
  StepResult execute(const StepPlan& plan);
  std::vector<RequestOutput> complete(const StepResult& result);
  // After execute() failed: forgets the plan in flight (its requests' device state is unknown; abort them).
  void discard_step();
  bool has_work() const;
  // Multi-rank: proves the other ranks are alive (throws dist::PeerError); the engine loop calls it while idle.
  void heartbeat();
  bool distributed() const;
  EngineStats stats() const;
  ModelRunner& runner();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv4
