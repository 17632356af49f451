// Decode pace while a long prompt prefills (issue 17): one short request decodes while a prompt of L tokens
// prefills in chunks; prints the short request's inter-token latency (p50, p99, max) and the long prompt's time to
// first token, with --max-inter-token-latency-ms off and at a bound.
// usage: itl_bench [MODEL_DIR [PROMPT_TOKENS [BOUND_MS [DEVICE]]]]   (defaults: tiny-a, 65536, 50, cpu)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "runtime/engine.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

namespace {

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

void scenario(const std::string& model, int64_t L, double bound_ms, const std::string& device) {
  EngineConfig c;
  c.device = device;
  c.model_dir = model;
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 2048;
  c.max_model_len = 2 * L + 64;
  c.kv_cache_memory = 0;
  c.enable_prefix_caching = false;
  c.max_inter_token_latency_ms = bound_ms;
  Engine e(c);
  const int V = e.model_config().vocab_size;
  SamplingParams p;
  p.temperature = 0;
  p.ignore_eos = true;
  p.max_tokens = int(L);  // decodes until the long prompt's first token (one token per step)
  const uint64_t dec = e.add_request(std::vector<int32_t>(16, 7), p);
  while (true) {  // until it decodes
    bool tok = false;
    for (auto& o : e.step()) tok |= o.id == dec && !o.new_tokens.empty();
    if (tok) break;
  }
  std::vector<int32_t> prompt(static_cast<size_t>(L));
  for (int64_t i = 0; i < L; ++i) prompt[size_t(i)] = int32_t(2 + (i * 7919) % (V - 2));
  p.max_tokens = 1;
  const auto t0 = clk::now();
  const uint64_t big = e.add_request(prompt, p);
  std::vector<double> itl;
  auto last = clk::now();
  bool done = false;
  int steps = 0;
  while (!done) {
    for (auto& o : e.step()) {
      if (o.id == dec && !o.new_tokens.empty()) {
        const auto now = clk::now();
        itl.push_back(std::chrono::duration<double, std::milli>(now - last).count());
        last = now;
      }
      done |= o.id == big && o.finished();
    }
    ++steps;
  }
  const double ttft = std::chrono::duration<double>(clk::now() - t0).count();
  e.abort(dec);
  fmt::print("  bound {:>6}: ITL p50 {:8.1f} ms  p99 {:8.1f} ms  max {:8.1f} ms over {} tokens; "
             "long prompt TTFT {:7.1f} s in {} steps ({:.0f} tok/s)\n",
             bound_ms > 0 ? fmt::format("{} ms", bound_ms) : std::string("off"), pct(itl, 0.5), pct(itl, 0.99),
             pct(itl, 1.0), itl.size(), ttft, steps, double(L) / ttft);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h"))) {
    fmt::print("usage: itl_bench [MODEL_DIR [PROMPT_TOKENS [BOUND_MS [cpu|cuda]]]]\n");
    return 0;
  }
  const std::string model = argc > 1 ? argv[1] : std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";
  const int64_t L = argc > 2 ? std::stoll(argv[2]) : 65536;
  const double bound = argc > 3 ? std::stod(argv[3]) : 50;
  const std::string device = argc > 4 ? argv[4] : "cpu";
  fmt::print("itl_bench: {} , prompt {} tokens, one concurrent decode, {} backend\n", model, L, device);
  try {
    scenario(model, L, bound, device);  // the bound first: the run that must stay under it
    scenario(model, L, 0, device);
  } catch (const std::exception& e) {
    fmt::print(stderr, "itl_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
