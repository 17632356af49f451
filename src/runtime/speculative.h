// Speculative decoding (issue 16): the `--speculative-config` JSON, and the lossless verification rule. Drafts
// are sampled from the drafter's distribution q with the request's sampling parameters; the target's
// distribution p (the same parameters, penalties over the same history) accepts draft d with probability
// min(1, p(d) / q(d)), otherwise the token is drawn from normalize(max(0, p - q)), and after N accepted drafts one
// bonus token is sampled from the target. Outputs then follow the target's distribution exactly; at temperature 0
// both are point masses and the output is the greedy one, token for token.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/sampler.h"

namespace dsv4 {

struct SpeculativeConfig {
  std::string method;  // "mtp" or "dspark" (empty: off)
  // Drafts per step. dspark: 0 (or the user's value) until resolve_speculative_config sets the block size.
  int num_speculative_tokens = 0;
  bool enabled() const { return !method.empty(); }
  bool dspark() const { return method == "dspark"; }
};

// vLLM's flag: '{"method": "mtp", "num_speculative_tokens": N}', N = 1..4, or '{"method": "dspark"}' (a
// num_speculative_tokens, if given, must be the checkpoint's block size: resolve_speculative_config checks it).
// Throws dsv4::Error with a message for the user. Empty text: off.
SpeculativeConfig parse_speculative_config(const std::string& json);
// What the checkpoint must provide (an MTP layer, or a DSpark drafter whose block size is the draft count);
// returns the config with DSpark's draft count set; throws dsv4::Error otherwise.
SpeculativeConfig resolve_speculative_config(SpeculativeConfig sc, const ModelConfig& mc);

// One draft: its token and the distribution it was drawn from (the sampler's kept tokens).
struct Draft {
  int32_t token = 0;
  std::vector<TokenProb> q;
};

// Draws a token from a distribution with the uniform u in [0, 1) (inverse CDF in the given order).
int32_t draw_token(std::span<const TokenProb> dist, double u);

// Verifies drafts against the target's logits rows ([drafts + 1, vocab]: row k predicts the token after draft
// k - 1's position). Records every emitted token in `sampler` (penalties, grammar) and returns them: the
// accepted drafts, then the resampled or bonus token. `accepted` gets the number of accepted drafts.
std::vector<SampleResult> verify_drafts(SamplerState& sampler, std::span<const float> logits, int64_t vocab,
                                        std::span<const Draft> drafts, int* accepted);

}  // namespace dsv4
