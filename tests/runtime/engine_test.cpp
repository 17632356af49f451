// The serving engine on tiny-a (exact numerics): batching, prefix caching, preemption, memory bounds,
// fairness, cancellation and the fp8 KV cache.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "core/error.h"
#include "../model/session_util.h"
#include "runtime/engine.h"
#include "engine_test_util.h"
#include "runtime/latency_budget.h"

using namespace dsv4;
using dsv4::test::greedy;
using dsv4::test::prompt_of;

namespace {

const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

EngineConfig config(uint64_t memory = 256ull << 20) {
  EngineConfig c;
  c.model_dir = kTiny;
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.kv_cache_memory = memory;
  c.enable_prefix_caching = false;  // the default is on; these block counts assume no cached blocks
  c.max_num_seqs = 16;
  c.max_num_batched_tokens = 256;
  return c;
}

// Runs to completion; returns tokens per request id and, if given, checks memory after every step.
std::map<uint64_t, std::vector<int32_t>> drain(Engine& e, std::map<uint64_t, RequestOutput>* last = nullptr,
                                               uint64_t* max_bytes = nullptr, int* steps = nullptr) {
  std::map<uint64_t, std::vector<int32_t>> got;
  int n = 0;
  while (e.has_work()) {
    for (auto& o : e.step()) {
      auto& v = got[o.id];
      v.insert(v.end(), o.new_tokens.begin(), o.new_tokens.end());
      if (last) (*last)[o.id] = o;
    }
    auto st = e.stats();
    if (max_bytes) *max_bytes = std::max(*max_bytes, st.kv_bytes_used);
    EXPECT_LE(st.kv_bytes_used, st.kv_bytes_total);
    ++n;
    if (n > 100000) {
      ADD_FAILURE() << "engine did not finish";
      break;
    }
  }
  if (steps) *steps = n;
  return got;
}

std::vector<int32_t> alone(int len, int seed, int n) {
  Engine e(config());
  e.add_request(prompt_of(len, seed), greedy(n));
  auto got = drain(e);
  return got.begin()->second;
}

bool have_fixture() { return std::filesystem::exists(kTiny + "/model.safetensors"); }

}  // namespace

TEST(Engine, ConcurrentRequestsMatchRunningAlone) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  const int lens[] = {5, 300, 77, 130, 1, 600, 33, 257};
  Engine e(config());
  std::vector<uint64_t> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(e.add_request(prompt_of(lens[i], i), greedy(12)));
  auto got = drain(e);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[ids[size_t(i)]], alone(lens[i], i, 12)) << "request " << i;
}

TEST(Engine, PrefixCacheHitGivesSameTokens) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  // Shared prefixes ending mid ratio-4 window (301 = 4*75 + 1) and mid ratio-128 window (301 = 2*128 + 45),
  // one shorter than a block (no hit), and an exact repeat.
  auto base = prompt_of(700, 42);
  auto c = config();
  c.enable_prefix_caching = true;
  c.max_num_seqs = 1;  // one at a time, so later requests see earlier ones' blocks
  Engine e(c);
  std::vector<std::vector<int32_t>> prompts;
  prompts.push_back(base);
  for (int shared : {301, 200, 515}) {
    auto p = std::vector<int32_t>(base.begin(), base.begin() + shared);
    auto tail = prompt_of(90, shared);
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p);
  }
  prompts.push_back(base);
  std::vector<uint64_t> ids;
  for (auto& p : prompts) ids.push_back(e.add_request(p, greedy(10)));
  std::map<uint64_t, RequestOutput> last;
  auto got = drain(e, &last);
  EXPECT_EQ(last[ids[1]].cached_tokens, 256);
  EXPECT_EQ(last[ids[2]].cached_tokens, 0);
  EXPECT_EQ(last[ids[3]].cached_tokens, 512);
  EXPECT_EQ(last[ids[4]].cached_tokens, 512);
  EXPECT_GT(e.stats().prefix_hits, 0u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    Engine ref(config());
    ref.add_request(prompts[i], greedy(10));
    EXPECT_EQ(got[ids[i]], drain(ref).begin()->second) << "prompt " << i;
  }
}

