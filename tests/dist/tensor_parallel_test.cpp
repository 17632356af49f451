// Tensor and expert parallelism with real processes: `dsv4 score --tensor-parallel-size N` starts N - 1 rank
// processes that meet over TCP (Gloo); the logits must equal one rank's (exact numerics: fp32 partial sums
// summed in another order, so to float rounding).
#include <gtest/gtest.h>

#include "score_run.h"

#include <nlohmann/json.hpp>

#include "model/tiny_checkpoint.h"

namespace fs = std::filesystem;
using namespace score_run;

TEST(TensorParallel, TinyATp2AndEp2EqualOneRank) {
  if (!fs::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing";
  const std::string ids = write_ids(300, 2048, 1);
  const auto one = score(kTiny, ids, "--chunk 64");
  ASSERT_FALSE(one.empty());
  // Measured 7.4e-7 (TP=2) and 6.9e-7 (EP=2): float rounding of the reordered sums.
  EXPECT_LT(rel(one, score(kTiny, ids, "--chunk 64 --tensor-parallel-size 2")), 1e-5);
  EXPECT_LT(rel(one, score(kTiny, ids, "--chunk 64 --tensor-parallel-size 2 --enable-expert-parallel")), 1e-5);
}

TEST(TensorParallel, ModelWithMoreHeadsGroupsAndExpertsAtTp4AndEp4) {
  // 8 heads in 4 output groups, 16 experts of width 256, index heads 8: TP=4 leaves each rank 2 heads, one
  // group, 64 columns of every expert (inside one FP8 block) or 4 whole experts under EP.
  nlohmann::json c = dsv4::tiny_demo_config_json();
  c["num_hidden_layers"] = 4;
  c["vocab_size"] = 1024;
  c["num_attention_heads"] = 8;
  c["o_groups"] = 4;
  c["n_routed_experts"] = 16;
  c["moe_intermediate_size"] = 256;
  c["index_n_heads"] = 8;
  c["sliding_window"] = 16;
  c["index_topk"] = 8;
  const fs::path dir = temp_dir() / "wide-model";
  dsv4::make_random_checkpoint(dir.string(), c, 11);
  const std::string ids = write_ids(160, 1024, 2);
  const auto one = score(dir.string(), ids, "--chunk 23");
  ASSERT_FALSE(one.empty());
  EXPECT_LT(rel(one, score(dir.string(), ids, "--chunk 23 --tensor-parallel-size 2")), 1e-5);
  EXPECT_LT(rel(one, score(dir.string(), ids, "--chunk 23 --tensor-parallel-size 4")), 1e-5);
  EXPECT_LT(rel(one, score(dir.string(), ids, "--chunk 23 --tensor-parallel-size 4 --enable-expert-parallel")), 1e-5);
}

TEST(TensorParallel, ShapesThatDoNotSplitAreRefusedWithTheReason) {
  if (!fs::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing";
  const std::string ids = write_ids(10, 2048, 3);
  const fs::path log = temp_dir() / "tp3.log";
  // tiny-a has 4 heads: 3 ranks cannot share them.
  const std::string cmd = kBin + " score --device cpu --model " + kTiny + " --ids " + ids + " --out " +
                          (temp_dir() / "tp3.bin").string() + " --tensor-parallel-size 3 --master-port " +
                          std::to_string(free_port()) + " > " + log.string() + " 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0);
  std::ifstream f(log);
  const std::string text(std::istreambuf_iterator<char>(f), {});
  EXPECT_NE(text.find("does not split evenly across 3 ranks"), std::string::npos) << text;
}
