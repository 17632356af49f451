// Pipeline parallelism with real processes. `dsv4 score --pipeline-parallel-size P` starts the other stages as
// rank processes; the residual streams go stage to stage over Gloo, and the logits must equal one stage's
// exactly (the same ops on the same values: only where they run changes). Micro-batches: this process is rank 0
// of a runner group whose other stage is a `dsv4 rank-worker` process, stepping several sequences at once.
#include <gtest/gtest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "model/pipeline.h"
#include "model/kv_cache.h"
#include "model/weights.h"
#include "runtime/model_runner.h"
#include "score_run.h"

extern char** environ;

namespace fs = std::filesystem;
using namespace score_run;

namespace {

void require_fixture() {
  if (!fs::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing";
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST(PipelineParallel, TinyAPp2EqualsOneStageExactly) {
  require_fixture();
  const std::string ids = write_ids(300, 2048, 5);
  const auto one = score(kTiny, ids, "--chunk 64");
  ASSERT_FALSE(one.empty());
  std::string log;
  const auto pp2 = score(kTiny, ids, "--chunk 64 --pipeline-parallel-size 2", &log);
  EXPECT_EQ(rel(one, pp2), 0.0);
  // Each stage places only its layers' weights and KV (the split by bytes of tiny-a's 5 layers).
  const auto cfg = dsv4::ModelConfig::load(kTiny + "/config.json");
  const std::string split = dsv4::format_stages(dsv4::pipeline_stages(cfg, 2, ""));
  EXPECT_NE(log.find("pipeline stage 0 of 2 (rank 0, layers " + split.substr(0, split.find(',')) + ", embedding)"),
            std::string::npos) << log;
  EXPECT_NE(log.find("pipeline stage 1 of 2 (rank 1, layers " + split.substr(split.find(',') + 1) + ", head)"),
            std::string::npos) << log;
  // The stages' tensors are the model's, each exactly once: both logged bytes are what the split places.
  uint64_t sum = 0;
  int64_t kv_block = 0, kv_slot = 0;
  for (int k = 0; k < 2; ++k) {
    const auto st = dsv4::pipeline_stages(cfg, 2, "")[size_t(k)];
    dsv4::Placement p;
    p.first_layer = st.begin, p.end_layer = st.end;
    const uint64_t b = dsv4::ModelWeights::measure(cfg, kTiny, p);
    EXPECT_NE(log.find(fmt::format("pipeline stage {} of 2 (rank {}, layers {}-{}", k, k, st.begin, st.end - 1)),
              std::string::npos);
    EXPECT_NE(log.find(fmt::format("tensors {} B,", b)), std::string::npos) << b << "\n" << log;
    sum += b;
    // And its KV: only its layers' regions of a block and a slot (score runs exact numerics: f32 KV).
    const auto kv = dsv4::KvLayout::make(cfg, 256, dsv4::KvDtype::F32, false, {}, st.begin, st.end);
    EXPECT_NE(log.find(fmt::format("({} B/block, {} B/slot)", kv.block_bytes(), kv.slot_bytes())), std::string::npos)
        << log;
    kv_block += kv.block_bytes(), kv_slot += kv.slot_bytes();
  }
  // Every stage also has the two RoPE frequency tables (f64, rope_dim / 2 each), computed, not loaded.
  EXPECT_EQ(sum, dsv4::ModelWeights::measure(cfg, kTiny, {}) + uint64_t(cfg.rope_dim / 2) * 8 * 2);
  const auto whole = dsv4::KvLayout::make(cfg, 256, dsv4::KvDtype::F32, false);
  EXPECT_EQ(kv_block, whole.block_bytes());
  EXPECT_EQ(kv_slot, whole.slot_bytes());
  // An explicit, uneven split gives the same logits.
  EXPECT_EQ(rel(one, score(kTiny, ids, "--chunk 64 --pipeline-parallel-size 2 --pipeline-layers 0-0,1-4")), 0.0);
}

TEST(PipelineParallel, Pp2ByTp2OnFourProcessesEqualsTp2AndOneRank) {
  require_fixture();
  const std::string ids = write_ids(200, 2048, 6);
  const auto one = score(kTiny, ids, "--chunk 50");
  const auto tp2 = score(kTiny, ids, "--chunk 50 --tensor-parallel-size 2");
  std::string log;
  const auto both = score(kTiny, ids, "--chunk 50 --tensor-parallel-size 2 --pipeline-parallel-size 2", &log);
  ASSERT_FALSE(both.empty());
  EXPECT_EQ(rel(tp2, both), 0.0);  // each stage's group sums its partials exactly as TP=2 alone
  EXPECT_LT(rel(one, both), 1e-5);  // TP's reordered sums: float rounding
  EXPECT_EQ(count(log, "pipeline stage 0 of 2"), 2u) << log;  // tp ranks 0 and 1 of each stage
  EXPECT_EQ(count(log, "pipeline stage 1 of 2"), 2u) << log;
}

TEST(PipelineParallel, BadLayoutsAreRefusedWithTheReason) {
  require_fixture();
  const std::string ids = write_ids(10, 2048, 7);
  auto refused = [&](const std::string& flags, const std::string& why) {
    const fs::path log = temp_dir() / "refused.log";
    const std::string cmd = kBin + " score --device cpu --model " + kTiny + " --ids " + ids + " --out " +
                            (temp_dir() / "refused.bin").string() + " --master-port " + std::to_string(free_port()) +
                            " " + flags + " > " + log.string() + " 2>&1";
    EXPECT_NE(std::system(cmd.c_str()), 0) << flags;
    std::ifstream f(log);
    const std::string text(std::istreambuf_iterator<char>(f), {});
    EXPECT_NE(text.find(why), std::string::npos) << flags << "\n" << text;
  };
  refused("--pipeline-parallel-size 2 --pipeline-layers 0-1,3-4", "stage 1 starts at layer 3, expected 2");
  refused("--pipeline-parallel-size 2 --pipeline-layers 0-1,2-3", "ends at layer 3, the model has layers 0-4");
  refused("--pipeline-parallel-size 2 --pipeline-layers 0-4", "names 1 stages, --pipeline-parallel-size is 2");
  refused("--pipeline-parallel-size 2 --pipeline-layers 0-x,2-4", "'x' is not a layer number");
  refused("--pipeline-parallel-size 6", "exceeds the model's 5 layers");
  refused("--pipeline-layers 0-4", "need --pipeline-parallel-size > 1");
}

namespace {

// Rank 0 of a PP=pp group in this process (the other stage: a `dsv4 rank-worker` child) steps three sequences
// of different lengths through a prefill and greedy decode steps. Returns every step's logits, in order.
std::vector<float> run_sequences(int pp, int micro) {
  pid_t worker = -1;
  const int port = free_port();
  if (pp > 1) {
    std::vector<std::string> args = {kBin, "rank-worker", "--model", kTiny, "--device", "cpu", "--rank", "1",
                                     "--tensor-parallel-size", "1", "--pipeline-parallel-size", std::to_string(pp),
                                     "--master-port", std::to_string(port)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    EXPECT_EQ(posix_spawn(&worker, kBin.c_str(), nullptr, nullptr, argv.data(), environ), 0);
  }
  std::vector<float> all;
  {
    dsv4::RunnerOptions ro;
    ro.model_dir = kTiny;
    ro.device = "cpu";
    ro.numerics = dsv4::Numerics::Exact;
    ro.kv_dtype = dsv4::KvDtype::F32;
    ro.n_slots = 3;
    ro.max_model_len = 512;
    ro.limits = {256, 3, 3, 512};
    if (pp > 1) {
      ro.dist.world_size = pp;
      ro.dist.master_port = port;
      ro.pipeline = {pp, "", micro};
    }
    dsv4::ModelRunner runner(ro);
    const int V = runner.config().vocab_size;
    std::vector<dsv4::StepItem> seqs(3);
    std::mt19937 g(9);
    for (int i = 0; i < 3; ++i) {
      seqs[size_t(i)].slot = i;
      seqs[size_t(i)].blocks = {2 * i, 2 * i + 1};
      for (int t = 0; t < 20 + 37 * i; ++t) seqs[size_t(i)].tokens.push_back(int32_t(g() % unsigned(V)));
    }
    for (int step = 0; step < 4; ++step) {
      dsv4::StepPlan plan;
      plan.step = uint64_t(step);
      plan.batch.items = seqs;
      const dsv4::StepResult r = runner.execute(plan);
      EXPECT_EQ(r.rows, 3);
      all.insert(all.end(), r.logits.begin(), r.logits.end());
      for (int i = 0; i < 3 && r.rows == 3; ++i) {  // greedy: the next step feeds each sequence its argmax
        auto& s = seqs[size_t(i)];
        const float* row = r.logits.data() + size_t(i) * size_t(V);
        s.start += int64_t(s.tokens.size());
        s.tokens = {int32_t(std::max_element(row, row + V) - row)};
      }
    }
  }  // rank 0 tells the worker to stop
  if (worker > 0) {
    int status = 0;
    EXPECT_EQ(waitpid(worker, &status, 0), worker);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker status " << status;
  }
  return all;
}

}  // namespace

TEST(PipelineParallel, MicroBatchesInFlightEqualOneStageExactly) {
  require_fixture();
  const auto one = run_sequences(1, 0);
  ASSERT_EQ(one.size(), size_t(4 * 3 * 2048));
  for (int micro : {1, 2, 3}) EXPECT_EQ(rel(one, run_sequences(2, micro)), 0.0) << micro << " micro-batches";
}

TEST(PipelineParallel, EvenSplitBalancesLayerBytes) {
  // tiny-a's layers differ (ratio 4 and 128 layers carry compressors, the first two are hash-routed): the split
  // minimises the largest stage, the last one counting the head's bytes too.
  const auto cfg = dsv4::ModelConfig::load(kTiny + "/config.json");
  const auto bytes = dsv4::layer_weight_bytes(cfg);
  const uint64_t head = dsv4::head_weight_bytes(cfg);
  EXPECT_EQ(head, (uint64_t(cfg.vocab_size) + 1) * cfg.dim * 2 +
                      (uint64_t(cfg.hc_mult) * cfg.hc_mult * cfg.dim + cfg.hc_mult + 1) * 4)
      << "head and norm (bf16), hc_head (f32)";
  ASSERT_EQ(bytes.size(), size_t(cfg.n_layers));
  for (int P = 1; P <= cfg.n_layers; ++P) {
    const auto st = dsv4::pipeline_stages(cfg, P, "");
    ASSERT_EQ(st.size(), size_t(P));
    EXPECT_EQ(st.front().begin, 0);
    EXPECT_EQ(st.back().end, cfg.n_layers);
    uint64_t worst = 0;
    for (size_t k = 0; k < st.size(); ++k) {
      EXPECT_LT(st[k].begin, st[k].end);
      if (k) {
        EXPECT_EQ(st[k].begin, st[k - 1].end);
      }
      uint64_t b = 0;
      for (int l = st[k].begin; l < st[k].end; ++l) b += bytes[size_t(l)];
      worst = std::max(worst, b + (k + 1 == st.size() ? head : 0));
    }
    // No contiguous split does better: brute force over every cut set (5 layers: at most 16).
    uint64_t best = UINT64_MAX;
    for (unsigned m = 0; m < (1u << (cfg.n_layers - 1)); ++m) {
      if (__builtin_popcount(m) != P - 1) continue;
      uint64_t cur = 0, w = 0;
      for (int l = 0; l < cfg.n_layers; ++l) {
        cur += bytes[size_t(l)];
        if (l == cfg.n_layers - 1) cur += head;
        if (l == cfg.n_layers - 1 || (m >> l) & 1u) w = std::max(w, cur), cur = 0;
      }
      best = std::min(best, w);
    }
    EXPECT_EQ(worst, best) << P << " stages";
  }
}
