// The memory plan's transient buffers do not grow with the context (issue 17): on the CPU backend the indexer's
// score scratch is bounded by the step's rows, so the workspace for a 1M-token max model length is the 8K one
// plus the block table's 4 bytes per 256-token block.
#include <gtest/gtest.h>

#include <filesystem>

#include "session_util.h"

using namespace dsv4;

namespace {

const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

MemoryPlan plan_for(int64_t max_tokens) {
  // The KV arena's pages stay untouched until written, so a 1M-token sequence costs nothing here.
  SessionOptions o = test::session_options(kTiny, Numerics::Exact, 1, max_tokens);
  o.max_step_tokens = 2048;
  Session s(o);
  return s.runner().memory();
}

}  // namespace

TEST(MemoryPlan, WorkspaceDoesNotGrowWithMaxModelLen) {
  ASSERT_TRUE(std::filesystem::exists(kTiny + "/config.json")) << kTiny << " missing (../shared beside the checkout)";
  const MemoryPlan small = plan_for(8192), large = plan_for(1 << 20);
  EXPECT_EQ(large.max_model_len, 1 << 20);
  EXPECT_GT(small.index_scratch, 0u);
  EXPECT_EQ(small.index_scratch, large.index_scratch);
  // 2048 rows x (tile 1024 + 2 x top-16) f32: what one step needs, whatever the context.
  EXPECT_EQ(large.index_scratch, 2048u * (1024 + 2 * 16) * 4);
  const uint64_t table_growth = ((1 << 20) - 8192) / 256 * 4;  // one sequence's block table
  EXPECT_LE(large.workspace, small.workspace + table_growth + 256);
  EXPECT_GE(large.workspace, small.workspace);
  // The KV part is what grows: one full-length sequence, and the plan's total holds every part.
  EXPECT_GT(large.kv_per_seq, 100 * small.kv_per_seq);
  EXPECT_EQ(large.total(), large.weights + large.workspace + large.kv + large.host_scratch + large.copy_list);
  EXPECT_GT(large.host_scratch, small.host_scratch);  // attention decodes an item's ratio-128 entries (ctx / 128)
  EXPECT_LT(large.host_scratch, 16u << 20);
}
