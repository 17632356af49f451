// The model without a scheduler: a few sequences advanced by explicit chunks (scoring, `dsv4 generate`,
// tests). Same runner, plans and KV arena as the serving engine; KV sized up front for max_tokens per sequence.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/kv_block_manager.h"
#include "runtime/model_runner.h"

namespace dsv4 {

struct SessionOptions {
  std::string model_dir;
  std::string device = "auto";
  Numerics numerics = Numerics::Reference;
  std::string kv_dtype = "auto";  // auto = lossless for the numerics (f32 exact, bf16 reference)
  int block_tokens = 256;
  bool prefix_tails = false;  // needed by resume_from()
  int n_sequences = 1;
  int64_t max_tokens = 4096;     // positions per sequence
  int64_t max_step_tokens = 4096;  // tokens per forward call (all chunks together)
  std::function<std::unique_ptr<Backend>()> backend_factory;  // see RunnerOptions
  dist::DistConfig dist;          // rank 0 of a tensor-parallel group (see RunnerOptions)
  bool expert_parallel = false;
  EplbOptions eplb;
  PipelineOptions pipeline;
  int expert_load_window = 0;  // see RunnerOptions
};

class Session {
 public:
  explicit Session(SessionOptions o);
  ~Session();

  struct Chunk {
    int seq = 0;
    std::span<const int32_t> tokens;
    LogitRows logits = LogitRows::Last;
  };
  int new_sequence();  // throws when n_sequences are in use
  void release(int seq);
  int64_t pos(int seq) const { return seqs_.at(size_t(seq)).pos; }
  const std::vector<int32_t>& blocks(int seq) const { return seqs_.at(size_t(seq)).blocks; }
  // Starts the (new, empty) sequence `dst` on the first n full blocks of `src`, shared (a prefix-cache hit).
  void resume_from(int dst, int src, int64_t n_blocks);
  // Advances each chunk's sequence by its tokens; appends the requested logits rows ([rows, vocab]) in order.
  void forward(std::span<const Chunk> chunks, std::vector<float>& logits, ForwardStats* stats = nullptr);

  const ModelConfig& config() const { return runner_->config(); }
  ModelRunner& runner() { return *runner_; }
  const BlockPool& pool() const { return *pool_; }

 private:
  SessionOptions opts_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<SlotPool> slots_;
  std::vector<SequenceKv> seqs_;
  std::vector<bool> live_;
  std::vector<ArenaCopy> pending_copies_;
  uint64_t step_ = 0;
};

}  // namespace dsv4
