// Time to first token of a conversation's next turn: cold (a fresh engine computes the whole prompt) against
// from disk (a restarted engine on the same --kv-offload-dir restores the earlier turn's blocks), in one run,
// plus a bit-for-bit comparison of the two runs' first-token logits.
// usage: kv_offload_bench MODEL_DIR [TOKENS=32768] [DIR=/tmp/dsv4-kv-offload-bench] [KV_DTYPE=fp8]
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "runtime/engine.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

namespace {

struct Run {
  double ttft = 0;
  std::vector<float> logits;
  std::vector<int32_t> tokens;
  int64_t cached = 0;
};

Run turn(Engine& e, const std::vector<int32_t>& prompt, int n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = n;
  p.ignore_eos = true;
  Run r;
  const auto t0 = clk::now();
  e.add_request(prompt, p);
  while (e.has_work()) {
    StepPlan plan = e.schedule();
    StepResult res = e.execute(plan);
    if (r.logits.empty() && res.rows > 0) r.logits = res.logits;
    for (auto& o : e.complete(res)) {
      if (r.tokens.empty() && !o.new_tokens.empty()) r.ttft = std::chrono::duration<double>(clk::now() - t0).count();
      r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      r.cached = o.cached_tokens;
    }
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    fmt::print(stderr, "usage: kv_offload_bench MODEL_DIR [TOKENS=32768] [DIR=/tmp/dsv4-kv-offload-bench] [KV_DTYPE=fp8]\n");
    return 2;
  }
  const int64_t N = argc > 2 ? std::atoll(argv[2]) : 32768;
  const std::string dir = argc > 3 ? argv[3] : "/tmp/dsv4-kv-offload-bench";
  std::filesystem::remove_all(dir);
  EngineConfig c;
  c.device = "cpu";
  c.model_dir = argv[1];
  c.kv_cache_dtype = argc > 4 ? argv[4] : "fp8";
  c.max_num_seqs = 2;
  c.max_num_batched_tokens = 2048;
  c.max_model_len = N + 1024;
  c.kv_offload_size = 16ull << 30;
  try {
    std::vector<int32_t> conv;
    {
      Engine probe(c);
      const int V = probe.model_config().vocab_size;
      conv.resize(size_t(N));
      uint32_t s = 12345;
      for (auto& t : conv) s = s * 1664525u + 1013904223u, t = int32_t((s >> 8) % uint32_t(V - 2)) + 2;
    }
    std::vector<int32_t> next = conv;  // turn 1 (N tokens) + its reply, then the next user message
    EngineConfig with_disk = c;
    with_disk.kv_offload_dir = dir;
    {
      Engine e(with_disk);
      Run t1 = turn(e, conv, 16);
      next.insert(next.end(), t1.tokens.begin(), t1.tokens.end());
      fmt::print("turn 1: {} tokens, TTFT {:.2f} s (writes blocks to {})\n", N, t1.ttft, dir);
    }  // the engine is gone: the restart below reads what it wrote
    for (int i = 0; i < 64; ++i) next.push_back(int32_t(100 + i));
    Run cold, warm;
    {
      Engine e(c);  // no disk tier, nothing cached: the cold next turn
      cold = turn(e, next, 1);
    }
    {
      Engine e(with_disk);
      warm = turn(e, next, 1);
      auto st = e.stats();
      uint64_t body = 0, tail = 0, nb = 0, nt = 0;
      for (auto& f : std::filesystem::directory_iterator(dir))
        (f.path().extension() == ".kvb" ? (body += f.file_size(), ++nb) : (tail += f.file_size(), ++nt));
      const double bt = e.runner().kv_layout().block_tokens();
      fmt::print("from disk: restored {} tokens, {:.1f} MiB read in {:.3f} s (reader thread)\n", st.prefix_disk_hits,
                 double(st.disk.bytes_read) / (1 << 20), st.disk.restore_seconds);
      fmt::print("on disk: {} block files, {:.0f} B per token; {} resume snapshots of {:.0f} B; in memory {} B per "
                 "block ({:.0f} per token, snapshot included)\n",
                 nb, double(body) / double(nb) / bt, nt, double(tail) / double(std::max<uint64_t>(nt, 1)),
                 st.bytes_per_block, double(st.bytes_per_block) / bt);
    }
    fmt::print("next turn ({} tokens): TTFT cold {:.3f} s, from disk {:.3f} s (cached_tokens {}), ratio {:.1f}x; "
               "first-token logits {}\n",
               next.size(), cold.ttft, warm.ttft, warm.cached, cold.ttft / warm.ttft,
               cold.logits == warm.logits ? "identical" : "DIFFERENT");
    return cold.logits == warm.logits ? 0 : 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "kv_offload_bench: {}\n", e.what());
    return 1;
  }
}
