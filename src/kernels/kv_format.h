// Byte formats of the KV cache (spec §5) shared by every backend: how one K=V vector or indexer key is
// encoded, and where each layer's state lives in the KV arena. The arena is one backend buffer:
//   [n_blocks blocks of block_bytes][n_slots sequence slots of slot_bytes]
// A block holds block_tokens positions' growing state of every layer (compressed entries, indexer keys and,
// with prefix caching, what is needed to resume exactly at its end). A slot holds one running sequence's fixed
// state (window ring, compressor token rings).
#pragma once
#include <cstdint>
#include <string>

#include "kernels/tensor.h"

namespace dsv4 {

// How one K=V vector (or indexer key) is stored.
enum class KvDtype : uint8_t { F32, BF16, FP8 };
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
  // Plain host reference of the encoding (the CPU backend uses it; other backends are tested against it).
  void encode(const float* x, uint8_t* dst) const;
  void decode(const uint8_t* src, float* x) const;
};

// Offsets of one layer's state: block-relative (*_off) and slot-relative (*_ring). -1 = absent.
struct KvLayerOffsets {
  int ratio = 0;
  int64_t comp_off = -1, idx_off = -1;       // block: block_tokens / ratio entries (main codec / index codec)
  int64_t tail_off = -1;                     // block (prefix caching): `window` main-codec vectors, end-window..end-1
  int64_t cstate_off = -1, istate_off = -1;  // block (prefix caching, ratio 4): compressor tokens end-4..end-1
  int64_t ring_off = -1;                     // slot: window ring, `window` main-codec vectors, slot p % window
  int64_t cring_off = -1, iring_off = -1;    // slot: compressor token rings (coff*ratio tokens), slot p % (coff*ratio)
};

struct KvArenaShape {
  int block_tokens = 256, window = 0;
  bool with_tail = false;
  KvCodec main, index;
  int64_t block_bytes = 0, n_blocks = 0;
  int64_t slots_offset = 0, slot_bytes = 0, n_slots = 0;
  int main_d = 0, index_d = 0;  // compressor widths d (main: head_dim, indexer: index_head_dim)

  // A compressor ring token is [u (coff*d) | g + ape (coff*d)] fp32.
  static int coff(int ratio) { return ratio == 4 ? 2 : 1; }
  static int64_t ring_token_floats(int ratio, int d) { return 2LL * coff(ratio) * d; }
  static int64_t ring_tokens(int ratio) { return int64_t(coff(ratio)) * ratio; }
  int64_t arena_bytes() const { return slots_offset + n_slots * slot_bytes; }
  int64_t block_offset(int64_t block) const { return block * block_bytes; }
  int64_t slot_offset(int64_t slot) const { return slots_offset + slot * slot_bytes; }
};

// What a backend op needs to address one layer's state.
struct KvLayerView {
  Tensor arena;  // U8 [arena_bytes]
  KvArenaShape shape;
  KvLayerOffsets layer;
};

}  // namespace dsv4
