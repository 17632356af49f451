// The KV arena's layout for one model (spec §5): which bytes of a block and of a sequence slot hold each
// layer's state. Byte formats (codecs) and the view handed to backend ops are in kernels/kv_format.h; block
// accounting (ids, refcounts, prefix hashes) is the scheduler's (runtime/kv_block_manager.h); the bytes live
// in one backend buffer owned by the model runner (KvStorage).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/backend.h"
#include "kernels/kv_format.h"
#include "model/config.h"

namespace dsv4 {

// Speculative decoding's KV needs: the drafter's own state (the MTP layer, or the DSpark stages: ratio-0 layers
// after the main layers) and, in every slot, a save area for what a verify step (or the MTP drafter's recursive
// steps) can overwrite, so rejected positions can be put back (runtime/step_plan.h, append_spec_saves). The
// DSpark stages' rings are written by the main model's steps (spec §7.1), so a verify saves them too.
struct KvSpecOptions {
  bool mtp = false;
  int dspark_stages = 0;
  int draft_tokens = 0;  // drafts per step (0: no save area)
};

struct KvLayout {
  KvArenaShape shape;
  std::vector<KvLayerOffsets> layers;  // the model's layers, then the MTP layer or the DSpark stages
  // Layers a main-model step writes: the model's, and the DSpark stages' rings (what a verify must save).
  int n_step_layers() const { return n_main_layers + spec.dspark_stages; }
  KvSpecOptions spec;
  int n_main_layers = 0;
  int64_t save_off = -1, save_bytes = 0;  // slot-relative save area (spec.draft_tokens > 0)

  // block_tokens: a multiple of 128 (every compression window ends inside one block). with_tail: blocks also
  // carry what resuming at their end needs (prefix caching).
  // A pipeline stage holds layers [first_layer, end_layer) only (end_layer -1: through the last); the other
  // layers keep their ratio but no bytes (offsets -1).
  static KvLayout make(const ModelConfig& c, int block_tokens, KvDtype dtype, bool with_tail,
                       KvSpecOptions spec = {}, int first_layer = 0, int end_layer = -1);
  // Bytes positions [first, first + n) of layers [l0, l1) can write: at most one block end among them.
  int64_t write_bound(int l0, int l1, int n) const;
  int block_tokens() const { return shape.block_tokens; }
  KvDtype dtype() const { return shape.main.dtype; }
  bool with_tail() const { return shape.with_tail; }
  int64_t block_bytes() const { return shape.block_bytes; }
  int64_t slot_bytes() const { return shape.slot_bytes; }
  int entries_per_block(int layer) const { return shape.block_tokens / layers[size_t(layer)].ratio; }
  // Arena size for n_blocks blocks and n_slots sequence slots.
  KvLayout sized(int64_t n_blocks, int64_t n_slots) const;
};

// The KV arena in a backend's memory: blocks, then sequence slots.
class KvStorage {
 public:
  KvStorage(Backend& be, const KvLayout& layout);  // layout.sized(...) first
  const KvLayout& layout() const { return layout_; }
  const Tensor& arena() const { return arena_; }
  KvLayerView view(int layer) const { return {arena_, layout_.shape, layout_.layers[size_t(layer)]}; }
  uint64_t bytes() const { return uint64_t(layout_.shape.arena_bytes()); }

 private:
  KvLayout layout_;
  std::unique_ptr<Buffer> buf_;
  Tensor arena_;
};

}  // namespace dsv4
