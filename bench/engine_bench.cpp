// Serving-engine throughput on CPU: N concurrent greedy requests (prompt 128, 64 new tokens each) through
// continuous batching. usage: engine_bench [MODEL_DIR]
#include <fmt/format.h>

#include <chrono>
#include <cstring>

#include "runtime/engine.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

static int run(int argc, char** argv) {
  const char* use = "usage: engine_bench [MODEL_DIR]\n  Generated tokens/s of 1, 4 and 16 concurrent greedy requests "
                    "(prompt 128, 64 new tokens) through the serving engine on the CPU backend.\n";
  if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
    const bool help = argc == 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"));
    fmt::print(help ? stdout : stderr, "{}{}", help ? "" : "engine_bench: bad arguments\n", use);
    return help ? 0 : 2;
  }
  EngineConfig c;
  c.device = "cpu";
  c.model_dir = argc > 1 ? argv[1] : std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.max_num_seqs = 64;
  c.max_num_batched_tokens = 2048;
  c.kv_cache_memory = 512ull << 20;
  c.enable_prefix_caching = false;  // as in the recorded runs (docs/perf-notes.md), before the default was on
  Engine e(c);
  const int V = e.model_config().vocab_size;
  for (int conc : {1, 4, 16}) {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = 64;
    p.ignore_eos = true;
    auto t0 = clk::now();
    double ttft_sum = 0;
    int first_seen = 0;
    std::vector<bool> seen(size_t(conc) + 1000, false);
    std::vector<uint64_t> ids;
    for (int i = 0; i < conc; ++i) {
      std::vector<int32_t> prompt(128);
      for (size_t k = 0; k < prompt.size(); ++k) prompt[k] = int32_t((k * 31 + size_t(i) * 7 + 2) % size_t(V));
      ids.push_back(e.add_request(prompt, p));
    }
    int64_t gen = 0;
    while (e.has_work()) {
      for (auto& o : e.step()) {
        gen += int64_t(o.new_tokens.size());
        size_t k = size_t(o.id - ids[0]);
        if (!o.new_tokens.empty() && k < seen.size() && !seen[k]) {
          seen[k] = true;
          ++first_seen;
          ttft_sum += std::chrono::duration<double>(clk::now() - t0).count();
        }
      }
    }
    double s = std::chrono::duration<double>(clk::now() - t0).count();
    fmt::print("concurrency {:2d}: {} tokens in {:.2f} s = {:.0f} generated tok/s; mean TTFT {:.1f} ms\n", conc, gen,
               s, double(gen) / s, 1000 * ttft_sum / std::max(1, first_seen));
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "engine_bench: {}\n", e.what());
    return 1;
  }
}
