// make-tiny's demo checkpoint: official format (inspect OK), loads and runs under both numerics with one-shot ==
// token-by-token logits, sane logit spread, byte-identical for a seed; and the safetensors writer round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/safetensors.h"
#include "model/safetensors_writer.h"
#include "model/tiny_checkpoint.h"
#include "model/weight_schema.h"
#include "session_util.h"
#include "test_files.h"

using namespace dsv4;
namespace fs = std::filesystem;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::string s(fs::file_size(p), '\0');
  f.read(s.data(), std::streamsize(s.size()));
  return s;
}

double rel(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

class TinyCheckpoint : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(test::temp_dir("tiny_ckpt"));
    std::ofstream(*root_ + "/tok.json") << "{\"model\": {\"type\": \"BPE\"}}\n";  // stands in for the real one
    make_tiny_checkpoint(*root_ + "/a", kTinyDemoSeed, *root_ + "/tok.json");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  static std::string dir() { return *root_ + "/a"; }
  static inline std::string* root_ = nullptr;
};

// T tokens: BOS then ids spread over the BPE range. T > 256 so the ratio-4 layers hold more compressed entries
// (T/4) than index_topk (64) and the indexer really selects; T > window (128) and > 2 x 128 (two HCA entries).
std::vector<int32_t> prompt(int T) {
  std::vector<int32_t> ids{0};
  uint64_t s = 12345;
  while (int(ids.size()) < T) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids.push_back(int32_t(2 + (s >> 33) % 127998));
  }
  return ids;
}

void check_model(Numerics numerics, const std::string& dir) {
  Session m(test::session_options(dir, numerics, 2, 272));
  const int64_t V = m.config().vocab_size;
  ASSERT_EQ(V, 129280);
  const auto ids = prompt(272);
  const size_t T = ids.size();

  std::vector<float> whole;
  {
    whole = test::run_chunked(m, ids, ids.size());
  }
  ASSERT_EQ(whole.size(), T * size_t(V));

  // Finite, with a real spread, and not one token predicted everywhere.
  double sum = 0, sq = 0;
  bool finite = true;
  for (float v : whole) {
    finite &= std::isfinite(v);
    sum += v;
    sq += double(v) * v;
  }
  ASSERT_TRUE(finite);
  const double mean = sum / double(whole.size()), sd = std::sqrt(sq / double(whole.size()) - mean * mean);
  EXPECT_GT(sd, 0.1);
  EXPECT_LT(sd, 10.0);
  std::vector<int64_t> top;
  for (size_t t = 0; t < T; ++t) {
    const float* r = whole.data() + t * size_t(V);
    top.push_back(std::max_element(r, r + V) - r);
  }
  std::sort(top.begin(), top.end());
  EXPECT_GT(std::unique(top.begin(), top.end()) - top.begin(), 10) << "argmax nearly constant over positions";

  // Token by token (the decode path) gives the same logits. The 129280-row head dominates a decode step, so
  // logits are taken at every 16th position and the last 24 only (skip_logits elsewhere).
  const int seq = m.new_sequence();
  double worst = 0;
  int compared = 0;
  std::vector<float> row;
  for (size_t t = 0; t < T; ++t) {
    const bool want = t % 16 == 15 || t + 24 >= T;
    row.clear();
    Session::Chunk it{seq, std::span<const int32_t>(ids).subspan(t, 1), want ? LogitRows::Last : LogitRows::None};
    m.forward(std::span<const Session::Chunk>(&it, 1), row);
    ASSERT_EQ(row.size(), want ? size_t(V) : 0u);
    if (!want) continue;
    worst = std::max(worst, rel(row.data(), whole.data() + t * size_t(V), size_t(V)));
    ++compared;
  }
  EXPECT_EQ(compared, 24 + 15);
  EXPECT_LE(worst, 1e-5) << "worst position relative difference, token by token vs one shot";
}

}  // namespace

