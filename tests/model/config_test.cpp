#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"

using namespace dsv4;
using nlohmann::json;

namespace {
json tiny() {
  std::ifstream f(std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a/config.json");
  return json::parse(f);
}
std::string error_of(const json& j) {
  try {
    ModelConfig::from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, ParsesTinyA) {
  auto c = ModelConfig::from_json(tiny());
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.compress_ratios.size(), 6u);  // 5 layers + one MTP entry
  EXPECT_EQ(c.ratio(2), 128);
  EXPECT_EQ(c.rope_original_max_pos, 65536);
  EXPECT_EQ(c.expert_format, ExpertFormat::FP4);
  EXPECT_EQ(c.weight_block, 128);
  EXPECT_EQ(c.nope_dim(), 96);
}

TEST(Config, ParsesRealFlashConfigShape) {
  auto j = tiny();
  j["num_nextn_predict_layers"] = 1;
  auto c = ModelConfig::from_json(j);
  EXPECT_EQ(c.n_mtp_layers, 1);
}

TEST(Config, MissingKeyIsNamed) {
  for (const char* key : {"hidden_size", "compress_ratios", "index_topk", "hc_mult", "rope_theta"}) {
    auto j = tiny();
    j.erase(key);
    EXPECT_NE(error_of(j).find(std::string("'") + key + "'"), std::string::npos) << key << ": " << error_of(j);
  }
  auto j = tiny();
  j["rope_scaling"].erase("factor");
  EXPECT_NE(error_of(j).find("'factor'"), std::string::npos);
}

TEST(Config, RejectsBadValues) {
  auto j = tiny();
  j["compress_ratios"][1] = 8;
  EXPECT_NE(error_of(j).find("compress_ratios[1] = 8"), std::string::npos) << error_of(j);
  j = tiny();
  j["o_groups"] = 3;  // 4 heads
  EXPECT_NE(error_of(j).find("not divisible by o_groups"), std::string::npos) << error_of(j);
  j = tiny();
  j["qk_rope_head_dim"] = 33;
  EXPECT_NE(error_of(j).find("qk_rope_head_dim"), std::string::npos);
  j = tiny();
  j["compress_ratios"] = {0, 4};
  EXPECT_NE(error_of(j).find("compress_ratios has 2 entries"), std::string::npos) << error_of(j);
  j = tiny();
  j["hidden_size"] = "256";
  EXPECT_NE(error_of(j).find("wrong type"), std::string::npos);
  j = tiny();
  j["expert_dtype"] = "int3";
  EXPECT_NE(error_of(j).find("expert_dtype"), std::string::npos);
}

// 0731's DSpark keys (spec §7.1): the stage count is the extra compress_ratios entries, whatever
// num_nextn_predict_layers says; the keys are validated.
TEST(Config, ParsesDSparkKeysAndCountsStages) {
  json j = tiny();
  j["compress_ratios"] = {0, 4, 128, 4, 0, 0, 0, 0};  // 5 layers + 3 stages
  j["num_nextn_predict_layers"] = 1;                  // stale, as in 0731
  j["dspark_block_size"] = 5;
  j["dspark_noise_token_id"] = 2047;
  j["dspark_target_layer_ids"] = {2, 3, 4};
  j["dspark_markov_rank"] = 64;
  auto c = ModelConfig::from_json(j);
  EXPECT_EQ(c.n_dspark_stages, 3);
  EXPECT_EQ(c.n_mtp_layers, 0);
  EXPECT_EQ(c.dspark_block_size, 5);
  EXPECT_EQ(c.dspark_noise_token_id, 2047);
  EXPECT_EQ(c.dspark_target_layer_ids, (std::vector<int>{2, 3, 4}));
  EXPECT_EQ(c.dspark_markov_rank, 64);
  auto bad = [&](const char* key, json v, const char* want) {
    json b = j;
    b[key] = v;
    const std::string e = error_of(b);
    EXPECT_NE(e.find(want), std::string::npos) << key << ": " << e;
  };
  bad("dspark_noise_token_id", 2048, "outside the vocabulary");
  bad("dspark_target_layer_ids", {2, 5}, "out of range");
  bad("dspark_target_layer_ids", json::array(), "empty");
  bad("dspark_block_size", 0, "dspark_block_size");
  bad("dspark_markov_rank", -1, "dspark_markov_rank");
  bad("compress_ratios", {0, 4, 128, 4, 0}, "no entries for the DSpark stages");
  json missing = j;
  missing.erase("dspark_noise_token_id");
  EXPECT_NE(error_of(missing).find("dspark_noise_token_id"), std::string::npos) << error_of(missing);
}
