// Token sampling for the serving runtime, one SamplerState per request. Semantics follow vLLM:
//   1. penalties on the raw logits: repetition (prompt + output tokens; positive logits divided, the rest
//      multiplied), then frequency and presence (output tokens only: l -= f*count + p*(count > 0));
//   2. temperature < 1e-5 is greedy: argmax of the penalized logits, ties to the lowest id;
//   3. otherwise l / T, then top_k, then top_p (smallest highest-probability set with mass >= top_p over
//      the top_k survivors, at least one token), then min_p (drop p < min_p * p_max); sample from the
//      renormalized rest with the request's own RNG.
// Ties in every ranking (top_k, top_p, logprobs) go to the lowest token id, so results are deterministic.
// Logprobs are vLLM's default "raw_logprobs": log-softmax of the logits exactly as the model produced them,
// before penalties and temperature, so they describe the model, not the sampling transform.
// Structured outputs (params.grammar, runtime/grammar/): before step 1 every token the grammar does not allow
// at this point gets -inf, so penalties, temperature, top_k/top_p/min_p and greedy all choose among the
// allowed tokens only; the sampled token advances the request's GrammarMatcher. Logprobs stay raw (the
// model's distribution, not the constrained one): a sampled token's rank may be > 1 under a grammar.
// A SamplerState is not thread-safe, but distinct states may sample concurrently (scratch is thread_local).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/grammar/matcher.h"

namespace dsv4 {

struct SamplingParams {
  float temperature = 1.0f;   // 0 (or < 1e-5) = greedy
  float top_p = 1.0f;         // (0, 1]; 1 = off
  int top_k = -1;             // -1 or 0 = off
  float min_p = 0.0f;         // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float frequency_penalty = 0.0f;   // [-2, 2]
  float presence_penalty = 0.0f;    // [-2, 2]
  std::optional<uint64_t> seed;     // same seed + same logits -> same tokens; none = fresh random
  int max_tokens = 16;              // vLLM's default; the server sets it from the request or context room
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;    // stop strings (empty strings are ignored)
  bool include_stop_str_in_output = false;
  bool ignore_eos = false;
  int logprobs = -1;  // -1 off; 0 = the sampled token's logprob; N <= 20 = plus the top N
  // Constrained decoding (structured outputs): only tokens the grammar allows are sampled. Shared,
  // immutable from the request's view; each SamplerState keeps its own matcher.
  std::shared_ptr<const grammar::CompiledGrammar> grammar;

  // Throws dsv4::Error with a user-facing message (the server answers 400). vocab_size > 0 also checks
  // stop_token_ids are in range.
  void validate(int64_t vocab_size = 0) const;
  bool greedy() const { return temperature < kGreedyEpsilon; }
  static constexpr float kGreedyEpsilon = 1e-5f;  // vLLM's _SAMPLING_EPS
  static constexpr int kMaxLogprobs = 20;
};

struct LogprobEntry {
  int32_t token = 0;
  float logprob = 0;
};

struct SampleResult {
  int32_t token = 0;
  // Filled when params.logprobs >= 0:
  bool has_logprobs = false;
  float logprob = 0;               // raw log-softmax of the sampled token
  int rank = 0;                    // 1 = most likely; ties ranked by lowest id first
  std::vector<LogprobEntry> top;   // params.logprobs entries, logprob descending, ties lowest id first
};

struct TokenProb {
  int32_t token = 0;
  float prob = 0;
};

// Small, fast, seedable generator (SplitMix64): 8 bytes of state per request.
class SamplerRng {
 public:
  explicit SamplerRng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  static uint64_t random_seed();  // for requests without a seed: distinct per call, process-wide
 private:
  uint64_t s_;
};

class SamplerState {
 public:
  // `prompt` feeds the repetition penalty (only kept when that penalty is on). Params must be valid.
  SamplerState(SamplingParams params, std::span<const int32_t> prompt = {});

  const SamplingParams& params() const { return params_; }
  int64_t num_generated() const { return num_generated_; }

  // Picks the next token from one vocab-sized row of logits and records it as generated output (for the
  // penalties). Uses exactly one RNG draw when not greedy, none when greedy, so a seeded request's tokens
  // depend only on its own logits, never on what else is in the batch.
  SampleResult sample(std::span<const float> logits);

  // Records a generated token that did not come from sample() (e.g. forced or restored output). Under a
  // grammar the token must be allowed (dsv4::Error otherwise).
  void record_output(int32_t token);

  // A draw from the request's RNG (speculative verification: acceptance tests and residual samples).
  double draw_uniform() { return rng_.uniform(); }

  // The request's grammar position (null without a grammar). Speculative decoding checks drafts on a copy
  // (GrammarMatcher is copyable: a copy is a rollback point) and assigns the accepted one back.
  grammar::GrammarMatcher* grammar_matcher() { return matcher_ ? &*matcher_ : nullptr; }

  // The pieces of sample(), exposed for tests and debugging:
  void apply_penalties(std::span<float> logits) const;  // in place, step 1 above
  // The final distribution sample() draws from: kept tokens with normalized probabilities (greedy: the
  // argmax with probability 1). Order unspecified.
  std::vector<TokenProb> distribution(std::span<const float> logits) const;

 private:
  struct Prepared;
  Prepared prepare(std::span<const float> logits) const;  // steps 1-3 into thread-local scratch

  SamplingParams params_;
  SamplerRng rng_;
  int64_t num_generated_ = 0;
  bool track_seen_ = false, track_counts_ = false;
  std::vector<uint64_t> seen_bits_;             // prompt + output membership, for repetition_penalty
  std::vector<int32_t> seen_;                   // the same tokens, listed (distinct)
  std::unordered_map<int32_t, int32_t> counts_;  // output token -> count, for frequency/presence
  std::optional<grammar::GrammarMatcher> matcher_;
};

// Fills result.logprob/rank/top for `token` from the log-softmax of `logits` (NaN counts as -inf); the top
// list has min(top_count, vocab) entries.
void compute_logprobs(std::span<const float> logits, int32_t token, int top_count, SampleResult& result);

}  // namespace dsv4
