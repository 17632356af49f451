// Pipeline-parallel decode throughput on CPU with a made model: this process is rank 0 (stage 0) and starts the
// other stages as `dsv4 rank-worker` processes. B sequences decode greedily in one batch; each step's sequences
// run as 1 or more micro-batches. With one micro-batch only one stage works at a time (the bubble); with m, stage
// k works on micro-batch j while stage k + 1 works on j - 1. Each count is compared with one process running the
// step as the same m forward passes, so the split's own cost (smaller batches read the weights more often) is
// apart from the bubble. docs/perf-notes.md has the numbers.
// usage: pp_bench [--stages P] [--seqs B] [--steps N] [--layers L] [--threads T] [--prompt N] [--micro 1,2,4]
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

#include "model/tiny_checkpoint.h"
#include "runtime/model_runner.h"

extern char** environ;

using namespace dsv4;
using clk = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

struct Args {
  int stages = 2, seqs = 8, steps = 24, layers = 8, threads = 1, prompt = 64;
  std::vector<int> micro = {1, 2, 4};
};

int free_port() {
  static int next = 29700 + int(getpid() % 200) * 2;
  return next++;
}

// Decode tokens/s of one run. stages == 1: a single process running each step as `micro` forward passes one
// after the other (what splitting costs without a pipeline).
double run(const Args& a, const std::string& model, const std::string& dsv4_bin, int micro) {
  const int port = free_port();
  std::vector<pid_t> workers;
  for (int r = 1; r < a.stages; ++r) {
    std::vector<std::string> args = {dsv4_bin, "rank-worker", "--model", model, "--device", "cpu", "--rank",
                                     std::to_string(r), "--tensor-parallel-size", "1", "--pipeline-parallel-size",
                                     std::to_string(a.stages), "--master-port", std::to_string(port)};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    if (posix_spawn(&pid, dsv4_bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0)
      fail("cannot start {}", dsv4_bin);
    workers.push_back(pid);
  }
  double tok_s = 0;
  {
    RunnerOptions ro;
    ro.model_dir = model;
    ro.device = "cpu";
    ro.numerics = Numerics::Exact;
    ro.kv_dtype = KvDtype::F32;
    ro.n_slots = a.seqs;
    ro.max_model_len = 512;
    ro.limits = {int64_t(a.seqs) * a.prompt, a.seqs, a.seqs, 512};
    if (a.stages > 1) {
      ro.dist.world_size = a.stages;
      ro.dist.master_port = port;
      ro.pipeline = {a.stages, "", micro};
    }
    ModelRunner runner(ro);
    const int V = runner.config().vocab_size;
    std::vector<StepItem> seqs(size_t(a.seqs));
    std::mt19937 g(1);
    for (int i = 0; i < a.seqs; ++i) {
      auto& s = seqs[size_t(i)];
      s.slot = i;
      s.blocks = {2 * i, 2 * i + 1};
      for (int t = 0; t < a.prompt; ++t) s.tokens.push_back(int32_t(g() % unsigned(V)));
    }
    const int warm = 3;
    clk::time_point t0;
    for (int step = 0; step < 1 + warm + a.steps; ++step) {
      if (step == 1 + warm) t0 = clk::now();
      StepPlan plan;
      plan.step = uint64_t(step);
      plan.batch.items = seqs;
      StepResult r;
      if (a.stages > 1 || micro <= 1) {
        r = runner.execute(plan);
      } else {
        for (const StepBatch& b : split_micro_batches(plan.batch, micro)) {
          StepPlan part;
          part.step = plan.step;
          part.batch = b;
          const StepResult pr = runner.execute(part);
          r.logits.insert(r.logits.end(), pr.logits.begin(), pr.logits.end());
        }
      }
      for (int i = 0; i < a.seqs; ++i) {
        auto& s = seqs[size_t(i)];
        const float* row = r.logits.data() + size_t(i) * size_t(V);
        s.start += int64_t(s.tokens.size());
        s.tokens = {int32_t(std::max_element(row, row + V) - row)};
      }
    }
    tok_s = double(a.seqs) * a.steps / std::chrono::duration<double>(clk::now() - t0).count();
  }
  for (pid_t p : workers) {
    int st = 0;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st)) fail("a stage process failed (status {})", st);
  }
  return tok_s;
}

