// Shared by the engine-level tests: deterministic prompts and greedy sampling parameters.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/sampler.h"

namespace dsv4::test {

// `len` token ids from a seeded LCG, in [2, 2002): clear of BOS/EOS and inside every test model's vocabulary.
inline std::vector<int32_t> prompt_of(int len, int seed) {
  std::vector<int32_t> p(static_cast<size_t>(len));
  uint32_t s = uint32_t(seed) * 2654435761u + 1;
  for (auto& t : p) {
    s = s * 1664525u + 1013904223u;
    t = int32_t((s >> 8) % 2000) + 2;
  }
  return p;
}

inline SamplingParams greedy(int n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = n;
  p.ignore_eos = true;
  return p;
}

}  // namespace dsv4::test
