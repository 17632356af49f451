// CPU forward benchmark: prefill and decode tokens/s on a checkpoint (tiny-a by default), with the compute
// floor measured in the same run (FLOPs per token / measured fp32 FMA throughput of this machine).
// Per decode step it also prints the backend calls per layer and the device->host reads inside the layers
// (the host-free graph: equal calls per layer at every batch size, no reads until the logits).
// usage: cpu_forward_bench [MODEL_DIR] [--numerics exact|reference]
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <vector>

#include "core/parallel.h"
#include "model/safetensors.h"
#include "runtime/session.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

// Peak fp32 FMA throughput of this machine: 8 independent 8-wide accumulators per thread (register-resident,
// so this is the compute roof, not a memory figure).
typedef float v8 __attribute__((vector_size(32)));
static double measure_peak_gflops() {
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const int64_t iters = 20000000;
    std::vector<float> sink(size_t(num_threads()) * 16, 0.f);
    auto t0 = clk::now();
    int nt = num_threads();
#pragma omp parallel num_threads(nt)
    {
      v8 a[8], m = {1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f},
               c = {1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f};
      for (int i = 0; i < 8; ++i) a[i] = c * float(i + omp_get_thread_num());
      for (int64_t it = 0; it < iters / nt; ++it)
        for (int i = 0; i < 8; ++i) a[i] = a[i] * m + c;
      float s = 0;
      for (int i = 0; i < 8; ++i)
        for (int j = 0; j < 8; ++j) s += a[i][j];
      sink[size_t(omp_get_thread_num()) * 16] = s;
    }
    double t = secs(t0);
    best = std::max(best, 2.0 * 64 * double(iters) / t / 1e9);
  }
  return best;
}

static int usage(const char* why) {
  if (why) fmt::print(stderr, "cpu_forward_bench: {}\n", why);
  fmt::print(why ? stderr : stdout,
             "usage: cpu_forward_bench [MODEL_DIR] [--numerics exact|reference]\n"
             "  Prefill (512 tokens) and decode (batch 1, 4, 16) tokens/s on the CPU backend, with the compute\n"
             "  floor measured in the same run. MODEL_DIR defaults to ../shared/fixtures/tiny-a.\n");
  return why ? 2 : 0;
}

int main(int argc, char** argv) {
  std::string dir = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a", num = "exact";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return usage(nullptr);
    if (!std::strcmp(argv[i], "--numerics")) {
      if (i + 1 >= argc) return usage("--numerics needs a value");
      num = argv[++i];
      if (num != "exact" && num != "reference") return usage("--numerics must be exact or reference");
    } else if (argv[i][0] == '-') {
      return usage(fmt::format("unknown option {}", argv[i]).c_str());
    } else {
      dir = argv[i];
    }
  }
  try {
  SessionOptions so;
  so.model_dir = dir;
  so.device = "cpu";
  so.numerics = parse_numerics(num);
  so.n_sequences = 16;
  so.max_tokens = 1024;
  so.max_step_tokens = 512;
  Session model(so);
  const auto& c = model.config();
  // FLOPs per token: 2 x activated weights (dense + k routed experts + shared) + head; attention extra ignored.
  Checkpoint ck(dir);
  double dense = 0, expert = 0;
  for (auto& [name, t] : ck.all()) {
    if (name.find(".scale") != std::string::npos || t->dtype == DType::I64) continue;
    double n = double(t->numel()) * ((t->dtype == DType::I8) ? 2 : 1);
    if (name.find(".experts.") != std::string::npos) expert += n;
    else if (name != "embed.weight") dense += n;
  }
  double active = dense + expert * c.n_experts_per_tok / c.n_routed_experts;
  double flops_tok = 2 * active;
  double gflops = measure_peak_gflops();
  fmt::print("model {} ({} layers, dim {}), numerics {}, threads {}\n", dir, c.n_layers, c.dim, num, num_threads());
  fmt::print("activated params/token {:.3f} M -> {:.2f} MFLOP/token; measured peak fp32 FMA {:.1f} GFLOP/s\n",
             active / 1e6, flops_tok / 1e6, gflops);
  fmt::print("floor: {:.0f} tok/s (compute-bound; weights fit in cache)\n", gflops * 1e9 / flops_tok);

  std::vector<int32_t> prompt(512);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 7919 + 13) % size_t(c.vocab_size));
  // prefill
  double best_pf = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const int seq = model.new_sequence();
    std::vector<float> lg;
    Session::Chunk it{seq, prompt, LogitRows::Last};
    auto t0 = clk::now();
    model.forward(std::span<const Session::Chunk>(&it, 1), lg);
    best_pf = std::max(best_pf, double(prompt.size()) / secs(t0));
    model.release(seq);
  }
  fmt::print("prefill 512 tokens: {:.0f} tok/s ({:.1f}% of floor)\n", best_pf, 100 * best_pf * flops_tok / (gflops * 1e9));
  // decode, batch 1 and 16
  for (int batch : {1, 4, 16}) {
    std::vector<int> seqs;
    std::vector<std::vector<int32_t>> toks(static_cast<size_t>(batch));
    std::vector<Session::Chunk> items;
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(model.new_sequence());
      std::vector<float> lg;
      Session::Chunk it{seqs.back(), std::span<const int32_t>(prompt).subspan(0, 128), LogitRows::Last};
      model.forward(std::span<const Session::Chunk>(&it, 1), lg);
      toks[size_t(b)] = {int32_t(b + 1)};
    }
    const int steps = 64;
    ForwardStats fs;
    const uint64_t dl0 = model.runner().backend().counters().downloads;
    auto t0 = clk::now();
    for (int s = 0; s < steps; ++s) {
      items.clear();
      for (int b = 0; b < batch; ++b) items.push_back({seqs[size_t(b)], toks[size_t(b)], LogitRows::Last});
      std::vector<float> lg;
      model.forward(items, lg, &fs);
    }
    const double el = secs(t0);
    const double dl_per_step = double(model.runner().backend().counters().downloads - dl0) / steps;
    double tps = double(steps * batch) / el;
    fmt::print("decode batch {:2d}: {:.0f} tok/s ({:.2f} ms/step, {:.1f}% of floor); per step: {} backend calls, "
               "{}..{} per layer, {} reads inside layers, {:.0f} reads in all (the logits)\n",
               batch, tps, 1000.0 * el / steps, 100 * tps * flops_tok / (gflops * 1e9), fs.ops_total,
               fs.ops_per_layer_min, fs.ops_per_layer_max, fs.downloads_in_layers, dl_per_step);
    for (int q : seqs) model.release(q);
  }
  } catch (const std::exception& e) {
    fmt::print(stderr, "cpu_forward_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
