// The serving placement of EPLB (model/eplb.h): every (row, expert) product is computed by exactly one rank, a
// rank holds every expert it computes, the message round-trips, and malformed placements are refused.
#include <gtest/gtest.h>

#include "core/error.h"
#include "model/eplb.h"

using namespace dsv4;

namespace {

// 2 layers of 8 experts: layer 0 skewed towards experts 0 and 1, layer 1 towards 7.
std::vector<std::vector<double>> skewed_loads() {
  return {{400, 200, 50, 40, 30, 20, 10, 10}, {5, 5, 5, 5, 10, 20, 100, 600}};
}

}  // namespace

TEST(Eplb, EveryRowExpertProductOnExactlyOneRankThatHoldsTheExpert) {
  for (int ranks : {2, 4}) {
    const EplbPlacement p = EplbPlacement::compute(skewed_loads(), ranks, 4, 3);
    p.validate(2, 8);
    EXPECT_EQ(p.slots_per_rank(), 12 / ranks);
    for (int l = 0; l < 2; ++l) {
      std::vector<ExpertShare> shares;
      std::vector<std::vector<std::vector<bool>>> held;
      for (int r = 0; r < ranks; ++r) shares.push_back(p.share(l, r)), held.push_back(p.held(r));
      for (int e = 0; e < 8; ++e)
        for (int64_t m = 0; m < 50; ++m) {
          int n = 0;
          for (int r = 0; r < ranks; ++r)
            if (shares[size_t(r)].computes(e, m)) {
              ++n;
              EXPECT_TRUE(held[size_t(r)][size_t(l)][size_t(e)]) << "rank " << r << " computes expert " << e;
            }
          EXPECT_EQ(n, 1) << "layer " << l << " expert " << e << " row " << m << " over " << ranks << " ranks";
        }
    }
  }
}

TEST(Eplb, HotExpertsAreSplitSoRankLoadsEvenOut) {
  const EplbPlacement p = EplbPlacement::compute(skewed_loads(), 2, 4, 1);
  // Layer 1's hottest expert (7, 600 of 750 tokens) gets copies on both ranks: its rows alternate.
  const ExpertShare s0 = p.share(1, 0), s1 = p.share(1, 1);
  EXPECT_GE(s0.copies[7], 2);
  int on0 = 0;
  for (int64_t m = 0; m < 100; ++m) on0 += s0.computes(7, m);
  EXPECT_GT(on0, 0);
  EXPECT_LT(on0, 100);
  // Without replicas one rank gets expert 7 whole: max/mean >= 600 / 375.
  const auto loads = skewed_loads();
  EXPECT_LT(max_over_mean(rank_loads(loads[1], p.layers[1], 2)),
            max_over_mean(rank_loads(loads[1], contiguous_placement(8, 2), 2)));
}

TEST(Eplb, InitialPlacementIsTheSameEverywhereAndChecksTheSplit) {
  ModelConfig c;
  c.n_layers = 3;
  c.n_routed_experts = 8;
  const EplbPlacement a = EplbPlacement::initial(c, 2, 2), b = EplbPlacement::initial(c, 2, 2);
  EXPECT_TRUE(a.same_slots(b));
  EXPECT_EQ(a.epoch, 0u);
  a.validate(3, 8);
  try {
    EplbPlacement::initial(c, 4, 2);  // 10 slots over 4 ranks
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not split evenly over 4"), std::string::npos) << e.what();
  }
}

TEST(Eplb, MessageRoundTripsAndMalformedPlacementsAreRefused) {
  const EplbPlacement p = EplbPlacement::compute(skewed_loads(), 2, 2, 7);
  const EplbPlacement q = EplbPlacement::deserialize(p.serialize());
  EXPECT_EQ(q.epoch, 7u);
  EXPECT_TRUE(q.same_slots(p));
  EXPECT_EQ(q.layers[1].logcnt, p.layers[1].logcnt);
  EXPECT_THROW(EplbPlacement::deserialize("{not json"), Error);
  EXPECT_THROW(p.validate(3, 8), Error);  // another model's layer count
  EplbPlacement twice = p;
  twice.layers[0].replica[1] = twice.layers[0].replica[0];
  twice.layers[0].phy2log[1] = twice.layers[0].phy2log[0];  // one (expert, copy) in two slots
  EXPECT_THROW(twice.validate(2, 8), Error);
  EplbPlacement out_of_range = p;
  out_of_range.layers[1].phy2log[0] = 8;
  EXPECT_THROW(out_of_range.validate(2, 8), Error);
}
