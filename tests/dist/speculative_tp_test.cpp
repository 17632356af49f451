// Speculative decoding with tensor parallelism, with real processes: this process is rank 0 (an Engine with
// --speculative-config, which plans the drafter passes, the verify steps and the rollback copies) and the other
// rank a `dsv4 rank-worker` child that runs every plan it is sent. Greedy output at TP=2 with drafts must equal
// one rank's output without them, for a batch of three sequences (one prefilled in two chunks) whose random
// drafters' drafts are rejected (measured: 0 of 99 MTP and 0 of 225 DSpark drafts accepted), so every verify
// step is rolled back on both ranks; sampled at temperature 1 (seeded) some drafts are accepted and the rest rolled
// back, and TP=2 must give one rank's speculative tokens. Checked to fail when the worker skips the plans' copies.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "model/tiny_checkpoint.h"
#include "runtime/engine.h"
#include "../runtime/engine_test_util.h"
#include "score_run.h"

using namespace score_run;

namespace {

// tiny-a's config with one MTP layer, or with a 3-stage DSpark drafter instead; random weights.
std::string made_model(const std::string& name) {
  if (!fs::exists(kTiny + "/config.json")) return {};
  const fs::path d = temp_dir() / name;
  if (fs::exists(d / "config.json")) return d.string();
  std::ifstream f(kTiny + "/config.json");
  nlohmann::json cfg = nlohmann::json::parse(f);
  if (name == "mtp") {
    cfg["num_nextn_predict_layers"] = 1;
    dsv4::make_random_checkpoint(d.string(), cfg, 7);
  } else {
    dsv4::make_random_checkpoint(d.string(), dsv4::with_dspark_drafter(cfg), 11);
  }
  return d.string();
}

struct Cleanup {
  ~Cleanup() {
    std::error_code ec;
    // temp_dir()'s path, not the function: its static may be gone by now
    const fs::path d = fs::temp_directory_path() / ("dsv4-dist-" + std::to_string(::getpid()));
    for (const char* m : {"mtp", "dspark"}) fs::remove_all(d / m, ec);
  }
} cleanup;

struct RunResult {
  std::vector<std::vector<int32_t>> out;
  dsv4::EngineStats st;
};

// Three greedy requests of different lengths, stepped together, on `tp` ranks (rank 1: a child process), or on
// two pipeline stages of one rank each when `pp` is 2. `error`: rank 0's error, expected when given.
RunResult run(const std::string& model, int tp, const std::string& spec, int pp = 1, std::string* error = nullptr,
        std::string* worker_log = nullptr, float temperature = 0) {
  pid_t worker = -1;
  const int port = free_port();
  const std::string log = (temp_dir() / fmt::format("worker-{}.log", port)).string();
  if (tp * pp > 1) {
    std::vector<std::string> args = {kBin, "rank-worker", "--model", model, "--device", "cpu", "--rank", "1",
                                     "--tensor-parallel-size", std::to_string(tp), "--pipeline-parallel-size",
                                     std::to_string(pp), "--master-port", std::to_string(port)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    // One OpenMP thread per rank (docs/parallel.md): two ranks spinning on every core are many times slower.
    std::vector<std::string> env = {"OMP_NUM_THREADS=1"};
    for (char** e = environ; *e; ++e)
      if (std::string(*e).rfind("OMP_NUM_THREADS=", 0) != 0) env.push_back(*e);
    std::vector<char*> envp;
    for (auto& v : env) envp.push_back(v.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    EXPECT_EQ(posix_spawn(&worker, kBin.c_str(), &fa, nullptr, argv.data(), envp.data()), 0);
    posix_spawn_file_actions_destroy(&fa);
  }
  RunResult r;
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);  // this rank too (and the one-rank run: the CI machine is shared)
#endif
  try {
    dsv4::EngineConfig c;
    c.model_dir = model;
    c.device = "cpu";
    c.numerics = dsv4::Numerics::Exact;
    c.kv_cache_dtype = "auto";
    c.kv_cache_memory = 64ull << 20;
    c.block_size = 128;
    c.max_num_seqs = 4;
    c.max_num_batched_tokens = 96;  // the 140-token prompt prefills in two chunks
    c.speculative_config = spec;
    if (tp * pp > 1) c.dist.world_size = tp * pp, c.dist.master_port = port;
    c.pipeline.size = pp;
    c.enable_prefix_caching = pp == 1;  // pipelines refuse it first
    dsv4::Engine e(c);
    std::vector<uint64_t> ids;
    const int lens[] = {5, 140, 33};
    for (int i = 0; i < 3; ++i) {
      dsv4::SamplingParams p;
      p.temperature = temperature;
      if (temperature > 0) p.seed = uint64_t(100 + i);
      p.max_tokens = 16 + 3 * i;
      p.ignore_eos = true;
      ids.push_back(e.add_request(dsv4::test::prompt_of(lens[i], i), p));
    }
    std::map<uint64_t, std::vector<int32_t>> got;
    for (int n = 0; e.has_work() && n < 10000; ++n)
      for (auto& o : e.step()) got[o.id].insert(got[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
    for (uint64_t id : ids) r.out.push_back(got[id]);
    r.st = e.stats();
  } catch (const std::exception& ex) {
    if (error) *error = ex.what();
    else ADD_FAILURE() << "rank 0 (tp " << tp << ", " << spec << "): " << ex.what();
    if (!error && worker > 0) kill(worker, SIGTERM);  // it may still wait for rank 0 at the rendezvous
  }  // the engine's runner tells the worker to stop
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  if (worker > 0) {
    int status = 0;
    EXPECT_EQ(waitpid(worker, &status, 0), worker);
    std::ifstream lf(log);
    const std::string text(std::istreambuf_iterator<char>(lf), {});
    if (worker_log) *worker_log = text;
    else EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker status " << status << ":\n" << text;
  }
  return r;
}

void expect_same_greedy_with_rollback(const std::string& model, const std::string& spec, uint64_t drafts_per_step) {
  ASSERT_FALSE(model.empty()) << "fixture " << kTiny << " missing";
  const RunResult want = run(model, 1, "");
  ASSERT_EQ(want.out.size(), 3u);
  for (size_t i = 0; i < 3; ++i) ASSERT_EQ(want.out[i].size(), 16 + 3 * i);
  const RunResult got = run(model, 2, spec);
  EXPECT_EQ(got.out, want.out) << spec;
  // Drafts were made and verified, and some were rejected: the rollback copies ran on both ranks.
  EXPECT_GT(got.st.spec_num_drafts, 0u);
  EXPECT_GE(got.st.spec_num_draft_tokens, got.st.spec_num_drafts * drafts_per_step / 2);
  EXPECT_LT(got.st.spec_num_accepted_tokens, got.st.spec_num_draft_tokens) << "no draft was rejected";
  std::printf("%s at TP=2: %llu verify steps, %llu drafts, %llu accepted\n", spec.c_str(),
              (unsigned long long)got.st.spec_num_drafts, (unsigned long long)got.st.spec_num_draft_tokens,
              (unsigned long long)got.st.spec_num_accepted_tokens);
}

}  // namespace

TEST(SpeculativeTensorParallel, MtpGreedyAtTp2EqualsOneRankWithoutDrafts) {
  expect_same_greedy_with_rollback(made_model("mtp"), R"({"method": "mtp", "num_speculative_tokens": 2})", 2);
}

TEST(SpeculativeTensorParallel, DSparkGreedyAtTp2EqualsOneRankWithoutDrafts) {
  expect_same_greedy_with_rollback(made_model("dspark"), R"({"method": "dspark"})", 5);
}

// Sampled (temperature 1, seeded): the random model's flat distributions accept many drafts, so verify steps
// also keep some drafts and roll back only the rest. TP=2 must give one rank's speculative tokens (the same
// seeds on logits equal to float rounding).
TEST(SpeculativeTensorParallel, MtpSampledAtTp2EqualsOneRankWithPartlyAcceptedDrafts) {
  const std::string model = made_model("mtp");
  ASSERT_FALSE(model.empty()) << "fixture " << kTiny << " missing";
  const std::string spec = R"({"method": "mtp", "num_speculative_tokens": 2})";
  const RunResult want = run(model, 1, spec, 1, nullptr, nullptr, 1.0f);
  const RunResult got = run(model, 2, spec, 1, nullptr, nullptr, 1.0f);
  ASSERT_EQ(want.out.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(want.out[i].size(), 16 + 3 * i);
  EXPECT_EQ(got.out, want.out);
  EXPECT_EQ(got.st.spec_num_accepted_tokens, want.st.spec_num_accepted_tokens);
  EXPECT_GT(got.st.spec_num_accepted_tokens, 0u) << "no draft was accepted";
  EXPECT_LT(got.st.spec_num_accepted_tokens, got.st.spec_num_draft_tokens) << "no draft was rejected";
  std::printf("sampled MTP at TP=2: %llu verify steps, %llu drafts, %llu accepted\n",
              (unsigned long long)got.st.spec_num_drafts, (unsigned long long)got.st.spec_num_draft_tokens,
              (unsigned long long)got.st.spec_num_accepted_tokens);
}

// Pipelines cannot draft yet: both ranks refuse at start (the worker has rank 0's drafter from the rendezvous).
TEST(SpeculativeTensorParallel, PipelineParallelismIsRefusedOnEveryRankWithTheReason) {
  const std::string model = made_model("mtp");
  ASSERT_FALSE(model.empty()) << "fixture " << kTiny << " missing";
  std::string error, worker_log;
  run(model, 1, R"({"method": "mtp", "num_speculative_tokens": 2})", 2, &error, &worker_log);
  const std::string why = "speculative decoding with pipeline parallelism is not supported yet";
  EXPECT_NE(error.find(why), std::string::npos) << error;
  EXPECT_NE(worker_log.find(why), std::string::npos) << worker_log;
}
