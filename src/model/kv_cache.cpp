#include "model/kv_cache.h"

#include <algorithm>

#include "core/error.h"

namespace dsv4 {

KvLayout KvLayout::make(const ModelConfig& c, int block_tokens, KvDtype dtype, bool with_tail, KvSpecOptions spec,
                        int first_layer, int end_layer) {
  if (end_layer < 0) end_layer = c.n_layers;
  if (first_layer < 0 || first_layer >= end_layer || end_layer > c.n_layers)
    fail("KV layout: invalid pipeline stage, layers [{}, {}) of {}", first_layer, end_layer, c.n_layers);
  const bool stage = first_layer > 0 || end_layer < c.n_layers;
  if (stage && (spec.mtp || spec.dspark_stages || spec.draft_tokens))
    fail("speculative decoding with pipeline parallelism is not supported yet");
  if (block_tokens <= 0 || block_tokens % 128)
    fail("block size {} must be a positive multiple of 128 (every compression window ends inside a block)",
         block_tokens);
  if (with_tail && block_tokens < c.window)
    fail("block size {} is smaller than the attention window {}", block_tokens, c.window);
  KvLayout L;
  KvArenaShape& S = L.shape;
  S.block_tokens = block_tokens;
  S.with_tail = with_tail;
  S.window = c.window;
  S.main = {dtype, c.head_dim, c.rope_dim, false};
  S.index = {dtype, c.index_head_dim, 0, true};
  S.main_d = c.head_dim;
  S.index_d = c.index_head_dim;
  // 64-byte alignment keeps every region's start aligned for vector loads on every backend.
  auto align = [](int64_t& off) { off = (off + 63) / 64 * 64; };
  int64_t boff = 0, soff = 0;
  L.spec = spec;
  L.n_main_layers = c.n_layers;
  if (spec.mtp && c.n_mtp_layers < 1) fail("the model has no MTP layer");
  if (spec.dspark_stages && spec.dspark_stages != c.n_dspark_stages)
    fail("the model has {} DSpark stages, not {}", c.n_dspark_stages, spec.dspark_stages);
  if (spec.mtp && spec.dspark_stages) fail("one drafter at a time: MTP or DSpark");
  if (spec.draft_tokens > 0 && spec.draft_tokens + 1 > std::min(c.window, 8))
    fail("{} draft tokens: a verify step must fit inside the window ring and the ratio-4 token rings", spec.draft_tokens);
  const int n_kv_layers = c.n_layers + (spec.mtp ? 1 : 0) + spec.dspark_stages;
  for (int l = 0; l < n_kv_layers; ++l) {
    KvLayerOffsets ly;
    ly.ratio = c.ratio(l);
    if (l < c.n_layers && (l < first_layer || l >= end_layer)) {  // another stage's layer
      L.layers.push_back(ly);
      continue;
    }
    ly.ring_off = soff;
    soff += int64_t(c.window) * S.main.bytes();
    align(soff);
    if (ly.ratio) {
      ly.comp_off = boff;
      boff += int64_t(block_tokens / ly.ratio) * S.main.bytes();
      align(boff);
      ly.cring_off = soff;
      soff += KvArenaShape::ring_tokens(ly.ratio) * KvArenaShape::ring_token_floats(ly.ratio, c.head_dim) * 4;
      align(soff);
      if (ly.ratio == 4) {
        ly.idx_off = boff;
        boff += int64_t(block_tokens / 4) * S.index.bytes();
        align(boff);
        ly.iring_off = soff;
        soff += KvArenaShape::ring_tokens(4) * KvArenaShape::ring_token_floats(4, c.index_head_dim) * 4;
        align(soff);
      }
    }
    if (with_tail) {
      ly.tail_off = boff;
      boff += int64_t(c.window) * S.main.bytes();
      align(boff);
      if (ly.ratio == 4) {  // the last 4 tokens' ring records: the next entry's A halves
        ly.cstate_off = boff;
        boff += 4 * KvArenaShape::ring_token_floats(4, c.head_dim) * 4;
        ly.istate_off = boff;
        boff += 4 * KvArenaShape::ring_token_floats(4, c.index_head_dim) * 4;
        align(boff);
      }
    }
    L.layers.push_back(ly);
  }
  if (spec.draft_tokens > 0) {
    // The verify step's drafts over the main layers, and the drafter's recursive steps over the MTP layer.
    L.save_off = soff;
    L.save_bytes = L.write_bound(0, L.n_step_layers(), spec.draft_tokens) +
                   (spec.mtp ? L.write_bound(c.n_layers, n_kv_layers, spec.draft_tokens) : 0);
    soff += L.save_bytes;
    align(soff);
  }
  S.block_bytes = std::max<int64_t>(boff, 64);
  S.slot_bytes = std::max<int64_t>(soff, 64);
  return L;
}

int64_t KvLayout::write_bound(int l0, int l1, int n) const {
  const KvArenaShape& S = shape;
  int64_t b = 0;
  for (int l = l0; l < l1; ++l) {
    const KvLayerOffsets& ly = layers[size_t(l)];
    int64_t per_pos = S.main.bytes(), per_end = S.with_tail ? S.window * S.main.bytes() : 0;
    if (ly.ratio) per_pos += KvArenaShape::ring_token_floats(ly.ratio, S.main_d) * 4 + S.main.bytes();
    if (ly.ratio == 4) {
      per_pos += KvArenaShape::ring_token_floats(4, S.index_d) * 4 + S.index.bytes();
      if (S.with_tail)
        per_end += 4 * (KvArenaShape::ring_token_floats(4, S.main_d) + KvArenaShape::ring_token_floats(4, S.index_d)) * 4;
    }
    b += n * per_pos + per_end;
  }
  return b;
}

KvLayout KvLayout::sized(int64_t n_blocks, int64_t n_slots) const {
  KvLayout L = *this;
  L.shape.n_blocks = n_blocks;
  L.shape.n_slots = n_slots;
  L.shape.slots_offset = (n_blocks * shape.block_bytes + 4095) / 4096 * 4096;
  return L;
}

KvStorage::KvStorage(Backend& be, const KvLayout& layout) : layout_(layout) {
  const int64_t bytes = layout_.shape.arena_bytes();
  DSV4_CHECK(bytes > 0, "empty KV arena");
  buf_ = be.alloc(size_t(bytes), BufferUsage::KvCache);
  // Not cleared: rings, entries and snapshots are always written before they are read (and host backends keep
  // the pages untouched until then).
  arena_ = Tensor(buf_.get(), 0, DType::U8, {bytes});
}

}  // namespace dsv4
