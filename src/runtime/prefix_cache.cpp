#include "runtime/prefix_cache.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>

namespace dsv4 {

PrefixCache::~PrefixCache() {
  for (auto& [h, e] : entries_) pool_.release(e.block);
}

uint64_t PrefixCache::chain_hash(uint64_t parent, std::span<const int32_t> block_tokens) {
  return XXH3_64bits_withSeed(block_tokens.data(), block_tokens.size_bytes(), parent ^ 0x9e3779b97f4a7c15ull);
}

uint64_t PrefixCache::hash_upto(std::span<const int32_t> tokens, int64_t blocks) const {
  const int64_t bt = block_tokens_;
  uint64_t h = 0;
  for (int64_t k = 0; k < blocks; ++k) h = chain_hash(h, tokens.subspan(size_t(k * bt), size_t(bt)));
  return h;
}

std::vector<int32_t> PrefixCache::lookup(std::span<const int32_t> tokens, int64_t max_blocks,
                                         std::vector<std::pair<int32_t, bool>>* chain) {
  const int64_t bt = block_tokens_;
  std::vector<int32_t> out;
  size_t resumable = 0;  // out's length up to the last resumable block
  if (chain) chain->clear();
  uint64_t h = 0;
  for (int64_t k = 0; k < max_blocks && (k + 1) * bt <= int64_t(tokens.size()); ++k) {
    auto blk = tokens.subspan(size_t(k * bt), size_t(bt));
    uint64_t parent = h;
    h = chain_hash(h, blk);
    auto it = entries_.find(h);
    if (it == entries_.end() || it->second.parent != parent || !std::equal(blk.begin(), blk.end(), it->second.tokens.begin()))
      break;
    lru_.splice(lru_.end(), lru_, it->second.lru);
    out.push_back(it->second.block);
    if (it->second.resumable) resumable = out.size();
    if (chain) chain->emplace_back(it->second.block, it->second.resumable);
  }
  out.resize(resumable);
  return out;
}

bool PrefixCache::insert(std::span<const int32_t> tokens, int64_t index, int32_t block, bool resumable) {
  const int64_t bt = block_tokens_;
  uint64_t parent = hash_upto(tokens, index);
  auto blk = tokens.subspan(size_t(index * bt), size_t(bt));
  uint64_t h = chain_hash(parent, blk);
  auto it = entries_.find(h);
  if (it != entries_.end()) {
    if (it->second.resumable || !resumable) return false;
    pool_.retain(block);
    pool_.release(it->second.block);
    it->second.block = block;
    it->second.resumable = true;
    lru_.splice(lru_.end(), lru_, it->second.lru);
    return true;
  }
  pool_.retain(block);
  lru_.push_back(h);
  entries_.emplace(h, Entry{block, std::vector<int32_t>(blk.begin(), blk.end()), parent, std::prev(lru_.end()), resumable});
  return true;
}

int64_t PrefixCache::evict(int64_t n) {
  int64_t freed = 0;
  for (auto it = lru_.begin(); it != lru_.end() && freed < n;) {
    auto e = entries_.find(*it);
    if (pool_.refcount(e->second.block) == 1) {
      pool_.release(e->second.block);
      entries_.erase(e);
      it = lru_.erase(it);
      ++freed;
    } else {
      ++it;
    }
  }
  return freed;
}

int64_t PrefixCache::reusable() const {
  int64_t n = 0;
  for (const auto& [h, e] : entries_) n += pool_.refcount(e.block) == 1;
  return n;
}

}  // namespace dsv4
