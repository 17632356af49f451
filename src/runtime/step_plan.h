// The scheduler's decision for one step, as plain data: what the model computes (the batch) and the KV copies
// that must happen first (restoring a sequence's window ring and compressor state from a prefix-cache hit).
// Serializable, so a multi-rank deployment can send it to every rank; the runner executes it unchanged.
#pragma once
#include <cstdint>
#include <span>
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

// Pipeline parallelism's micro-batches: at most n contiguous runs of `batch`'s items (each non-empty, their
// tokens as even as whole items allow), in item order, so their logits concatenated are the batch's.
std::vector<StepBatch> split_micro_batches(const StepBatch& batch, int n);

// Copies that resume sequence slot `slot` at the end of `block` (position `end`, a block end): the window ring
// from the block's tail and the ratio-4 compressors' last tokens from its snapshots (layout.with_tail()).
void append_resume_copies(const KvLayout& layout, int32_t slot, int32_t block, int64_t end,
                          std::vector<ArenaCopy>& out);

// Speculative decoding's rollback: what positions [first, first + n) of KV layers [l0, l1) write for a
// sequence (window ring entries, compressor token records, completed entries and indexer keys, block-end tails
// and snapshots), each paired with a place in the slot's save area from byte `area` on. Copying every `save`
// before the step and putting back those at positions >= p afterwards leaves the arena as if positions >= p
// had never been computed.
struct SpecSave {
  int64_t pos = 0;
  ArenaCopy save;  // src: the arena range, dst: its copy in the save area
};
std::vector<SpecSave> spec_saves(const KvLayout& layout, int32_t slot, std::span<const int32_t> blocks, int l0,
                                 int l1, int64_t first, int n, int64_t area = 0);
void append_spec_saves(std::span<const SpecSave> saves, std::vector<ArenaCopy>& out);
void append_spec_restores(std::span<const SpecSave> saves, int64_t from, std::vector<ArenaCopy>& out);

}  // namespace dsv4
