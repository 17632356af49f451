// Expert-parallel load balancing in serving: the whole model's expert placement (one LayerPlacement of
// model/expert_placement.h per MoE layer), what one rank holds under it, and how an expert's rows are split
// among its replicas. Routing never changes: the router picks the experts, the placement only decides which
// rank computes each (row, expert) product, exactly once in the group (kernels/backend.h ExpertShare).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/expert_placement.h"
#include "model/weights.h"

namespace dsv4 {

struct EplbPlacement {
  uint64_t epoch = 0;  // 0: the start placement; each rebalance adds one
  int ranks = 1;
  std::vector<LayerPlacement> layers;  // [n_layers], each with experts + redundant physical slots

  // The policy on per-layer loads ([n_layers][experts]; all equal: the start placement) over `ranks` ranks
  // with `redundant` extra slots per layer. Global policy: V4 routes without expert groups, which the
  // hierarchical policy would pack onto nodes.
  static EplbPlacement compute(const std::vector<std::vector<double>>& loads, int ranks, int redundant, uint64_t epoch);
  // The start placement: the policy on equal loads, so every rank can make it alone.
  static EplbPlacement initial(const ModelConfig& c, int ranks, int redundant);

  int experts() const { return layers.empty() ? 0 : int(layers[0].logcnt.size()); }
  int slots_per_rank() const { return layers.empty() ? 0 : int(layers[0].phy2log.size()) / ranks; }
  // Throws dsv4::Error unless every layer has `experts` experts, whole slots per rank and each (expert,
  // replica) pair in exactly one slot.
  void validate(int n_layers, int experts) const;
  std::string serialize() const;
  static EplbPlacement deserialize(const std::string& bytes);  // validated by the caller
  bool same_slots(const EplbPlacement& o) const;  // the same experts in the same slots (epochs aside)

  // Per layer: expert e held by `rank` (one of its replicas is in the rank's slots).
  std::vector<std::vector<bool>> held(int rank) const;
  // Layer l's split of rows among replicas, from `rank`'s point of view.
  ExpertShare share(int layer, int rank) const;
  // Layer l: the rank of each replica, indexed as ExpertShare::here (offset[e] + replica).
  std::vector<int32_t> replica_ranks(int layer) const;
};

// A placement made ready on one rank: its experts' weights and each layer's share. Built off the step path;
// the model switches to it between steps (Dsv4Model::set_eplb).
struct EplbRankExperts {
  EplbPlacement placement;
  std::unique_ptr<ExpertSet> experts;
  std::vector<ExpertShare> shares;  // [n_layers]

  static std::unique_ptr<EplbRankExperts> prepare(EplbPlacement p, int rank, const ModelConfig& c,
                                                  const ModelWeights& w, Backend& be);
};

}  // namespace dsv4
