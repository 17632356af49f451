// The scheduler's decision for one step, as plain data: what the model computes (the batch) and the KV copies
// that must happen first (restoring a sequence's window ring and compressor state from a prefix-cache hit).
// Serializable, so a multi-rank deployment can send it to every rank; the runner executes it unchanged.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/kv_cache.h"
#include "model/step_batch.h"

namespace dsv4 {

struct ArenaCopy {
  int64_t src = 0, dst = 0, bytes = 0;  // byte offsets in the KV arena
};

struct StepPlan {
  uint64_t step = 0;
  StepBatch batch;
  std::vector<ArenaCopy> copies;  // before the forward pass

  std::string serialize() const;
  static StepPlan deserialize(const std::string& bytes);  // throws dsv4::Error on malformed input
};

// Copies that resume sequence slot `slot` at the end of `block` (position `end`, a block end): the window ring
// from the block's tail and the ratio-4 compressors' last tokens from its snapshots (layout.with_tail()).
void append_resume_copies(const KvLayout& layout, int32_t slot, int32_t block, int64_t end,
                          std::vector<ArenaCopy>& out);

}  // namespace dsv4
