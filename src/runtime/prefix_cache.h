// Prefix caching: full KV blocks keyed by the chained hash of every token up to their end. A cached block
// holds its compressed entries plus the window/compressor snapshot at its end (KvLayout::with_tail), so a
// hit resumes exactly where the cached sequence stood. Blocks restored from disk without their snapshot
// (runtime/kv_offload.h) are cached as not resumable: a hit may pass through them, never end at one. The cache keeps one reference on each block;
// blocks nobody else references are evicted least-recently-used first when the pool runs short.
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "runtime/kv_block_manager.h"

namespace dsv4 {

class PrefixCache {
 public:
  PrefixCache(BlockPool& pool, int block_tokens) : pool_(pool), block_tokens_(block_tokens) {}
  ~PrefixCache();

  static uint64_t chain_hash(uint64_t parent, std::span<const int32_t> block_tokens);

  // Longest run of cached full blocks that prefixes `tokens` (at most max_blocks) and ends at a resumable
  // one; refreshes their LRU rank. With `chain`, also the whole run (resumable or not) and each one's flag.
  std::vector<int32_t> lookup(std::span<const int32_t> tokens, int64_t max_blocks,
                              std::vector<std::pair<int32_t, bool>>* chain = nullptr);
  // Registers block `index` of a sequence whose tokens are `tokens` (at least (index+1)*block_tokens long);
  // no-op (false) if an identical block is already cached, unless that one is not resumable and this one is
  // (it replaces it).
  bool insert(std::span<const int32_t> tokens, int64_t index, int32_t block, bool resumable = true);
  // The chain hash of the first `blocks` full blocks of `tokens` (0 for none): the key of block blocks-1.
  uint64_t hash_upto(std::span<const int32_t> tokens, int64_t blocks) const;
  int block_tokens() const { return int(block_tokens_); }
  // Frees up to n blocks that only the cache references; returns how many it freed.
  int64_t evict(int64_t n);
  int64_t size() const { return int64_t(entries_.size()); }
  // Cached blocks that no sequence references: kept for reuse, free for the taking (evict) when needed.
  int64_t reusable() const;

 private:
  struct Entry {
    int32_t block;
    std::vector<int32_t> tokens;  // the block's own tokens, to rule out hash collisions
    uint64_t parent;
    std::list<uint64_t>::iterator lru;
    bool resumable = true;
  };
  BlockPool& pool_;
  int64_t block_tokens_;
  std::unordered_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;  // front = least recently used
};

}  // namespace dsv4
