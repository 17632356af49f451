#include "model/eplb.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv4 {

EplbPlacement EplbPlacement::compute(const std::vector<std::vector<double>>& loads, int ranks, int redundant,
                                     uint64_t epoch) {
  EplbPlacement p;
  p.epoch = epoch;
  p.ranks = ranks;
  for (const auto& load : loads) {
    PlacementShape shape;
    shape.num_physical = int(load.size()) + redundant;
    shape.num_ranks = ranks;
    p.layers.push_back(rebalance_experts(load, shape));
  }
  return p;
}

EplbPlacement EplbPlacement::initial(const ModelConfig& c, int ranks, int redundant) {
  if ((c.n_routed_experts + redundant) % ranks)
    fail("--num-redundant-experts {}: {} experts + {} redundant slots do not split evenly over {} expert-parallel "
         "ranks", redundant, c.n_routed_experts, redundant, ranks);
  return compute(std::vector<std::vector<double>>(size_t(c.n_layers), std::vector<double>(size_t(c.n_routed_experts), 1.0)),
                 ranks, redundant, 0);
}

void EplbPlacement::validate(int n_layers, int E) const {
  if (ranks < 1 || int(layers.size()) != n_layers)
    fail("EPLB placement: {} layers over {} ranks (the model has {} layers)", layers.size(), ranks, n_layers);
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerPlacement& L = layers[l];
    const size_t P = L.phy2log.size();
    if (int(L.logcnt.size()) != E || L.replica.size() != P || P % size_t(ranks) || P < size_t(E))
      fail("EPLB placement: layer {} has {} slots for {} experts over {} ranks", l, P, L.logcnt.size(), ranks);
    std::vector<std::vector<int>> seen(static_cast<size_t>(E));
    for (int e = 0; e < E; ++e) {
      if (L.logcnt[size_t(e)] < 1) fail("EPLB placement: layer {} expert {} has no copy", l, e);
      seen[size_t(e)].assign(size_t(L.logcnt[size_t(e)]), 0);
    }
    for (size_t s = 0; s < P; ++s) {
      const int e = L.phy2log[s], r = L.replica[s];
      if (e < 0 || e >= E || r < 0 || r >= L.logcnt[size_t(e)] || seen[size_t(e)][size_t(r)]++)
        fail("EPLB placement: layer {} slot {} holds expert {} copy {}, out of range or twice", l, s, e, r);
    }
    size_t copies = 0;
    for (int e = 0; e < E; ++e) copies += size_t(L.logcnt[size_t(e)]);
    if (copies != P) fail("EPLB placement: layer {} counts {} copies in {} slots", l, copies, P);
  }
}

std::string EplbPlacement::serialize() const {
  nlohmann::json j = {{"epoch", epoch}, {"ranks", ranks}, {"layers", nlohmann::json::array()}};
  for (const LayerPlacement& L : layers)
    j["layers"].push_back({{"phy2log", L.phy2log}, {"replica", L.replica}, {"logcnt", L.logcnt}});
  return j.dump();
}

EplbPlacement EplbPlacement::deserialize(const std::string& bytes) {
  try {
    const auto j = nlohmann::json::parse(bytes);
    EplbPlacement p;
    p.epoch = j.at("epoch").get<uint64_t>();
    p.ranks = j.at("ranks").get<int>();
    for (const auto& L : j.at("layers"))
      p.layers.push_back({L.at("phy2log").get<std::vector<int32_t>>(), L.at("replica").get<std::vector<int32_t>>(),
                          L.at("logcnt").get<std::vector<int32_t>>()});
    return p;
  } catch (const nlohmann::json::exception& e) {
    fail("EPLB placement: not a placement message ({})", e.what());
  }
}

bool EplbPlacement::same_slots(const EplbPlacement& o) const {
  if (ranks != o.ranks || layers.size() != o.layers.size()) return false;
  for (size_t l = 0; l < layers.size(); ++l)
    if (layers[l].phy2log != o.layers[l].phy2log || layers[l].replica != o.layers[l].replica) return false;
  return true;
}

std::vector<std::vector<bool>> EplbPlacement::held(int rank) const {
  std::vector<std::vector<bool>> h;
  const size_t per = size_t(slots_per_rank());
  for (const LayerPlacement& L : layers) {
    h.emplace_back(L.logcnt.size(), false);
    for (size_t s = size_t(rank) * per; s < size_t(rank + 1) * per; ++s) h.back()[size_t(L.phy2log[s])] = true;
  }
  return h;
}

ExpertShare EplbPlacement::share(int layer, int rank) const {
  const LayerPlacement& L = layers.at(size_t(layer));
  ExpertShare sh;
  sh.copies = L.logcnt;
  sh.offset.assign(L.logcnt.size() + 1, 0);
  for (size_t e = 0; e < L.logcnt.size(); ++e) sh.offset[e + 1] = sh.offset[e] + L.logcnt[e];
  const std::vector<int32_t> owner = replica_ranks(layer);
  sh.here.resize(owner.size());
  for (size_t i = 0; i < owner.size(); ++i) sh.here[i] = owner[i] == rank;
  return sh;
}

std::vector<int32_t> EplbPlacement::replica_ranks(int layer) const {
  const LayerPlacement& L = layers.at(size_t(layer));
  std::vector<int32_t> offset(L.logcnt.size() + 1, 0);
  for (size_t e = 0; e < L.logcnt.size(); ++e) offset[e + 1] = offset[e] + L.logcnt[e];
  std::vector<int32_t> owner(size_t(offset.back()), -1);
  const int per = slots_per_rank();
  for (size_t s = 0; s < L.phy2log.size(); ++s)
    owner[size_t(offset[size_t(L.phy2log[s])] + L.replica[s])] = int32_t(s) / per;
  return owner;
}

std::unique_ptr<EplbRankExperts> EplbRankExperts::prepare(EplbPlacement p, int rank, const ModelConfig& c,
                                                          const ModelWeights& w, Backend& be) {
  p.validate(c.n_layers, c.n_routed_experts);
  DSV4_CHECK(rank >= 0 && rank < p.ranks, "EPLB: rank {} of a placement over {} ranks", rank, p.ranks);
  auto r = std::make_unique<EplbRankExperts>();
  r->experts = w.place_experts(c, be, p.held(rank));
  for (int l = 0; l < c.n_layers; ++l) r->shares.push_back(p.share(l, rank));
  r->placement = std::move(p);
  return r;
}

}  // namespace dsv4
