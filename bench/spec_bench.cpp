// CPU cost of a speculative verify step with N drafts against a plain decode step, and of the drafter's passes
// (MTP, or DSpark's block and Markov passes), at one sequence after a 128-token prompt (the model runner alone:
// no sampling); then, for DSpark, acceptance of greedy requests through the engine.
// usage: spec_bench MODEL_DIR (a checkpoint with an MTP layer, e.g. `dsv4 make-tiny --out DIR`, or with a DSpark
// drafter, `dsv4 make-tiny --dspark --out DIR`)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "runtime/engine.h"
#include "runtime/model_runner.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

// Greedy requests through the engine with DSpark on: drafts proposed and accepted (vLLM's spec_decode counters).
static int acceptance(const std::string& dir) {
  EngineConfig c;
  c.model_dir = dir;
  c.numerics = Numerics::Reference;
  c.kv_cache_memory = 256ull << 20;
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 256;
  c.speculative_config = R"({"method": "dspark"})";
  Engine e(c);
  for (int q = 0; q < 4; ++q) {
    std::vector<int32_t> p(size_t(40 + 20 * q));
    for (size_t i = 0; i < p.size(); ++i) p[i] = int32_t(1000 + (37 * i + 101 * size_t(q)) % 50000);
    SamplingParams sp;
    sp.temperature = 0;
    sp.max_tokens = 32;
    sp.ignore_eos = true;
    e.add_request(p, sp);
  }
  const auto t0 = clk::now();
  int64_t toks = 0;
  while (e.has_work())
    for (auto& out : e.step()) toks += int64_t(out.new_tokens.size());
  const double s = std::chrono::duration<double>(clk::now() - t0).count();
  const EngineStats st = e.stats();
  fmt::print("engine, 4 greedy requests x 32 tokens: {} verify steps, {} drafts, {} accepted ({:.1f}%), {:.2f} "
             "tokens per verify; {} tokens in {:.2f} s\n", st.spec_num_drafts, st.spec_num_draft_tokens,
             st.spec_num_accepted_tokens,
             100.0 * double(st.spec_num_accepted_tokens) / double(std::max<uint64_t>(st.spec_num_draft_tokens, 1)),
             double(st.spec_num_accepted_tokens + st.spec_num_drafts) / double(std::max<uint64_t>(st.spec_num_drafts, 1)),
             toks, s);
  std::string per;
  for (size_t k = 0; k < st.spec_accepted_per_pos.size(); ++k) per += fmt::format(" {}", st.spec_accepted_per_pos[k]);
  fmt::print("accepted by draft position:{}\n", per);
  return 0;
}

static int run(int argc, char** argv) {
  if (argc != 2 || argv[1][0] == '-') {
    fmt::print(stderr, "usage: spec_bench MODEL_DIR\n  Median times of a plain decode step, a verify step with N = "
                       "1..4 drafts (DSpark: its block size) and the drafter's passes (CPU, one sequence at position "
                       "128); DSpark: acceptance of greedy requests.\n");
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
  const ModelConfig mc = ModelConfig::load(o.model_dir + "/config.json");
  const bool dspark = mc.n_dspark_stages > 0;
  const int B = mc.dspark_block_size;
  o.drafter = dspark ? Drafter::DSpark : Drafter::Mtp;
  o.draft_tokens = dspark ? B : 4;
  o.limits.max_logit_rows = o.draft_tokens + 1;
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
    p.batch.keep_hidden = !mtp && !dspark;  // the MTP drafter reads the rows' streams
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
  if (dspark) {
    StepPlan blk = plan(P, std::vector<int32_t>(size_t(B), mc.dspark_noise_token_id), LogitRows::All, false);
    blk.batch.dspark = DSparkPass::Block;
    StepPlan mk = plan(P, {5}, LogitRows::Last, false);
    mk.batch.dspark = DSparkPass::Markov;
    const double tb = median_ms(blk), tm = median_ms(mk);
    std::vector<int32_t> toks(size_t(B) + 1, 5);
    StepPlan ver = plan(P, toks, LogitRows::All, false);
    const double v = median_ms(ver);
    fmt::print("DSpark block pass ({} stages, {} rows, {} logit rows): {:.2f} ms\n", mc.n_dspark_stages, B, B, tb);
    fmt::print("DSpark Markov pass (1 row):                {:.2f} ms\n", tm);
    fmt::print("verify, N = {} ({} tokens, {} logit rows): {:.2f} ms = {:.2f}x plain; + block + {} Markov passes ~ "
               "{:.2f}x plain\n", B, B + 1, B + 1, v, v / plain, B, (v + tb + B * tm) / plain);
    return acceptance(o.model_dir);
  }
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
