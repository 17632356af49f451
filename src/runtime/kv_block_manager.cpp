#include "runtime/kv_block_manager.h"

#include "core/error.h"

namespace dsv4 {

BlockPool::BlockPool(int64_t capacity) : refs_(size_t(capacity), 0) {
  free_.reserve(size_t(capacity));
  for (int64_t b = capacity - 1; b >= 0; --b) free_.push_back(int32_t(b));  // low ids first
}

int32_t BlockPool::allocate() {
  if (free_.empty()) return -1;
  const int32_t b = free_.back();
  free_.pop_back();
  refs_[size_t(b)] = 1;
  ++used_;
  return b;
}

void BlockPool::retain(int32_t b) {
  DSV4_CHECK(b >= 0 && b < capacity() && refs_[size_t(b)] > 0, "KV block {} retained while free", b);
  ++refs_[size_t(b)];
}

void BlockPool::release(int32_t b) {
  DSV4_CHECK(b >= 0 && b < capacity() && refs_[size_t(b)] > 0, "KV block {} released twice", b);
  if (--refs_[size_t(b)] == 0) {
    free_.push_back(b);
    --used_;
  }
}

SlotPool::SlotPool(int n) : used_(size_t(n), false) {
  for (int s = n - 1; s >= 0; --s) free_.push_back(s);
}

int32_t SlotPool::allocate() {
  if (free_.empty()) return -1;
  const int32_t s = free_.back();
  free_.pop_back();
  used_[size_t(s)] = true;
  return s;
}

void SlotPool::release(int32_t s) {
  DSV4_CHECK(s >= 0 && size_t(s) < used_.size() && used_[size_t(s)], "sequence slot {} released twice", s);
  used_[size_t(s)] = false;
  free_.push_back(s);
}

bool SequenceKv::ensure(BlockPool& pool, int64_t tokens, int block_tokens) {
  const int64_t need = blocks_for(tokens, block_tokens) - int64_t(blocks.size());
  if (need <= 0) return true;
  if (pool.free_blocks() < need) return false;
  for (int64_t i = 0; i < need; ++i) blocks.push_back(pool.allocate());
  return true;
}

void SequenceKv::truncate(BlockPool& pool, int64_t tokens, int block_tokens) {
  const size_t keep = size_t(blocks_for(tokens, block_tokens));
  while (blocks.size() > keep) {
    pool.release(blocks.back());
    blocks.pop_back();
  }
}

void SequenceKv::release(BlockPool& pool, SlotPool& slots) {
  for (int32_t b : blocks) pool.release(b);
  blocks.clear();
  if (slot >= 0) slots.release(slot);
  slot = -1;
  pos = 0;
}

}  // namespace dsv4