TEST(TinyDemoConfig, HasTheRealConfigKeysAndTinySizes) {
  const auto j = tiny_demo_config_json();
  for (const char* k :
       {"architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "qk_rope_head_dim", "q_lora_rank", "o_lora_rank", "o_groups",
        "sliding_window", "compress_ratios", "compress_rope_theta", "rope_theta", "rope_scaling",
        "max_position_embeddings", "index_n_heads", "index_head_dim", "index_topk", "n_routed_experts",
        "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size", "num_hash_layers", "scoring_func",
        "topk_method", "norm_topk_prob", "routed_scaling_factor", "swiglu_limit", "hidden_act", "hc_mult",
        "hc_sinkhorn_iters", "hc_eps", "rms_norm_eps", "num_nextn_predict_layers", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "attention_bias", "attention_dropout", "initializer_range", "torch_dtype",
        "transformers_version", "use_cache", "quantization_config", "expert_dtype"})
    EXPECT_TRUE(j.contains(k)) << k;
  const ModelConfig c = tiny_demo_config();
  EXPECT_EQ(c.vocab_size, 129280);
  EXPECT_EQ(c.dim, 256);
  EXPECT_EQ(c.n_layers, 4);
  EXPECT_EQ(c.compress_ratios, (std::vector<int>{0, 4, 128, 4, 0}));
  EXPECT_EQ(c.n_mtp_layers, 1);
  EXPECT_EQ(c.window, 128);
  EXPECT_EQ(c.index_topk, 64);
  EXPECT_EQ(c.n_hash_layers, 2);
  EXPECT_TRUE(c.fp8_weights);
  EXPECT_TRUE(c.has_expert_dtype);
  EXPECT_EQ(c.expert_format, ExpertFormat::FP4);
  EXPECT_EQ(c.max_position_embeddings, 1048576);
  EXPECT_DOUBLE_EQ(c.rope_factor, 16);
}

TEST_F(TinyCheckpoint, WritesTheOfficialLayout) {
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json",
                        "tokenizer.json"})
    EXPECT_TRUE(fs::exists(fs::path(dir()) / f)) << f;
  EXPECT_EQ(read_all(fs::path(dir()) / "tokenizer.json"), read_all(*root_ + "/tok.json"));
  auto gen = nlohmann::json::parse(read_all(fs::path(dir()) / "generation_config.json"));
  EXPECT_EQ(gen, (nlohmann::json{{"do_sample", true}, {"temperature", 1.0}, {"top_p", 1.0}, {"bos_token_id", 0},
                                 {"eos_token_id", 1}}));
  auto tc = nlohmann::json::parse(read_all(fs::path(dir()) / "tokenizer_config.json"));
  EXPECT_EQ(tc["add_bos_token"], false);
  EXPECT_EQ(tc["bos_token"], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tc["eos_token"], "<｜end▁of▁sentence｜>");

  const auto cfg = ModelConfig::load(dir() + "/config.json");
  EXPECT_EQ(nlohmann::json::parse(read_all(fs::path(dir()) / "config.json")), tiny_demo_config_json());
  Checkpoint ck(dir());
  EXPECT_EQ(ck.num_files(), 1u);
  const auto r = inspect_checkpoint(cfg, ck);
  EXPECT_TRUE(r.ok()) << r.missing.size() << " missing, " << r.unexpected.size() << " unexpected, "
                      << r.mismatched.size() << " mismatched";
  EXPECT_EQ(r.n_tensors, expected_tensors(cfg, ExpertFormat::FP4).size());
  EXPECT_EQ(detect_expert_format(cfg, ck), ExpertFormat::FP4);
  EXPECT_LT(r.total_bytes, 200u << 20);
  // Official dtypes, each tensor aligned to its element size.
  EXPECT_EQ(ck.get("layers.0.attn.wq_a.weight").dtype, DType::F8_E4M3);
  EXPECT_EQ(ck.get("layers.0.attn.wq_a.scale").dtype, DType::F8_E8M0);
  EXPECT_EQ(ck.get("layers.1.ffn.experts.3.w2.weight").dtype, DType::I8);
  EXPECT_EQ(ck.get("layers.0.ffn.gate.tid2eid").dtype, DType::I64);
  EXPECT_EQ(ck.get("layers.2.ffn.gate.bias").dtype, DType::F32);
  EXPECT_EQ(ck.get("embed.weight").dtype, DType::BF16);
  for (auto& [name, t] : ck.all()) EXPECT_EQ(uintptr_t(t->data) % dtype_size(t->dtype), 0u) << name;

  // Hash routing: every row holds k distinct experts in range.
  const TensorInfo& h = ck.get("layers.1.ffn.gate.tid2eid");
  std::vector<int64_t> ids(size_t(h.numel()));
  std::memcpy(ids.data(), h.data, h.nbytes);
  const int k = cfg.n_experts_per_tok;
  std::vector<int> uses(size_t(cfg.n_routed_experts), 0);
  for (size_t r0 = 0; r0 < ids.size(); r0 += size_t(k)) {
    for (int a = 0; a < k; ++a) {
      ASSERT_GE(ids[r0 + size_t(a)], 0);
      ASSERT_LT(ids[r0 + size_t(a)], cfg.n_routed_experts);
      uses[size_t(ids[r0 + size_t(a)])]++;
      for (int b = 0; b < a; ++b) ASSERT_NE(ids[r0 + size_t(a)], ids[r0 + size_t(b)]);
    }
  }
  for (int u : uses) EXPECT_GT(u, int(ids.size()) / cfg.n_routed_experts / 2);  // roughly uniform
}

