// The CUDA backend end to end against the CPU backend (the reference): tiny-a's golden logits, chunked and
// batched consistency, a mid-size random model with V4-Flash head dimensions (every layer kind), both numerics,
// and the serving engine's greedy tokens. Skips, saying why, where no CUDA device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include "model/known_configs.h"
#include "model/tiny_checkpoint.h"
#include "runtime/engine.h"
#include "session_util.h"
#include "shadow_backend.h"
#include "test_files.h"

using namespace dsv4;

namespace {

const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

using test::rel;

std::vector<int32_t> ids_of(size_t n, int vocab, uint32_t seed) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = int32_t(2 + (i * 2654435761u + seed * 40503u) % uint32_t(vocab - 2));
  return v;
}

class DeviceParity : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (!make_cuda_backend(0, &why)) GTEST_SKIP() << "no CUDA backend here: " << why;
    ASSERT_TRUE(std::filesystem::exists(kTiny + "/model.safetensors")) << kTiny << " missing";
  }
  static SessionOptions on(const std::string& dev, const std::string& dir, Numerics n, int64_t max_tokens) {
    SessionOptions o = test::session_options(dir, n, 3, max_tokens);
    o.device = dev;
    return o;
  }
};

}  // namespace

TEST_F(DeviceParity, TinyAExactMatchesCpuChunkedAndBatched) {
  const auto ids = ids_of(600, 2048, 1);
  Session cpu(on("cpu", kTiny, Numerics::Exact, 1024)), gpu(on("cuda", kTiny, Numerics::Exact, 1024));
  const auto ref = test::run_chunked(cpu, ids, ids.size());
  const auto whole = test::run_chunked(gpu, ids, ids.size());
  EXPECT_LE(rel(whole, ref), 1e-4) << "cuda vs cpu, one shot";
  for (size_t chunk : {size_t(1), size_t(7), size_t(64)}) {
    const auto c = test::run_chunked(gpu, ids, chunk);
    EXPECT_LE(rel(c, whole), 1e-4) << "cuda chunk " << chunk << " vs one shot";
  }
  // Batched: three sequences in the same steps, chunks 97 / 1 / 33.
  std::vector<std::vector<int32_t>> P{ids, ids_of(300, 2048, 2), ids_of(200, 2048, 3)};
  const size_t chunks[3] = {97, 1, 33};
  std::vector<int> seqs;
  std::vector<size_t> done(3, 0);
  std::vector<std::vector<float>> got(3);
  for (int i = 0; i < 3; ++i) seqs.push_back(gpu.new_sequence());
  while (true) {
    std::vector<Session::Chunk> items;
    std::vector<size_t> which;
    for (size_t i = 0; i < 3; ++i) {
      if (done[i] >= P[i].size()) continue;
      const size_t n = std::min(chunks[i], P[i].size() - done[i]);
      items.push_back({seqs[i], std::span<const int32_t>(P[i]).subspan(done[i], n), LogitRows::All});
      which.push_back(i);
      done[i] += n;
    }
    if (items.empty()) break;
    std::vector<float> out;
    gpu.forward(items, out);
    size_t off = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      const size_t n = items[k].tokens.size() * 2048;
      got[which[k]].insert(got[which[k]].end(), out.begin() + long(off), out.begin() + long(off + n));
      off += n;
    }
  }
  for (size_t i = 0; i < 3; ++i) EXPECT_LE(rel(got[i], test::run_chunked(cpu, P[i], P[i].size())), 1e-4) << "batched " << i;
}

