// Paged storage of a sequence's growing KV state (spec §5): compressed entries of every compressed layer and
// the indexer keys, in blocks of `block_tokens` tokens. With prefix caching a block also carries what is
// needed to resume exactly at its end: the window KV of its last `window` tokens and the ratio-4 compressors'
// previous-window slots. Fixed per-sequence state (window ring, compressor partial windows) stays in
// SequenceState.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"

namespace dsv4 {

// How one K=V vector (or indexer key) is stored.
enum class KvDtype { F32, BF16, FP8 };
KvDtype parse_kv_dtype(const std::string& s);  // "f32" | "bf16" | "fp8"
const char* kv_dtype_name(KvDtype t);

// Encoding of one vector of `dim` floats whose last `rope` dims stay bf16 in FP8 mode (main entries: the
// fp8_ds_mla layout users' tooling knows: nope e4m3, rope bf16, one E8M0 scale per 64 nope dims, padded to 8).
// Indexer keys (rope = 0): e4m3 + one fp32 power-of-two scale per vector.
struct KvCodec {
  KvDtype dtype = KvDtype::F32;
  int dim = 0, rope = 0;
  bool index_key = false;
  int64_t bytes() const;
  void encode(const float* x, uint8_t* dst) const;
  void decode(const uint8_t* src, float* x) const;
};

struct KvLayout {
  int block_tokens = 256;
  KvDtype dtype = KvDtype::F32;
  bool with_tail = false;  // prefix caching: window tail + compressor slots at the block's end
  int window = 0;
  KvCodec main, index;
  struct Layer {
    int ratio = 0;
    int64_t comp_off = -1, idx_off = -1;  // entries of this block (block_tokens / ratio of each)
    int64_t tail_off = -1;                // [window] main-codec vectors: positions end-window .. end-1
    int64_t cstate_off = -1, istate_off = -1;  // ratio 4: previous-window slots, fp32 kv then score
  };
  std::vector<Layer> layers;
  int64_t block_bytes = 0;
  int64_t cstate_floats = 0, istate_floats = 0;  // per ratio-4 layer: 2 * ratio * coff*d

  static KvLayout make(const ModelConfig& c, int block_tokens, KvDtype dtype, bool with_tail);
  int entries_per_block(int layer) const { return block_tokens / layers[size_t(layer)].ratio; }
};

// A pool of equally sized blocks with reference counts. A pool made with capacity 0 grows on demand
// (standalone scoring); otherwise allocation fails (returns -1) when full.
class KvPool {
 public:
  KvPool(KvLayout layout, int64_t capacity_blocks);
  const KvLayout& layout() const { return layout_; }
  int32_t allocate();  // refcount 1, or -1 when full
  void retain(int32_t b);
  void release(int32_t b);  // frees at refcount 0
  int refcount(int32_t b) const { return refs_[size_t(b)]; }
  uint8_t* data(int32_t b) { return storage_[size_t(b)].get(); }
  const uint8_t* data(int32_t b) const { return storage_[size_t(b)].get(); }
  int64_t capacity() const { return capacity_; }
  int64_t used() const { return used_; }
  int64_t free_blocks() const { return capacity_ ? capacity_ - used_ : INT64_MAX; }

 private:
  KvLayout layout_;
  int64_t capacity_, used_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> storage_;
  std::vector<int> refs_;
  std::vector<int32_t> free_;
};

}  // namespace dsv4