TEST_F(TinyCheckpoint, ExactNumericsRunsAndDecodeEqualsPrefill) { check_model(Numerics::Exact, dir()); }

TEST_F(TinyCheckpoint, ReferenceNumericsRunsAndDecodeEqualsPrefill) { check_model(Numerics::Reference, dir()); }

TEST_F(TinyCheckpoint, SameSeedSameBytesOtherSeedOtherBytes) {
  const std::string b = *root_ + "/b";
  make_tiny_checkpoint(b, kTinyDemoSeed + 1, "");
  EXPECT_FALSE(fs::exists(b + "/tokenizer.json"));
  const std::string a = read_all(dir() + "/model.safetensors");
  std::string other = read_all(b + "/model.safetensors");
  EXPECT_EQ(a.size(), other.size());
  EXPECT_FALSE(a == other) << "another seed gave the same bytes";
  EXPECT_EQ(read_all(dir() + "/config.json"), read_all(b + "/config.json"));
  other.clear();
  // The same seed again, over the existing directory: byte-identical, and no temporaries left behind.
  make_tiny_checkpoint(b, kTinyDemoSeed, "");
  EXPECT_TRUE(a == read_all(b + "/model.safetensors")) << "same seed, different bytes";
  for (auto& e : fs::directory_iterator(b))
    EXPECT_EQ(e.path().filename().string().find(".partial"), std::string::npos) << e.path();
}

TEST(TinyCheckpointErrors, MissingTokenizerIsAnError) {
  const std::string d = test::temp_dir("tiny_ckpt_err");
  EXPECT_THROW(make_tiny_checkpoint(d + "/m", 1, d + "/no-such-tokenizer.json"), Error);
  EXPECT_FALSE(fs::exists(d + "/m/model.safetensors"));
  fs::remove_all(d);
}

TEST(SafetensorsWriter, RoundTripsThroughTheReader) {
  const std::string d = test::temp_dir("st_writer");
  std::vector<TensorToWrite> ts;
  ts.push_back({"z.bytes", DType::U8, {3}, {1, 2, 3}});
  ts.push_back({"a.f32", DType::F32, {2}, std::vector<uint8_t>(8, 0x3f)});
  ts.push_back({"m.bf16", DType::BF16, {1, 3}, {1, 2, 3, 4, 5, 6}});
  ts.push_back({"b.i64", DType::I64, {1}, {7, 0, 0, 0, 0, 0, 0, 0}});
  ts.push_back({"e.empty", DType::F32, {0, 4}, {}});
  write_safetensors(d + "/x.safetensors", ts);
  SafetensorsFile f(d + "/x.safetensors");
  ASSERT_EQ(f.tensors().size(), ts.size());
  for (auto& want : ts) {
    auto it = std::find_if(f.tensors().begin(), f.tensors().end(), [&](auto& t) { return t.name == want.name; });
    ASSERT_NE(it, f.tensors().end()) << want.name;
    EXPECT_EQ(it->dtype, want.dtype);
    EXPECT_EQ(it->shape, want.shape);
    ASSERT_EQ(it->nbytes, want.bytes.size());
    if (it->nbytes) {
      EXPECT_EQ(std::memcmp(it->data, want.bytes.data(), it->nbytes), 0) << want.name;
      EXPECT_EQ(uintptr_t(it->data) % dtype_size(it->dtype), 0u) << want.name;
    }
  }
  const std::string raw = read_all(d + "/x.safetensors");
  uint64_t hlen = 0;
  std::memcpy(&hlen, raw.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  auto h = nlohmann::json::parse(raw.substr(8, hlen));
  EXPECT_EQ(h["__metadata__"], (nlohmann::json{{"format", "pt"}}));
  EXPECT_EQ(raw.size(), 8 + hlen + 3 + 8 + 6 + 8);
  // Order-independent: the same tensors in another order give the same bytes.
  std::reverse(ts.begin(), ts.end());
  write_safetensors(d + "/y.safetensors", ts);
  EXPECT_TRUE(raw == read_all(d + "/y.safetensors"));

  ts.push_back({"a.f32", DType::F32, {2}, std::vector<uint8_t>(8, 0)});
  EXPECT_THROW(write_safetensors(d + "/dup.safetensors", ts), Error);
  EXPECT_THROW(write_safetensors(d + "/bad.safetensors", {{"w", DType::F32, {3}, {1, 2, 3}}}), Error);
  EXPECT_FALSE(fs::exists(d + "/bad.safetensors"));
  fs::remove_all(d);
}