int main_(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) fail("{} needs a value", k);
      return argv[++i];
    };
    if (k == "--stages") a.stages = std::stoi(val());
    else if (k == "--seqs") a.seqs = std::stoi(val());
    else if (k == "--steps") a.steps = std::stoi(val());
    else if (k == "--layers") a.layers = std::stoi(val());
    else if (k == "--threads") a.threads = std::stoi(val());
    else if (k == "--prompt") a.prompt = std::stoi(val());
    else if (k == "--micro") {
      a.micro.clear();
      const std::string v = val();
      for (size_t at = 0; at < v.size();) {
        const size_t c = std::min(v.find(',', at), v.size());
        a.micro.push_back(std::stoi(v.substr(at, c - at)));
        at = c + 1;
      }
    } else {
      fmt::print(k == "--help" ? stdout : stderr,
                 "usage: pp_bench [--stages P] [--seqs B] [--steps N] [--layers L] [--threads T] [--prompt N]\n"
                 "                [--micro 1,2,4]\n"
                 "  decode tokens/s of B greedy sequences over P pipeline stages (processes, T threads each) of a\n"
                 "  made L-layer model, per micro-batch count, and of one process for reference\n");
      return k == "--help" ? 0 : 2;
    }
  }
  if (a.stages < 2 || a.seqs < 1 || a.steps < 1 || a.layers < a.stages || a.threads < 1 || a.prompt < 1 ||
      a.prompt + a.steps + 4 > 512)
    fail("bad arguments (see --help; prompt + steps must fit 512 positions)");
  // Every process computes on T threads: the workers through the environment they inherit, this one (whose
  // OpenMP read the environment before main) by omp_set_num_threads. More threads than cores spin in OpenMP's
  // barriers while a rank's core is taken.
  setenv("OMP_NUM_THREADS", std::to_string(a.threads).c_str(), 1);
  omp_set_num_threads(a.threads);
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) fail("cannot find this executable");
  const std::string dsv4_bin = (self.parent_path() / "dsv4").string();
  if (!fs::exists(dsv4_bin)) fail("{} not found (pp_bench runs from the build directory beside dsv4)", dsv4_bin);
  nlohmann::json c = tiny_demo_config_json();
  c["num_hidden_layers"] = a.layers;
  c["compress_ratios"] = nlohmann::json::array();
  for (int l = 0; l <= a.layers; ++l) c["compress_ratios"].push_back(l % 2 ? 4 : 0);  // and the MTP layer's
  c["num_nextn_predict_layers"] = 1;
  // Layer-heavy, so the layers (not the head) dominate a step and the stages balance: a small vocabulary,
  // wide experts.
  c["vocab_size"] = 512;
  c["moe_intermediate_size"] = 512;
  const fs::path dir = fs::temp_directory_path() / fmt::format("dsv4-pp-bench-{}", getpid());
  make_random_checkpoint(dir.string(), c, 3);
  fmt::print("pp_bench: {} layers (dim {}, experts {} x {} wide, vocab {}), {} sequences (prompt {}), {} timed decode "
             "steps, {} thread(s) per process\n",
             a.layers, c.value("hidden_size", 0), c.value("n_routed_experts", 0), c.value("moe_intermediate_size", 0),
             c.value("vocab_size", 0), a.seqs, a.prompt, a.steps, a.threads);
  // Per micro-batch count m: S = one process running each step as m forward passes; P x S is what P stages
  // would give if every stage were busy all the time (no bubble, free transfers); the schedule alone allows
  // P x S x m / (m + P - 1). Busy = measured / (P x S): the stages' mean utilisation.
  fmt::print("  {:>5} {:>14} {:>16} {:>14} {:>16} {:>6}\n", "micro", "1 process", "P x 1 process", "schedule",
             fmt::format("{} stages", a.stages), "busy");
  for (int m : a.micro) {
    Args one = a;
    one.stages = 1;
    const double S = run(one, dir.string(), dsv4_bin, m), t = run(a, dir.string(), dsv4_bin, m);
    const double ideal = a.stages * S, sched = ideal * m / (m + a.stages - 1);
    fmt::print("  {:>5} {:>10.1f} t/s {:>12.1f} t/s {:>10.1f} t/s {:>12.1f} t/s {:>5.0f}%\n", m, S, ideal, sched, t,
               100 * t / ideal);
  }
  fs::remove_all(dir, ec);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "pp_bench: {}\n", e.what());
    return 1;
  }
}
