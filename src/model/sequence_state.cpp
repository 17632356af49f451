#include "model/sequence_state.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace dsv4 {

void CompressorState::init(int r, int dd) {
  ratio = r;
  d = dd;
  coff = r == 4 ? 2 : 1;
  kv.assign(size_t(coff * r * coff * d), 0.f);
  score.assign(kv.size(), -INFINITY);
}

void CompressorState::reset() {
  std::fill(kv.begin(), kv.end(), 0.f);
  std::fill(score.begin(), score.end(), -INFINITY);
}

SequenceState::SequenceState(const ModelConfig& c, KvPool* pool, KvDtype dtype)
    : head_dim(c.head_dim), index_dim(c.index_head_dim), window(c.window) {
  if (!pool) {
    own_pool_ = std::make_unique<KvPool>(KvLayout::make(c, 256, dtype, false), 0);
    pool = own_pool_.get();
  }
  pool_ = pool;
  layers.resize(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    auto& L = layers[size_t(l)];
    L.window.assign(size_t(c.window) * size_t(c.head_dim), 0.f);
    if (int r = c.ratio(l)) {
      L.comp_state.init(r, c.head_dim);
      if (r == 4) L.idx_state.init(4, c.index_head_dim);
    }
  }
}

SequenceState::~SequenceState() { release(); }

int64_t SequenceState::blocks_needed(int64_t tokens) const {
  const int64_t bt = pool_->layout().block_tokens;
  return (tokens + bt - 1) / bt;
}

bool SequenceState::ensure_blocks(int64_t tokens) {
  const int64_t need = blocks_needed(tokens) - int64_t(blocks_.size());
  if (need <= 0) return true;
  if (pool_->free_blocks() < need) return false;
  for (int64_t i = 0; i < need; ++i) blocks_.push_back(pool_->allocate());
  return true;
}

void SequenceState::release() {
  for (int32_t b : blocks_) pool_->release(b);
  blocks_.clear();
  pos = 0;
  for (auto& L : layers) {
    L.n_comp = 0;
    if (L.comp_state.ratio) L.comp_state.reset();
    if (L.idx_state.ratio) L.idx_state.reset();
  }
}

uint8_t* SequenceState::block_region(int64_t block_index, int64_t offset) {
  DSV4_CHECK(block_index < int64_t(blocks_.size()), "KV block {} not allocated (sequence has {})", block_index,
             blocks_.size());
  return pool_->data(blocks_[size_t(block_index)]) + offset;
}

uint8_t* SequenceState::comp_entry(int layer, int64_t j) {
  const KvLayout& L = pool_->layout();
  const auto& ly = L.layers[size_t(layer)];
  const int64_t per = L.block_tokens / ly.ratio;
  return block_region(j / per, ly.comp_off + (j % per) * L.main.bytes());
}

uint8_t* SequenceState::idx_entry(int layer, int64_t j) {
  const KvLayout& L = pool_->layout();
  const auto& ly = L.layers[size_t(layer)];
  const int64_t per = L.block_tokens / 4;
  return block_region(j / per, ly.idx_off + (j % per) * L.index.bytes());
}

void SequenceState::resume_from_blocks(const std::vector<int32_t>& blocks) {
  const KvLayout& L = pool_->layout();
  DSV4_CHECK(L.with_tail, "resume_from_blocks needs a pool laid out for prefix caching");
  release();
  if (blocks.empty()) return;
  for (int32_t b : blocks) {
    pool_->retain(b);
    blocks_.push_back(b);
  }
  pos = int64_t(blocks.size()) * L.block_tokens;
  const uint8_t* last = pool_->data(blocks.back());
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& S = layers[l];
    const auto& ly = L.layers[l];
    for (int64_t s = pos - window; s < pos; ++s)
      L.main.decode(last + ly.tail_off + (s - (pos - window)) * L.main.bytes(), S.window.data() + (s % window) * head_dim);
    if (ly.ratio) S.n_comp = pos / ly.ratio;
    if (ly.ratio == 4) {  // the previous window's slots; the current window refills before the next entry
      auto restore = [&](CompressorState& st, int64_t off, int64_t floats) {
        const float* src = reinterpret_cast<const float*>(last + off);
        std::memcpy(st.kv.data(), src, size_t(floats / 2) * 4);
        std::memcpy(st.score.data(), src + floats / 2, size_t(floats / 2) * 4);
      };
      restore(S.comp_state, ly.cstate_off, L.cstate_floats);
      restore(S.idx_state, ly.istate_off, L.istate_floats);
    }
  }
}

}  // namespace dsv4
