// The EPLB placement policy (model/expert_placement.h) against DeepSeek's published example and on a skewed
// load, plus the invariants every placement must keep.
#include <gtest/gtest.h>

#include <numeric>

#include "model/expert_placement.h"

using namespace dsv4;

namespace {

// Every expert has logcnt copies, numbered 0..logcnt-1, and every slot holds an expert.
void expect_consistent(const LayerPlacement& p, int E, int physical) {
  ASSERT_EQ(int(p.phy2log.size()), physical);
  ASSERT_EQ(int(p.replica.size()), physical);
  ASSERT_EQ(int(p.logcnt.size()), E);
  std::vector<std::vector<int>> seen(static_cast<size_t>(E));
  for (int s = 0; s < physical; ++s) {
    ASSERT_GE(p.phy2log[size_t(s)], 0);
    ASSERT_LT(p.phy2log[size_t(s)], E);
    seen[size_t(p.phy2log[size_t(s)])].push_back(p.replica[size_t(s)]);
  }
  for (int e = 0; e < E; ++e) {
    std::sort(seen[size_t(e)].begin(), seen[size_t(e)].end());
    std::vector<int> want(size_t(p.logcnt[size_t(e)]));
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(seen[size_t(e)], want) << "expert " << e;
  }
}

}  // namespace

TEST(ExpertPlacement, BalancedPackingHeaviestFirstOntoTheLightestPackWithRoom) {
  std::vector<int32_t> pack, rank;
  balanced_packing({5, 1, 4, 2, 3, 6}, 2, pack, rank);
  // 6 -> p0, 5 -> p1, 4 -> p1, 3 -> p0, 2 -> p0 (tie: lower pack), 1 -> p1 (p0 full).
  EXPECT_EQ(pack, (std::vector<int32_t>{1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(rank, (std::vector<int32_t>{0, 2, 1, 2, 1, 0}));
}

TEST(ExpertPlacement, HierarchicalMatchesTheDeepSeekEplbReadmeExample) {
  // github.com/deepseek-ai/EPLB README: 2 layers x 12 experts, 16 physical, 4 groups, 2 nodes, 8 GPUs.
  const std::vector<std::vector<double>> w = {{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                                              {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
  const std::vector<std::vector<int32_t>> want = {{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1},
                                                  {7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}};
  for (size_t l = 0; l < 2; ++l) {
    const LayerPlacement p = rebalance_experts(w[l], {16, 4, 2, 8});
    EXPECT_EQ(p.phy2log, want[l]) << "layer " << l;
    expect_consistent(p, 12, 16);
  }
}

TEST(ExpertPlacement, GlobalPolicyFlattensASkewedLoad) {
  // 16 experts over 4 ranks, Zipf-like load: the first rank of a by-id split holds the four hottest.
  std::vector<double> load(16);
  for (int e = 0; e < 16; ++e) load[size_t(e)] = 1000.0 / (e + 1);
  const double before = max_over_mean(rank_loads(load, contiguous_placement(16, 4), 4));
  EXPECT_GT(before, 2.4);
  const LayerPlacement p = rebalance_experts(load, {20, 1, 1, 4});  // 4 redundant slots
  expect_consistent(p, 16, 20);
  const std::vector<double> ranks = rank_loads(load, p, 4);
  EXPECT_NEAR(std::accumulate(ranks.begin(), ranks.end(), 0.0), std::accumulate(load.begin(), load.end(), 0.0), 1e-6);
  const double after = max_over_mean(ranks);
  EXPECT_LT(after, 1.1) << "before " << before;
  // The hottest expert got the most copies; redundant slots go to the heaviest per-copy loads first.
  EXPECT_EQ(*std::max_element(p.logcnt.begin(), p.logcnt.end()), p.logcnt[0]);
  EXPECT_GE(p.logcnt[0], 2);
  // Without redundant slots the policy still packs by load: better than by id, never worse.
  const double packed = max_over_mean(rank_loads(load, rebalance_experts(load, {16, 1, 1, 4}), 4));
  EXPECT_LT(packed, before);
  EXPECT_GE(packed, after);
}

TEST(ExpertPlacement, GroupsThatDoNotSplitOverTheNodesFallBackToGlobal) {
  std::vector<double> load = {9, 1, 1, 1, 1, 1, 1, 1};
  // 3 groups cannot divide 8 experts and 2 nodes: the global policy, identical to num_groups = num_nodes = 1.
  const LayerPlacement a = rebalance_experts(load, {10, 3, 2, 2});
  const LayerPlacement b = rebalance_experts(load, {10, 1, 1, 2});
  EXPECT_EQ(a.phy2log, b.phy2log);
  EXPECT_EQ(a.logcnt[0], 3);  // 9 per copy is the heaviest until it has 3 copies (3 each)
}

TEST(ExpertPlacement, ShapesThatDoNotSplitAreRefused) {
  EXPECT_THROW(rebalance_experts(std::vector<double>(8, 1.0), {9, 1, 1, 2}), std::exception);
  EXPECT_THROW(rebalance_experts(std::vector<double>(8, 1.0), {6, 1, 1, 2}), std::exception);
  EXPECT_THROW(contiguous_placement(8, 3), std::exception);
}
