// `inspect` against the real checkpoint layouts: the 0731 headers shipped in shared/ (DSpark stages,
// 160 experts) and the official V4-Flash layout of spec §4 (256 experts, one MTP layer).
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <fstream>

#include "core/error.h"
#include "model/kv_cache.h"
#include "model/weight_schema.h"
#include "test_files.h"

using namespace dsv4;
using nlohmann::json;

namespace {

const std::string kHeaders = std::string(DSV4_SHARED_DIR) + "/fixtures/real-layout/real-0731-headers.tar.xz";

// Rebuilds the real shards as sparse files (real header, data section of the declared size, no bytes).
std::string make_0731_sparse(const std::string& name, const std::string& drop = "") {
  auto tmp = test::temp_dir(name + "_src");
  if (std::system(("tar -xJf '" + kHeaders + "' -C '" + tmp + "'").c_str()) != 0) return "";
  std::string src = tmp + "/real-0731-headers", out = test::temp_dir(name);
  json idx = json::parse(std::ifstream(src + "/index.json"));
  std::filesystem::copy_file(src + "/config.json", out + "/config.json");
  std::set<std::string> shards;
  for (auto& [k, v] : idx["weight_map"].items()) shards.insert(v.get<std::string>());
  if (!drop.empty()) idx["weight_map"].erase(drop);
  std::ofstream(out + "/model.safetensors.index.json") << idx.dump();
  for (auto& s : shards) {
    int n = std::stoi(s.substr(s.find('-') + 1, 5));
    char hn[32];
    std::snprintf(hn, sizeof hn, "/hdr_%02d.json", n);
    json h = json::parse(std::ifstream(src + hn));
    uint64_t end = 0;
    for (auto& [k, v] : h.items())
      if (k != "__metadata__") end = std::max<uint64_t>(end, v["data_offsets"][1].get<uint64_t>());
    if (!drop.empty()) h.erase(drop);
    test::write_safetensors(out + "/" + s, h, "", end);
  }
  std::filesystem::remove_all(tmp);
  return out;
}

}  // namespace

TEST(Inspect, Real0731LayoutWithDSparkPasses) {
  auto dir = make_0731_sparse("ck0731");
  ASSERT_FALSE(dir.empty()) << "could not extract " << kHeaders;
  auto cfg = ModelConfig::load(dir + "/config.json");
  EXPECT_EQ(cfg.n_dspark_stages, 3);
  EXPECT_EQ(cfg.n_routed_experts, 160);
  Checkpoint ck(dir);
  EXPECT_EQ(ck.num_files(), 48u);
  auto r = inspect_checkpoint(cfg, ck);
  for (auto& m : r.missing) ADD_FAILURE() << "missing " << m;
  for (auto& m : r.unexpected) ADD_FAILURE() << "unexpected " << m;
  for (auto& m : r.mismatched) ADD_FAILURE() << m;
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.n_tensors, 45821u);
  EXPECT_EQ(r.total_bytes, 107803320952u - 0u + 0u) << "sum of tensor bytes vs index total_size";
  std::filesystem::remove_all(dir);
}

TEST(Inspect, Real0731MissingTensorIsReported) {
  auto dir = make_0731_sparse("ck0731drop", "layers.7.attn.wkv.scale");
  ASSERT_FALSE(dir.empty());
  Checkpoint ck(dir);
  auto r = inspect_checkpoint(ModelConfig::load(dir + "/config.json"), ck);
  ASSERT_EQ(r.missing.size(), 1u);
  EXPECT_EQ(r.missing[0], "layers.7.attn.wkv.scale");
  std::filesystem::remove_all(dir);
}

TEST(Inspect, OfficialFlashLayoutParameterCount) {
  // Config of spec §1.1 (V4-Flash, current revision); tensors as spec §4.2 lists them.
  auto dir = test::temp_dir("flash");
  json cfg = json::parse(std::ifstream(std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a/config.json"));
  cfg.update(json{{"vocab_size", 129280}, {"hidden_size", 4096}, {"num_hidden_layers", 43}, {"num_attention_heads", 64},
                  {"head_dim", 512}, {"qk_rope_head_dim", 64}, {"q_lora_rank", 1024}, {"o_lora_rank", 1024},
                  {"o_groups", 8}, {"sliding_window", 128}, {"index_n_heads", 64}, {"index_head_dim", 128},
                  {"index_topk", 512}, {"n_routed_experts", 256}, {"num_experts_per_tok", 6},
                  {"moe_intermediate_size", 2048}, {"num_hash_layers", 3}, {"num_nextn_predict_layers", 1}});
  std::vector<int> ratios{0, 0};
  for (int l = 2; l < 43; ++l) ratios.push_back(l % 2 == 0 ? 4 : 128);
  ratios.push_back(0);  // MTP
  cfg["compress_ratios"] = ratios;
  std::ofstream(dir + "/config.json") << cfg.dump();
  auto c = ModelConfig::load(dir + "/config.json");
  std::vector<test::SpecTensor> ts;
  for (auto& s : expected_tensors(c, ExpertFormat::FP4)) ts.push_back({s.name, s.dtypes[0], s.shape});
  test::write_sparse_checkpoint(dir + "/model.safetensors", ts);
  Checkpoint ck(dir);
  auto r = inspect_checkpoint(c, ck);
  EXPECT_TRUE(r.ok());
  // Spec §1.3 / §4.1: 290,942,289,362 parameters in all (incl. MTP 6,610,048,891); dtype counts of §4.1.
  EXPECT_EQ(r.n_params, 290942289362u);
  EXPECT_EQ(r.n_params_mtp, 6610048891u);
  EXPECT_EQ(r.tensors_per_dtype["F8_E4M3"], 375u);
  EXPECT_EQ(r.tensors_per_dtype["I8"], 33792u);
  EXPECT_EQ(r.tensors_per_dtype["F8_E8M0"], 34167u);
  EXPECT_EQ(r.tensors_per_dtype["BF16"], 433u);
  EXPECT_EQ(r.tensors_per_dtype["F32"], 417u);
  EXPECT_EQ(r.tensors_per_dtype["I64"], 3u);
  // KV bytes per token (spec §5.2): fp8 main entries 584 B + fp8 indexer keys 132 B -> 3,850.25 B/token.
  auto fp8 = KvLayout::make(c, 256, KvDtype::FP8, false), bf16 = KvLayout::make(c, 256, KvDtype::BF16, false);
  // (plus at most 0.2% of 64-byte alignment between layers' regions)
  EXPECT_GE(double(fp8.block_bytes()) / 256, 3850.25);
  EXPECT_LE(double(fp8.block_bytes()) / 256, 3850.25 * 1.002);
  const double bf16_tok = 21 * (1024 + 256) / 4.0 + 20 * 1024 / 128.0;  // 6,880 B/token, spec §5.1
  EXPECT_GE(double(bf16.block_bytes()) / 256, bf16_tok);
  EXPECT_LE(double(bf16.block_bytes()) / 256, bf16_tok * 1.002);
  std::filesystem::remove_all(dir);
}