TEST_F(DeviceParity, MidSizeModelBothNumericsMatchCpu) {
  // Exact numerics: fp32 everywhere, only the summation order differs, so the indexer's top-64 picks are the
  // same and the logits agree closely. Reference numerics rounds the indexer scores to bf16, where near-ties
  // are common: a last-bit difference picks another entry and the random model's logits move far. So
  // reference numerics is compared with top-k >= the entries there are (every entry selected, in any order),
  // where only one-step rounding flips remain; the top-64 figure is printed for the record.
  const std::string dir = test::temp_dir("mid_model"), all = test::temp_dir("mid_model_all");
  auto cfg = mid_size_config_json();
  make_random_checkpoint(dir, cfg, 7);
  cfg["index_topk"] = 512;
  make_random_checkpoint(all, cfg, 7);
  const auto ids = ids_of(700, 4096, 4);
  struct Case {
    const std::string* d;
    Numerics n;
    double tol;
    const char* what;
  };
  // Measured on an H200: exact 2e-6; reference 0.19 with either top-k. Reference numerics is discontinuous
  // (FP8 activation codes 1/16 apart, bf16 rounding): a last-bit difference in a sum flips a code, and this
  // random model amplifies such flips layer after layer (0.4% after one layer). ShadowEveryOpAgainstCpu checks
  // reference numerics op by op instead, where every op agrees within one rounding step.
  for (Case c : {Case{&dir, Numerics::Exact, 1e-4, "exact, top-64"},
                 Case{&all, Numerics::Reference, 1e9, "reference, top-512 (all; not asserted)"}}) {
    Session cpu(on("cpu", *c.d, c.n, 1024)), gpu(on("cuda", *c.d, c.n, 1024));
    const auto a = test::run_chunked(cpu, ids, 97), b = test::run_chunked(gpu, ids, 97);
    const double d = rel(b, a);
    std::printf("mid-size model, %s: cuda vs cpu relative difference %.3g\n", c.what, d);
    EXPECT_LE(d, c.tol) << c.what;
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(all);
}

TEST_F(DeviceParity, EngineGreedyTokensMatchCpu) {
  auto run = [&](const std::string& dev) {
    EngineConfig c;
    c.model_dir = kTiny;
    c.device = dev;
    c.numerics = Numerics::Exact;
    c.kv_cache_dtype = "auto";
    c.kv_cache_memory = 64ull << 20;
    c.max_num_seqs = 8;
    c.enable_prefix_caching = true;
    Engine e(c);
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = 24;
    p.ignore_eos = true;
    std::map<uint64_t, std::vector<int32_t>> got;
    std::vector<uint64_t> ids;
    for (int i = 0; i < 6; ++i) ids.push_back(e.add_request(ids_of(100 + 90 * size_t(i), 2048, uint32_t(i % 3)), p));
    while (e.has_work())
      for (auto& o : e.step()) got[o.id].insert(got[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
    std::vector<std::vector<int32_t>> out;
    for (auto id : ids) out.push_back(got[id]);
    return out;
  };
  EXPECT_EQ(run("cuda"), run("cpu"));
}

// Where CUDA and CPU part under reference numerics: the same weights truncated to 1..8 layers (layer kinds:
// 0, 0 ratio 0 hash-routed; 2 ratio 4; 3 ratio 128; ...), logits of one chunk, no indexer selection effects
// (top-k 512 > entries).
TEST_F(DeviceParity, ReferenceNumericsByDepth) {
  const std::string dir = test::temp_dir("mid_depth");
  auto cfg = mid_size_config_json();
  cfg["index_topk"] = 512;
  make_random_checkpoint(dir, cfg, 7);
  const auto ids = ids_of(300, 4096, 5);
  for (int L : {1, 2, 3, 4, 8}) {
    auto c = cfg;
    c["num_hidden_layers"] = L;
    c["num_hash_layers"] = std::min(L, 2);
    std::vector<int> r;
    for (int l = 0; l < L; ++l) r.push_back(cfg["compress_ratios"][size_t(l)].get<int>());
    r.push_back(0);
    c["compress_ratios"] = r;
    std::ofstream(dir + "/config.json") << c.dump(2);
    for (Numerics n : {Numerics::Reference}) {
      for (size_t chunk : {size_t(300), size_t(L == 1 ? 1 : 300)}) {
        if (chunk == 300 && L == 1 && n == Numerics::Exact) continue;
        Session cpu(on("cpu", dir, n, 512)), gpu(on("cuda", dir, n, 512));
        const auto a = test::run_chunked(cpu, ids, chunk), b = test::run_chunked(gpu, ids, chunk);
        std::printf("depth %d (last ratio %d) %s chunk %zu: cuda vs cpu %.3g\n", L, r[size_t(L - 1)],
                    n == Numerics::Exact ? "exact" : "reference", chunk, rel(b, a));
      }
    }
  }
  std::filesystem::remove_all(dir);
}

// Op by op: every op of a reference-numerics forward runs on CUDA and on the CPU from identical inputs; the
// first op whose outputs differ beyond fp32 reordering is printed with each op's worst difference.
TEST_F(DeviceParity, ShadowEveryOpAgainstCpu) {
  const std::string dir = test::temp_dir("mid_shadow");
  auto cfg = mid_size_config_json();
  cfg["num_hidden_layers"] = 4;
  cfg["compress_ratios"] = {0, 0, 4, 128, 0};
  make_random_checkpoint(dir, cfg, 7);
  const auto ids = ids_of(300, 4096, 6);
  for (Numerics n : {Numerics::Reference, Numerics::Exact}) {
    test::ShadowBackend* sb = nullptr;
    SessionOptions o = on("cuda", dir, n, 512);
    o.backend_factory = [&]() -> std::unique_ptr<Backend> {
      std::string why;
      auto s = std::make_unique<test::ShadowBackend>(make_cuda_backend(0, &why), make_cpu_backend(), 1e-4);
      sb = s.get();
      return s;
    };
    Session s(o);
    test::run_chunked(s, ids, 150);
    std::printf("%s numerics, first op beyond 1e-4: %s\n", n == Numerics::Exact ? "exact" : "reference",
                sb->first_divergence().empty() ? "none" : sb->first_divergence().c_str());
    // Exact: fp32 summation order only. Reference: a bf16/FP8 output may differ by one rounding step in a few
    // elements (seen on an H200: at most 2.3e-4, the MoE). Integer outputs (top-k, routing) and KV bytes equal.
    const double tol = n == Numerics::Exact ? 1e-5 : 1e-3;
    for (auto& [op, st] : sb->stats()) {
      std::printf("  %-34s calls %5llu  worst %.3g%s\n", op.c_str(), (unsigned long long)st.calls, st.worst,
                  st.first_bad_call ? " <-" : "");
      const bool exact_op = op == "index_topk" || op == "route" || op == "window_store" || op == "store_entries" ||
                            op == "embed" || op == "gather_rows" || op == "round_bf16" || op == "fp8_roundtrip" ||
                            op == "kv_roundtrip";
      EXPECT_LE(st.worst, exact_op && op != "route" ? 0.0 : tol) << op;
    }
  }
  std::filesystem::remove_all(dir);
}

// Speculative decoding on CUDA (issue 16): a random checkpoint with the drafter the config names, greedy tokens of
// a batch with chunked prefill and a prefix-cache hit, on `dev` with `spec` ("" = plain decoding).
namespace {
struct SpecRun {
  std::vector<std::vector<int32_t>> tokens;
  EngineStats stats;
};
SpecRun greedy_batch(const std::string& model, const std::string& dev, const std::string& spec) {
  EngineConfig c;
  c.model_dir = model;
  c.device = dev;
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.kv_cache_memory = 64ull << 20;
  c.max_num_seqs = 8;
  c.block_size = 128;
  c.max_num_batched_tokens = 96;  // the longer prompts prefill in chunks
  c.enable_prefix_caching = true;
  c.speculative_config = spec;
  Engine e(c);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 20;
  p.ignore_eos = true;
  std::map<uint64_t, std::vector<int32_t>> got;
  std::vector<uint64_t> ids;
  auto drain = [&] {
    while (e.has_work())
      for (auto& o : e.step()) got[o.id].insert(got[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
  };
  auto shared = ids_of(260, 2048, 5);
  for (int i = 0; i < 5; ++i) ids.push_back(e.add_request(ids_of(3 + 70 * size_t(i), 2048, uint32_t(i)), p));
  ids.push_back(e.add_request(shared, p));
  drain();
  shared.resize(200);  // a prefix of a finished request: cache hit
  ids.push_back(e.add_request(shared, p));
  drain();
  SpecRun r;
  for (auto id : ids) r.tokens.push_back(got[id]);
  r.stats = e.stats();
  return r;
}
}  // namespace

// MTP: the drafter layer, verify and rollback on the device give token for token the CPU's plain greedy output.
TEST_F(DeviceParity, SpeculativeMtpGreedyMatchesPlainCpu) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv4-dev-mtp-" + std::to_string(::getpid()));
  std::ifstream f(kTiny + "/config.json");
  nlohmann::json cfg = nlohmann::json::parse(f);
  cfg["num_nextn_predict_layers"] = 1;
  make_random_checkpoint(dir.string(), cfg, 7);
  const auto ref = greedy_batch(dir.string(), "cpu", "");
  const auto spec = greedy_batch(dir.string(), "cuda", R"({"method": "mtp", "num_speculative_tokens": 2})");
  EXPECT_EQ(spec.tokens, ref.tokens);
  EXPECT_GT(spec.stats.spec_num_drafts, 0u) << "no verify step ran";
  std::filesystem::remove_all(dir);
}

// DSpark: the block drafter (bidirectional block attention, stage rings, Markov passes) on the device gives token
// for token the CPU's plain greedy output.
TEST_F(DeviceParity, SpeculativeDSparkGreedyMatchesPlainCpu) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("dsv4-dev-dspark-" + std::to_string(::getpid()));
  std::ifstream f(kTiny + "/config.json");
  make_random_checkpoint(dir.string(), with_dspark_drafter(nlohmann::json::parse(f)), 11);
  const auto ref = greedy_batch(dir.string(), "cpu", "");
  const auto spec = greedy_batch(dir.string(), "cuda", R"({"method": "dspark"})");
  EXPECT_EQ(spec.tokens, ref.tokens);
  EXPECT_GT(spec.stats.spec_num_drafts, 0u) << "no verify step ran";
  std::filesystem::remove_all(dir);
}
