// CPU cost of a speculative verify step with N drafts against a plain decode step, and of the MTP drafter's
// passes, at one sequence after a 128-token prompt (the model runner alone: no sampling).
// usage: spec_bench MODEL_DIR (a checkpoint with an MTP layer, e.g. `dsv4 make-tiny --out DIR`)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "runtime/model_runner.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

static int run(int argc, char** argv) {
  if (argc != 2 || argv[1][0] == '-') {
    fmt::print(stderr, "usage: spec_bench MODEL_DIR\n  Median times of a plain decode step, a verify step with N = "
                       "1..4 drafts and the MTP drafter's passes (CPU, one sequence at position 128).\n");
    return 2;
  }
  RunnerOptions o;
  o.model_dir = argv[1];
  o.device = "cpu";
  o.numerics = Numerics::Reference;
  o.kv_dtype = KvDtype::BF16;
  o.block_tokens = 256;
  o.n_slots = 1;
  o.kv_cache_memory = 64ull << 20;
  o.max_model_len = 1024;
  o.limits.max_rows = 256;
  o.limits.max_items = 1;
  o.limits.max_logit_rows = 5;
  o.mtp_draft_tokens = 4;
  ModelRunner r(o);
  const int P = 128;
  std::vector<int32_t> prompt(P);
  for (int i = 0; i < P; ++i) prompt[size_t(i)] = 1000 + 37 * i;
  auto plan = [&](int64_t start, std::vector<int32_t> toks, LogitRows lr, bool mtp) {
    StepPlan p;
    StepItem it;
    it.slot = 0;
    it.start = start;
    it.blocks = {0, 1, 2, 3};
    it.logits = lr;
    if (mtp)
      for (size_t t = 0; t < toks.size(); ++t) it.hidden.push_back(int32_t(t));
    it.tokens = std::move(toks);
    p.batch.items.push_back(std::move(it));
    p.batch.mtp = mtp;
    p.batch.keep_hidden = !mtp;
    return p;
  };
  r.execute(plan(0, prompt, LogitRows::Last, false));  // a real state to decode from
  auto median_ms = [&](const StepPlan& p) {
    std::vector<double> t;
    for (int i = 0; i < 7; ++i) {
      auto t0 = clk::now();
      r.execute(p);
      t.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };
  const double plain = median_ms(plan(P, {5}, LogitRows::Last, false));
  fmt::print("plain decode step (1 token, 1 logit row): {:.2f} ms\n", plain);
  const double mtp1 = median_ms(plan(P - 1, {5}, LogitRows::Last, true));
  fmt::print("MTP pass (1 row, 1 logit row):            {:.2f} ms\n", mtp1);
  for (int n = 1; n <= 4; ++n) {
    std::vector<int32_t> toks(size_t(n) + 1, 5);
    const double v = median_ms(plan(P, toks, LogitRows::All, false));
    // A whole speculative step: the verify, then the drafter once over the accepted rows and n - 1 times more.
    fmt::print("verify, N = {} ({} tokens, {} logit rows): {:.2f} ms = {:.2f}x plain; + {} MTP passes ~ {:.2f}x plain\n",
               n, n + 1, n + 1, v, v / plain, n, (v + n * mtp1) / plain);
  }
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "spec_bench: {}\n", e.what());
    return 1;
  }
}
