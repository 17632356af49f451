// The engine's side of the disk tier: which blocks a sequence saves and restores, and how restored bytes get
// into the KV arena and the prefix cache. The store (runtime/kv_disk_store.h) does the files and threads; the
// scheduler (engine.cpp) only calls these hooks.
//
// On disk a block is split: its body (every layer's compressed entries and indexer keys: the compact per-token
// state) for every block, and its resume snapshot (window tail, ratio-4 compressor records) only for the blocks
// where a restored prefix will likely end: a sequence's last full block when it finishes, and every
// `checkpoint_blocks`-th block (bounding what a prefix ending elsewhere recomputes). For DeepSeek-V4-Flash at
// 256-token blocks the snapshot is ~4x the body, so snapshotting every block would quintuple the bytes.
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
  KvOffload(ModelRunner& runner, BlockPool& pool, PrefixCache& prefix, const std::string& dir, uint64_t max_bytes,
            int checkpoint_blocks);
  KvDiskStore& store() { return *store_; }
  const KvDiskStore& store() const { return *store_; }

  // Block `index` of `tokens` (chain hash `hash`, its parent's `parent`) was just computed into arena block
  // `block` and cached: copies it to the host and queues its body (and, with `tail` or at a checkpoint, its
  // snapshot) unless on disk already.
  void save(std::span<const int32_t> tokens, int64_t index, uint64_t parent, uint64_t hash, int32_t block,
            bool tail = false);
  // A sequence ends: the snapshot of its last full block (index, a computed or resumable block) goes to disk.
  void save_tail(std::span<const int32_t> tokens, int64_t index, int32_t block);
  // Starts reading the blocks after the first `have` of `tokens` (up to max_blocks) that are on disk; null
  // when the next block is not there.
  std::shared_ptr<KvDiskRead> probe(std::span<const int32_t> tokens, int64_t have, int64_t max_blocks);
  // A finished read's blocks (indexes first, first+1, ...) into the arena and the prefix cache. Returns their
  // ids with one reference each for the caller (a pin until the sequence takes them); stops when the pool has
  // no block to spare.
  std::vector<int32_t> install(const KvDiskRead& r, std::span<const int32_t> tokens, int64_t first);
  uint64_t restored_tokens() const { return restored_tokens_; }

 private:
  struct Range {
    int64_t off, bytes;
  };
  std::vector<uint8_t> pack(const std::vector<uint8_t>& block, const std::vector<Range>& ranges) const;
  ModelRunner& runner_;
  BlockPool& pool_;
  PrefixCache& prefix_;
  int checkpoint_blocks_;
  std::vector<Range> body_, tail_;  // byte ranges of a block
  std::unique_ptr<KvDiskStore> store_;
  uint64_t restored_tokens_ = 0;
};

}  // namespace dsv4
