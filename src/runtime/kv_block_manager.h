// KV accounting for the scheduler: block ids with reference counts (a block can be shared by the prefix
// cache and several sequences) and sequence slots (fixed per-sequence state). It counts, never touches bytes:
// those live in the model runner's KV arena (model/kv_cache.h), one per rank.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv4 {

class BlockPool {
 public:
  explicit BlockPool(int64_t capacity);
  int32_t allocate();  // refcount 1, or -1 when none is free
  void retain(int32_t b);
  void release(int32_t b);  // free at refcount 0
  int refcount(int32_t b) const { return refs_[size_t(b)]; }
  int64_t capacity() const { return int64_t(refs_.size()); }
  int64_t used() const { return used_; }
  int64_t free_blocks() const { return capacity() - used_; }

 private:
  std::vector<int> refs_;
  std::vector<int32_t> free_;
  int64_t used_ = 0;
};

class SlotPool {
 public:
  explicit SlotPool(int n);
  int32_t allocate();  // -1 when none is free
  void release(int32_t s);
  int free_slots() const { return int(free_.size()); }

 private:
  std::vector<int32_t> free_;
  std::vector<bool> used_;
};

// One sequence's KV: its slot, its blocks from position 0, how many positions are computed.
struct SequenceKv {
  int32_t slot = -1;
  std::vector<int32_t> blocks;
  int64_t pos = 0;

  static int64_t blocks_for(int64_t tokens, int block_tokens) { return (tokens + block_tokens - 1) / block_tokens; }
  // Allocates blocks so positions [0, tokens) fit; false (nothing allocated) when the pool is short.
  bool ensure(BlockPool& pool, int64_t tokens, int block_tokens);
  void release(BlockPool& pool, SlotPool& slots);  // every block and the slot
  // Gives back the blocks past what positions [0, tokens) need (rejected speculative positions).
  void truncate(BlockPool& pool, int64_t tokens, int block_tokens);
};

}  // namespace dsv4
