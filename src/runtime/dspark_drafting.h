// Drafting with the DSpark block drafter (spec §7.1; the model side is model/dspark.cpp): one block pass over
// every request's block [t, noise...], then the drafts one position at a time, each from the block's logits for
// that position plus the Markov head's term for the draft before it, sampled with the request's sampling
// parameters (argmax at temperature 0) from the drafter's own RNG. Nothing here writes KV: the drafter's rings
// hold what the main model's steps wrote.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/model_runner.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"

namespace dsv4 {

struct DSparkJob {
  int32_t slot = 0;
  int64_t start = 0;     // positions [0, start) computed; the block starts here with the last token
  int32_t last = 0;      // the token at `start` (sampled, not computed yet)
  int k = 0;             // drafts to make, 1 .. block size
  SamplerState sampler;  // the request's sampler, advanced over the drafts as they are drawn
  SamplerRng* rng = nullptr;
  std::vector<Draft>* out = nullptr;  // receives the k drafts
};

// Runs the passes on `runner` (plan step numbers from next_step on) and fills every job's drafts.
void dspark_draft(ModelRunner& runner, std::vector<DSparkJob>& jobs, uint64_t& next_step);

}  // namespace dsv4
