// The engine's side of the disk tier: which blocks a sequence saves and restores, and how restored bytes get
// into the KV arena and the prefix cache. The store (runtime/kv_disk_store.h) does the files and threads; the
// scheduler (engine.cpp) only calls these hooks.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/kv_block_manager.h"
#include "runtime/kv_disk_store.h"
#include "runtime/prefix_cache.h"

namespace dsv4 {

class ModelRunner;

// What must match for a block file to be reused: build, model config and checkpoint, KV dtype, numerics,
// backend and every offset of the block layout.
std::string kv_disk_identity(ModelRunner& runner);

class KvOffload {
 public:
  KvOffload(ModelRunner& runner, BlockPool& pool, PrefixCache& prefix, const std::string& dir, uint64_t max_bytes);
  KvDiskStore& store() { return *store_; }
  const KvDiskStore& store() const { return *store_; }

  // Block `index` of `tokens` (chain hash `hash`, its parent's `parent`) is full and was just cached in arena
  // block `block`: copies it to the host and queues the write unless the file exists.
  void save(std::span<const int32_t> tokens, int64_t index, uint64_t parent, uint64_t hash, int32_t block);
  // Starts reading the blocks after the first `have` of `tokens` (up to max_blocks) that are on disk; null
  // when the next block is not there.
  std::shared_ptr<KvDiskRead> probe(std::span<const int32_t> tokens, int64_t have, int64_t max_blocks);
  // A finished read's blocks (indexes first, first+1, ...) into the arena and the prefix cache. Returns their
  // ids with one reference each for the caller (a pin until the sequence takes them); stops when the pool has
  // no block to spare.
  std::vector<int32_t> install(const KvDiskRead& r, std::span<const int32_t> tokens, int64_t first);
  uint64_t restored_tokens() const { return restored_tokens_; }

 private:
  ModelRunner& runner_;
  BlockPool& pool_;
  PrefixCache& prefix_;
  std::unique_ptr<KvDiskStore> store_;
  uint64_t restored_tokens_ = 0;
};

}  // namespace dsv4