TEST(Engine, PreemptionUnderTinyBudgetCompletesIdentically) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  // Room for about four sequences' fixed state and a handful of blocks: preemption must happen.
  Engine probe(config());
  auto c = config();
  c.max_num_seqs = 4;
  c.max_model_len = 1024;
  // Four sequences' fixed state and six blocks (each request needs two): preemption must happen.
  const auto ps = probe.stats();
  c.kv_cache_memory = 4 * ps.bytes_per_sequence + 6 * ps.bytes_per_block;
  Engine e(c);
  std::vector<uint64_t> ids;
  const int lens[] = {400, 350, 500, 300, 450, 380};
  for (int i = 0; i < 6; ++i) ids.push_back(e.add_request(prompt_of(lens[i], 100 + i), greedy(40)));
  uint64_t peak = 0;
  auto got = drain(e, nullptr, &peak);
  EXPECT_GT(e.stats().preemptions, 0u);
  EXPECT_LE(peak, c.kv_cache_memory);
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(got[ids[size_t(i)]].size(), 40u);
    EXPECT_EQ(got[ids[size_t(i)]], alone(lens[i], 100 + i, 40)) << "request " << i;
  }
}

TEST(Engine, DecodeIsNotStarvedByLongPrefill) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  auto c = config();
  c.max_num_batched_tokens = 64;
  Engine e(c);
  uint64_t dec = e.add_request(prompt_of(10, 1), greedy(30));
  // get the short one decoding first
  for (int i = 0; i < 2; ++i) e.step();
  uint64_t big = e.add_request(prompt_of(1500, 2), greedy(2));
  int steps_with_big_prefilling = 0;
  for (int s = 0; s < 20 && e.has_work(); ++s) {
    auto outs = e.step();
    bool dec_tok = false, big_tok = false;
    for (auto& o : outs) {
      if (o.id == dec && !o.new_tokens.empty()) dec_tok = true;
      if (o.id == big && !o.new_tokens.empty()) big_tok = true;
    }
    if (!big_tok) {
      ++steps_with_big_prefilling;
      EXPECT_TRUE(dec_tok) << "step " << s << ": the decoding request produced no token";
    }
  }
  EXPECT_GE(steps_with_big_prefilling, 15);
}

TEST(Engine, LatencyBoundCapsPrefillChunksOnlyWhileRequestsDecode) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  // A bound far below any step's time: with a decode in the step, a prefill advances the minimum chunk per step
  // (and the decode gets its token every step); alone, the prefill takes the whole token budget.
  auto c = config();
  c.max_num_batched_tokens = 256;
  c.max_inter_token_latency_ms = 1e-6;
  Engine e(c);
  const uint64_t dec = e.add_request(prompt_of(10, 1), greedy(80));
  for (int i = 0; i < 2; ++i) e.step();
  const uint64_t big = e.add_request(prompt_of(600, 2), greedy(1));
  int steps_until_big = 0;
  bool big_done = false;
  while (!big_done && steps_until_big < 100) {
    bool dec_tok = false;
    for (auto& o : e.step()) {
      dec_tok |= o.id == dec && !o.new_tokens.empty();
      big_done |= o.id == big && o.finished();
    }
    ++steps_until_big;
    if (!big_done) {
      EXPECT_TRUE(dec_tok) << "step " << steps_until_big;
    }
  }
  // 600 prompt tokens at 16 per step (PrefillLatencyBudget::kMinChunk; the first chunk, unmeasured, is 256).
  EXPECT_GE(steps_until_big, (600 - 256) / int(PrefillLatencyBudget::kMinChunk));
  EXPECT_LT(steps_until_big, 60);
  drain(e);
  // No decode in flight: one long prompt takes full budgets.
  Engine solo(c);
  solo.add_request(prompt_of(600, 2), greedy(1));
  int steps = 0;
  drain(solo, nullptr, nullptr, &steps);
  EXPECT_LE(steps, 3);
}

TEST(PrefillLatencyBudget, FitsBaseAndPerTokenCostAndCapsToTheBound) {
  PrefillLatencyBudget off(0);
  EXPECT_EQ(off.prefill_tokens(2048), 2048);
  PrefillLatencyBudget b(0.050);  // 50 ms
  EXPECT_EQ(b.prefill_tokens(2048), PrefillLatencyBudget::kFirstChunk);  // nothing measured yet
  for (int i = 0; i < 20; ++i) b.observe(0, 0.010);                       // decode-only steps: 10 ms
  for (int i = 0; i < 20; ++i) b.observe(400, 0.010 + 400 * 1e-4);       // 0.1 ms per prefill token
  EXPECT_NEAR(b.base_seconds(), 0.010, 1e-9);
  EXPECT_NEAR(b.per_token_seconds(), 1e-4, 1e-9);
  EXPECT_EQ(b.prefill_tokens(2048), 400);  // (50 - 10) ms / 0.1 ms
  EXPECT_EQ(b.prefill_tokens(100), 100);   // never above the token budget
  EXPECT_NEAR(b.headroom(), 1.0, 1e-9);  // exact predictions: no headroom
  // The context grows, each token costs more: the cap follows, with headroom while the fit was off...
  for (int i = 0; i < 40; ++i) b.observe(200, 0.010 + 200 * 4e-4);
  EXPECT_GT(b.headroom(), 1.05);
  EXPECT_LT(b.prefill_tokens(2048), 100);
  EXPECT_GE(b.prefill_tokens(2048), PrefillLatencyBudget::kMinChunk);
  // ... which fades once the predictions hold again.
  for (int i = 0; i < 300; ++i) b.observe(100, 0.010 + 100 * 4e-4);
  EXPECT_NEAR(double(b.prefill_tokens(2048)), 100.0, 1.0);
  // Decodes alone exceed the bound: the prefill still advances by the minimum chunk.
  for (int i = 0; i < 40; ++i) b.observe(0, 0.080);
  EXPECT_EQ(b.prefill_tokens(2048), PrefillLatencyBudget::kMinChunk);
}

