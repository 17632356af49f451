// Everything a sequence carries between forward calls (spec §5.1): the window ring, the compressors'
// partial-window state, and a block table into a KvPool holding its compressed entries and indexer keys.
// Prompts can be fed in any chunking and give the same result as one-shot processing.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"
#include "model/kv_cache.h"

namespace dsv4 {

struct CompressorState {
  int ratio = 0, coff = 1, d = 0;
  std::vector<float> kv, score;  // [coff*ratio, coff*d]; score starts at -inf (empty slot)
  void init(int ratio, int d);
  void reset();
};

struct LayerState {
  std::vector<float> window;  // ring [window, head_dim]: slot p % window holds position p
  int64_t n_comp = 0;         // compressed entries so far (= indexer keys on ratio-4 layers)
  CompressorState comp_state, idx_state;
};

class SequenceState {
 public:
  // pool == nullptr: the sequence owns a private pool that grows on demand.
  SequenceState(const ModelConfig& c, KvPool* pool, KvDtype dtype = KvDtype::F32);
  ~SequenceState();
  SequenceState(const SequenceState&) = delete;
  SequenceState& operator=(const SequenceState&) = delete;

  int64_t pos = 0;  // tokens processed so far
  std::vector<LayerState> layers;

  KvPool& pool() { return *pool_; }
  const KvLayout& layout() const { return pool_->layout(); }
  const std::vector<int32_t>& blocks() const { return blocks_; }
  int64_t blocks_needed(int64_t tokens) const;
  // Allocates blocks so positions [0, tokens) fit; false (nothing allocated) when the pool is full.
  bool ensure_blocks(int64_t tokens);
  void release();  // returns every block to the pool and resets to an empty sequence

  // Starts the sequence on shared, fully written blocks (a prefix-cache hit): takes a reference on each and
  // restores the window ring and compressor state from the last block's tail (layout().with_tail).
  void resume_from_blocks(const std::vector<int32_t>& blocks);

  uint8_t* comp_entry(int layer, int64_t j);
  uint8_t* idx_entry(int layer, int64_t j);
  uint8_t* block_region(int64_t block_index, int64_t offset);

  int head_dim = 0, index_dim = 0, window = 0;

 private:
  std::unique_ptr<KvPool> own_pool_;
  KvPool* pool_;
  std::vector<int32_t> blocks_;
};

}  // namespace dsv4
