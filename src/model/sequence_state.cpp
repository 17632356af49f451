#include "model/sequence_state.h"

#include <cmath>

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

SequenceState::SequenceState(const ModelConfig& c)
    : head_dim(c.head_dim), index_dim(c.index_head_dim), window(c.window) {
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

void SequenceState::reset() {
  pos = 0;
  for (auto& L : layers) {
    L.n_comp = 0;
    L.comp.clear();
    L.idx_keys.clear();
    if (L.comp_state.ratio) L.comp_state.reset();
    if (L.idx_state.ratio) L.idx_state.reset();
  }
}

}  // namespace dsv4