// A noisy machine: step times scatter +-20% around the fit; the plan leaves room for the spread, so a step planned
// at the cap stays under the bound even when it runs 20% long.
TEST(PrefillLatencyBudget, NoisyStepsPlanBelowTheBound) {
  PrefillLatencyBudget b(0.050);
  for (int i = 0; i < 20; ++i) b.observe(0, 0.010);
  for (int i = 0; i < 20; ++i) b.observe(400, 0.010 + 400 * 1e-4);
  for (int i = 0; i < 200; ++i) {
    const int64_t n = b.prefill_tokens(2048);
    b.observe(n, (0.010 + double(n) * 1e-4) * (i % 2 ? 1.2 : 0.8));
  }
  const int64_t n = b.prefill_tokens(2048);
  EXPECT_GT(b.headroom(), 1.2);
  EXPECT_LE((b.base_seconds() + double(n) * b.per_token_seconds()) * 1.2, 0.050);
  EXPECT_GT(n, PrefillLatencyBudget::kMinChunk);
}

TEST(Engine, AbortFreesBlocksAtOnce) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  Engine e(config());
  uint64_t id = e.add_request(prompt_of(600, 3), greedy(100));
  for (int i = 0; i < 4; ++i) e.step();
  EXPECT_GT(e.stats().kv_blocks_used, 0);
  e.abort(id);
  EXPECT_EQ(e.stats().kv_blocks_used, 0);
  auto outs = e.step();
  ASSERT_EQ(outs.size(), 1u);
  EXPECT_EQ(outs[0].finish, FinishReason::Abort);
  EXPECT_FALSE(e.has_work());
}

TEST(Engine, RejectsTooLongPromptsBeforeAnyWork) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  auto c = config();
  c.max_model_len = 512;
  Engine e(c);
  try {
    e.add_request(prompt_of(600, 1), greedy(4));
    FAIL() << "accepted a 600-token prompt with max_model_len 512";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("maximum context length is 512"), std::string::npos) << err.what();
  }
  EXPECT_THROW(e.add_request(prompt_of(500, 1), greedy(20)), Error);
  EXPECT_THROW(e.add_request({}, greedy(4)), Error);
  EXPECT_THROW(e.add_request({5000}, greedy(4)), Error);
  EXPECT_FALSE(e.has_work());
}

TEST(Engine, Fp8KvCacheStaysWithinReferenceTolerance) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  auto ids = prompt_of(400, 9);
  auto run = [&](KvDtype dt) {
    Session s(test::session_options(kTiny, Numerics::Reference, 1, 400, kv_dtype_name(dt)));
    return test::run_chunked(s, ids, 50);
  };
  auto bf = run(KvDtype::BF16), f8 = run(KvDtype::FP8);
  double num = 0, den = 0;
  for (size_t i = 0; i < bf.size(); ++i) {
    num += double(f8[i] - bf[i]) * (f8[i] - bf[i]);
    den += double(bf[i]) * bf[i];
  }
  // Under reference numerics the nope dims are already FP8-rounded with the same block rule, so fp8 storage
  // only adds the indexer-key rounding; the bound is the reference-vs-exact tolerance.
  EXPECT_LT(std::sqrt(num / den), 0.35);
  const ModelConfig c = ModelConfig::load(kTiny + "/config.json");
  KvLayout b16 = KvLayout::make(c, 256, KvDtype::BF16, false), f8l = KvLayout::make(c, 256, KvDtype::FP8, false);
  EXPECT_LT(f8l.block_bytes(), b16.block_bytes());
}
