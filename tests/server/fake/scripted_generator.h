// A Generator that answers every request with a fixed text instead of running a model: the first reply whose
// `when` occurs in the (detokenized) prompt, tokenized with the real tokenizer and streamed one token per
// `token_delay`, then EOS. It exists to test what a random demo model never outputs (reasoning, DSML tool
// calls) through the real HTTP stack and official clients. Script file (`dsv4-test-server --scripted-output`):
//   {"token_delay_ms": 2, "replies": [{"when": "<tool_result>", "text": "It is sunny."}, {"text": "..."}]}
#pragma once
#include <atomic>
#include <chrono>
#include <algorithm>
#include <map>
#include <random>
#include <mutex>
#include <string>
#include <vector>

#include "server/generator.h"

namespace dsv4 {
class Tokenizer;
}

namespace dsv4::server {

struct ScriptedReply {
  std::string when;  // empty: matches every prompt
  std::string text;
};

class ScriptedGenerator final : public Generator {
 public:
  ScriptedGenerator(const Tokenizer& tok, std::vector<ScriptedReply> replies, int64_t max_model_len,
                  std::chrono::milliseconds token_delay);
  static std::unique_ptr<ScriptedGenerator> from_file(const std::string& path, const Tokenizer& tok,
                                                    int64_t max_model_len);

  // Each output then carries 1..max_tokens tokens (seeded), so that text reaches the server in pieces of
  // random size, as from an engine that decodes several tokens per step.
  void set_burst(int max_tokens, uint64_t seed) {
    burst_ = std::max(1, max_tokens);
    burst_seed_ = seed;
  }

  std::unique_ptr<OutputStream> submit(std::vector<int32_t> prompt, SamplingParams params) override;
  void abort(uint64_t id) override;
  EngineStats stats() const override;
  int64_t max_model_len() const override { return max_len_; }
  int64_t vocab_size() const override;
  int32_t eos_token_id() const override { return 1; }

  struct State;  // one request's shared state (the stream reads it, abort() flags it)

 private:
  const Tokenizer& tok_;
  std::vector<ScriptedReply> replies_;
  int64_t max_len_;
  std::chrono::milliseconds delay_;
  int burst_ = 1;
  uint64_t burst_seed_ = 0;
  mutable std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<State>> live_;
  uint64_t next_id_ = 1;
  uint64_t prompt_total_ = 0;
  std::atomic<uint64_t> generated_total_{0};
  friend class ScriptedStream;
};

}  // namespace dsv4::server
