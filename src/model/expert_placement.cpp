#include "model/expert_placement.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace dsv4 {

namespace {

// Adds replicas one at a time to the expert with the highest load per copy (ties: lowest id) until there are
// num_phy physical experts; slot i < num_log holds expert i.
void replicate(const std::vector<double>& load, int num_phy, std::vector<int32_t>& phy2log,
               std::vector<int32_t>& replica, std::vector<int32_t>& logcnt) {
  const int n = int(load.size());
  phy2log.resize(static_cast<size_t>(num_phy));
  replica.assign(size_t(num_phy), 0);
  logcnt.assign(size_t(n), 1);
  std::iota(phy2log.begin(), phy2log.begin() + n, 0);
  for (int i = n; i < num_phy; ++i) {
    int best = 0;
    for (int e = 1; e < n; ++e)
      if (load[size_t(e)] / logcnt[size_t(e)] > load[size_t(best)] / logcnt[size_t(best)]) best = e;
    phy2log[size_t(i)] = best;
    replica[size_t(i)] = logcnt[size_t(best)]++;
  }
}

}  // namespace

void balanced_packing(const std::vector<double>& w, int num_packs, std::vector<int32_t>& pack,
                      std::vector<int32_t>& rank_in_pack) {
  const int n = int(w.size());
  DSV4_CHECK(num_packs > 0 && n % num_packs == 0, "balanced packing: {} items do not fill {} packs evenly", n,
             num_packs);
  const int per = n / num_packs;
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return w[size_t(a)] > w[size_t(b)]; });
  std::vector<double> pw(size_t(num_packs), 0);
  std::vector<int> items(size_t(num_packs), 0);
  pack.assign(size_t(n), 0);
  rank_in_pack.assign(size_t(n), 0);
  for (int i : order) {
    int best = -1;
    for (int p = 0; p < num_packs; ++p)
      if (items[size_t(p)] < per && (best < 0 || pw[size_t(p)] < pw[size_t(best)])) best = p;
    pack[size_t(i)] = best;
    rank_in_pack[size_t(i)] = items[size_t(best)]++;
    pw[size_t(best)] += w[size_t(i)];
  }
}

LayerPlacement rebalance_experts(const std::vector<double>& load, const PlacementShape& s) {
  const int E = int(load.size());
  DSV4_CHECK(E > 0 && s.num_ranks > 0 && s.num_nodes > 0 && s.num_groups > 0, "EPLB: empty placement shape");
  DSV4_CHECK(s.num_physical >= E && s.num_physical % s.num_ranks == 0,
             "EPLB: {} physical experts (experts + redundant) for {} experts do not split evenly over {} ranks",
             s.num_physical, E, s.num_ranks);
  // Hierarchical when the groups split over the nodes; otherwise the global policy (one group, one node).
  const bool hier = s.num_groups % s.num_nodes == 0 && E % s.num_groups == 0;
  const int groups = hier ? s.num_groups : 1, nodes = hier ? s.num_nodes : 1;
  DSV4_CHECK(s.num_ranks % nodes == 0 && s.num_physical % nodes == 0 && E % nodes == 0,
             "EPLB: {} ranks / {} physical / {} experts do not split over {} nodes", s.num_ranks, s.num_physical, E,
             nodes);
  const int group_size = E / groups, groups_per_node = groups / nodes, per_rank = s.num_physical / s.num_ranks;
  const int log_per_node = E / nodes, phy_per_node = s.num_physical / nodes, ranks_per_node = s.num_ranks / nodes;

  // 1. Groups onto nodes by their summed load. mlog: logical ids renumbered node by node.
  std::vector<double> group_load(size_t(groups), 0);
  for (int e = 0; e < E; ++e) group_load[size_t(e / group_size)] += load[size_t(e)];
  std::vector<int32_t> gpack, grank;
  balanced_packing(group_load, nodes, gpack, grank);
  std::vector<int32_t> log2mlog(static_cast<size_t>(E)), mlog2log(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) {
    const int g = e / group_size;
    log2mlog[size_t(e)] = (gpack[size_t(g)] * groups_per_node + grank[size_t(g)]) * group_size + e % group_size;
    mlog2log[size_t(log2mlog[size_t(e)])] = e;
  }

  LayerPlacement out;
  out.phy2log.resize(static_cast<size_t>(s.num_physical));
  out.replica.resize(static_cast<size_t>(s.num_physical));
  out.logcnt.resize(static_cast<size_t>(E));
  for (int node = 0; node < nodes; ++node) {
    // 2. Replicas inside the node.
    std::vector<double> nl(static_cast<size_t>(log_per_node));
    for (int j = 0; j < log_per_node; ++j) nl[size_t(j)] = load[size_t(mlog2log[size_t(node * log_per_node + j)])];
    std::vector<int32_t> phy2mlog, rep, cnt;
    replicate(nl, phy_per_node, phy2mlog, rep, cnt);
    // 3. The node's physical experts onto its ranks, each weighing its expert's load per copy.
    std::vector<double> pl(static_cast<size_t>(phy_per_node));
    for (int p = 0; p < phy_per_node; ++p) pl[size_t(p)] = nl[size_t(phy2mlog[size_t(p)])] / cnt[size_t(phy2mlog[size_t(p)])];
    std::vector<int32_t> pack, rin;
    balanced_packing(pl, ranks_per_node, pack, rin);
    for (int p = 0; p < phy_per_node; ++p) {
      const int slot = node * phy_per_node + pack[size_t(p)] * per_rank + rin[size_t(p)];
      out.phy2log[size_t(slot)] = mlog2log[size_t(node * log_per_node + phy2mlog[size_t(p)])];
      out.replica[size_t(slot)] = rep[size_t(p)];
    }
    for (int j = 0; j < log_per_node; ++j) out.logcnt[size_t(mlog2log[size_t(node * log_per_node + j)])] = cnt[size_t(j)];
  }
  return out;
}

LayerPlacement contiguous_placement(int E, int ranks) {
  DSV4_CHECK(ranks > 0 && E % ranks == 0, "{} experts do not split evenly over {} ranks", E, ranks);
  LayerPlacement p;
  p.phy2log.resize(static_cast<size_t>(E));
  std::iota(p.phy2log.begin(), p.phy2log.end(), 0);
  p.replica.assign(size_t(E), 0);
  p.logcnt.assign(size_t(E), 1);
  return p;
}

std::vector<double> rank_loads(const std::vector<double>& load, const LayerPlacement& p, int ranks) {
  const int per = int(p.phy2log.size()) / ranks;
  std::vector<double> r(size_t(ranks), 0);
  for (size_t s = 0; s < p.phy2log.size(); ++s) {
    const int e = p.phy2log[s];
    r[s / size_t(per)] += load[size_t(e)] / p.logcnt[size_t(e)];
  }
  return r;
}

double max_over_mean(const std::vector<double>& v) {
  if (v.empty()) return 1;
  const double sum = std::accumulate(v.begin(), v.end(), 0.0);
  if (sum <= 0) return 1;
  return *std::max_element(v.begin(), v.end()) / (sum / double(v.size()));
}

}  // namespace dsv4
