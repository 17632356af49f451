// Everything a sequence carries between forward calls (spec §5.1): the window ring, compressed KV entries,
// indexer keys and the compressors' partial-window state. Prompts can be fed in any chunking and give the
// same result as one-shot processing.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace dsv4 {

struct CompressorState {
  int ratio = 0, coff = 1, d = 0;
  std::vector<float> kv, score;  // [coff*ratio, coff*d]; score starts at -inf (empty slot)
  void init(int ratio, int d);
  void reset();
};

struct LayerState {
  std::vector<float> window;    // ring [window, head_dim]: slot p % window holds position p
  std::vector<float> comp;      // [n_comp, head_dim] compressed entries
  std::vector<float> idx_keys;  // [n_comp, index_head_dim] (ratio-4 layers)
  int64_t n_comp = 0;
  CompressorState comp_state, idx_state;
};

struct SequenceState {
  explicit SequenceState(const ModelConfig& c);
  void reset();                   // back to an empty sequence (position 0)
  int64_t pos = 0;                // tokens processed so far
  std::vector<LayerState> layers;
  int head_dim = 0, index_dim = 0, window = 0;
};

}  // namespace dsv4
