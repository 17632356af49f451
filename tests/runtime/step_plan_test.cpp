// The step plan is plain data that survives serialization (the multi-rank runner sends it to every rank),
// and malformed bytes are an error, never a half-read plan.
#include <gtest/gtest.h>

#include "core/error.h"
#include "runtime/step_plan.h"

using namespace dsv4;

TEST(StepPlan, SerializationRoundTripsEveryField) {
  StepPlan p;
  p.step = 42;
  p.batch.items.push_back({3, 512, {5, 6, 7}, {9, 1, 4}, LogitRows::Last});
  p.batch.items.push_back({0, 0, {1}, {2}, LogitRows::None});
  p.batch.items.push_back({7, 100, {8, 8, 8, 8}, {11}, LogitRows::All, {0, 1, 2, 300}});
  p.batch.mtp = true;
  p.copies = {{100, 2000, 584}, {0, 64, 8}};
  const StepPlan q = StepPlan::deserialize(p.serialize());
  EXPECT_EQ(q.step, 42u);
  ASSERT_EQ(q.batch.items.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(q.batch.items[i].slot, p.batch.items[i].slot);
    EXPECT_EQ(q.batch.items[i].start, p.batch.items[i].start);
    EXPECT_EQ(q.batch.items[i].tokens, p.batch.items[i].tokens);
    EXPECT_EQ(q.batch.items[i].blocks, p.batch.items[i].blocks);
    EXPECT_EQ(q.batch.items[i].logits, p.batch.items[i].logits);
    EXPECT_EQ(q.batch.items[i].hidden, p.batch.items[i].hidden);
  }
  EXPECT_TRUE(q.batch.mtp);
  EXPECT_EQ(q.batch.dspark, DSparkPass::None);
  EXPECT_FALSE(q.batch.keep_hidden);
  for (DSparkPass d : {DSparkPass::Block, DSparkPass::Markov}) {  // the DSpark pass kind travels too
    StepPlan b = p;
    b.batch.mtp = false;
    b.batch.dspark = d;
    EXPECT_EQ(StepPlan::deserialize(b.serialize()).batch.dspark, d);
  }
  ASSERT_EQ(q.copies.size(), 2u);
  EXPECT_EQ(q.copies[0].src, 100);
  EXPECT_EQ(q.copies[0].dst, 2000);
  EXPECT_EQ(q.copies[1].bytes, 8);
  EXPECT_EQ(q.batch.rows(), 8);
  EXPECT_EQ(q.batch.logit_rows(), 5);
}

TEST(StepPlan, MalformedBytesAreRefused) {
  StepPlan p;
  p.batch.items.push_back({1, 0, {5, 6}, {0}, LogitRows::Last});
  const std::string s = p.serialize();
  EXPECT_THROW(StepPlan::deserialize(""), Error);
  EXPECT_THROW(StepPlan::deserialize(s.substr(0, s.size() - 1)), Error);  // truncated
  EXPECT_THROW(StepPlan::deserialize(s + "x"), Error);                    // trailing bytes
  std::string bad = s;
  bad[0] ^= 0x55;  // magic
  EXPECT_THROW(StepPlan::deserialize(bad), Error);
  for (size_t cut = 0; cut < s.size(); ++cut) EXPECT_THROW(StepPlan::deserialize(s.substr(0, cut)), Error) << cut;
}

TEST(StepPlan, MicroBatchesAreContiguousNonEmptyAndEvenByTokens) {
  StepBatch b;
  for (int n : {5, 1, 1, 9, 3, 1}) {
    StepItem it;
    it.slot = int32_t(b.items.size());
    it.tokens.assign(size_t(n), 7);
    b.items.push_back(it);
  }
  for (int m = 1; m <= 8; ++m) {
    const auto mb = split_micro_batches(b, m);
    ASSERT_EQ(mb.size(), size_t(std::min(m, 6))) << m;
    int32_t next = 0;
    for (auto& g : mb) {
      ASSERT_FALSE(g.items.empty()) << m;
      for (auto& it : g.items) EXPECT_EQ(it.slot, next++) << m;  // every item once, in order
    }
    EXPECT_EQ(next, 6);
  }
  // Two micro-batches of 20 tokens: [5, 1, 1] + [9, 3, 1], 7 and 13 (taking the 9 would overshoot 10 by more).
  const auto two = split_micro_batches(b, 2);
  EXPECT_EQ(two[0].rows(), 7);
  EXPECT_EQ(two[1].rows(), 13);
  // Equal decode rows split equally.
  StepBatch d;
  for (int i = 0; i < 8; ++i) {
    StepItem it;
    it.slot = i;
    it.tokens = {1};
    d.items.push_back(it);
  }
  for (int m : {2, 4, 8})
    for (auto& g : split_micro_batches(d, m)) EXPECT_EQ(g.rows(), 8 / m) << m;
  EXPECT_THROW(split_micro_batches(b, 0), Error);
}
