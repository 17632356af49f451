// Expert-parallel load balancing (EPLB): where the routed experts of each MoE layer run. The policy is DeepSeek's
// published EPLB algorithm (github.com/deepseek-ai/EPLB): replicate the experts with the highest load per copy
// into the redundant slots, then pack the physical experts onto ranks by load (balanced packing: heaviest
// first, onto the lightest rank that still has room). Hierarchical when expert groups divide over the nodes
// (groups packed onto nodes first, replicas kept inside their node), global otherwise. Pure functions: the
// routing never changes, only where each routed expert's tokens are computed.
#pragma once
#include <cstdint>
#include <vector>

namespace dsv4 {

// One layer's placement: physical slot p (rank p / slots_per_rank) runs logical expert phy2log[p]; replica is
// that slot's index among the expert's copies (0 .. logcnt[e] - 1).
struct LayerPlacement {
  std::vector<int32_t> phy2log, replica;
  std::vector<int32_t> logcnt;  // copies of each logical expert (>= 1)
};

struct PlacementShape {
  int num_physical = 0;  // experts + redundant slots; a multiple of num_ranks
  int num_groups = 1;    // expert groups of the model's group-limited routing (1: none)
  int num_nodes = 1;
  int num_ranks = 1;
};

// Balanced packing of weights onto packs of equal item counts (weights.size() a multiple of num_packs):
// items by decreasing weight (ties: lower index first) onto the lightest pack with room (ties: lower pack).
// Returns each item's pack and its position inside the pack.
void balanced_packing(const std::vector<double>& weights, int num_packs, std::vector<int32_t>& pack,
                      std::vector<int32_t>& rank_in_pack);

// The EPLB policy for one layer's per-expert loads (tokens routed to each logical expert).
LayerPlacement rebalance_experts(const std::vector<double>& load, const PlacementShape& shape);

// Without EPLB: expert e on rank e / (E / ranks), one copy each.
LayerPlacement contiguous_placement(int num_experts, int num_ranks);

// Each rank's load when every expert's tokens are split evenly over its copies.
std::vector<double> rank_loads(const std::vector<double>& load, const LayerPlacement& p, int num_ranks);
// max / mean of a load vector (1 when all are zero).
double max_over_mean(const std::vector<double>& v);

}  // namespace dsv4
