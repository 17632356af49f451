// Speculative decoding with the MTP drafter (issue 16) on a tiny random model with an MTP layer (tiny-a's shape,
// vocabulary 2048, window 16): greedy output equals the non-speculative output, sampled output follows the
// target's distribution, and rejected drafts leave no trace in the KV arena.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "model/tiny_checkpoint.h"
#include "runtime/engine.h"
#include "engine_test_util.h"
#include "runtime/speculative.h"

using namespace dsv4;
using dsv4::test::greedy;
using dsv4::test::prompt_of;
namespace fs = std::filesystem;

namespace {

const std::string kTinyA = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

// tiny-a's config with one MTP layer, random weights (made once per test binary).
const std::string& mtp_model() {
  static const std::string dir = [] {
    const fs::path d = fs::temp_directory_path() / ("dsv4-spec-test-" + std::to_string(::getpid()));
    std::ifstream f(kTinyA + "/config.json");
    nlohmann::json cfg = nlohmann::json::parse(f);
    cfg["num_nextn_predict_layers"] = 1;
    make_random_checkpoint(d.string(), cfg, 7);
    return d.string();
  }();
  return dir;
}

// The same config as a 0731-style checkpoint with a 3-stage DSpark drafter instead of the MTP layer (block 5,
// noise token 2047, target layers 2, 3, 4), random weights.
const std::string& dspark_model() {
  static const std::string dir = [] {
    const fs::path d = fs::temp_directory_path() / ("dsv4-spec-test-" + std::to_string(::getpid())) / "dspark";
    std::ifstream f(kTinyA + "/config.json");
    make_random_checkpoint(d.string(), with_dspark_drafter(nlohmann::json::parse(f)), 11);
    return d.string();
  }();
  return dir;
}

struct Cleanup {
  ~Cleanup() {
    std::error_code ec;
    fs::remove_all(fs::temp_directory_path() / ("dsv4-spec-test-" + std::to_string(::getpid())), ec);
  }
} cleanup;

EngineConfig config(int n_spec, bool prefix = true) {
  EngineConfig c;
  c.model_dir = mtp_model();
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.kv_cache_memory = 64ull << 20;
  c.enable_prefix_caching = prefix;
  c.block_size = 128;
  c.max_num_seqs = 16;
  c.max_num_batched_tokens = 96;  // long prompts prefill in chunks
  if (n_spec) c.speculative_config = fmt::format(R"({{"method": "mtp", "num_speculative_tokens": {}}})", n_spec);
  return c;
}

// DSpark on its checkpoint ('{"method": "dspark"}'), or that checkpoint without speculation.
EngineConfig dspark_config(bool on, bool prefix = true) {
  EngineConfig c = config(0, prefix);
  c.model_dir = dspark_model();
  if (on) c.speculative_config = R"({"method": "dspark"})";
  return c;
}

std::map<uint64_t, std::vector<int32_t>> drain(Engine& e) {
  std::map<uint64_t, std::vector<int32_t>> got;
  for (int n = 0; e.has_work() && n < 100000; ++n)
    for (auto& o : e.step()) got[o.id].insert(got[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
  return got;
}

// A mixed batch of 16: shared prefixes (prefix-cache hits), long prompts (chunked prefill), short ones.
std::vector<std::pair<std::vector<int32_t>, int>> mixed_requests() {
  std::vector<std::pair<std::vector<int32_t>, int>> r;
  const auto base = prompt_of(300, 42);
  const int lens[] = {5, 140, 33, 1, 77, 260};
  for (int i = 0; i < 6; ++i) r.push_back({prompt_of(lens[i], i), 14 + i});
  for (int shared : {130, 260}) {
    auto p = std::vector<int32_t>(base.begin(), base.begin() + shared);
    auto tail = prompt_of(20, shared);
    p.insert(p.end(), tail.begin(), tail.end());
    r.push_back({p, 12});
  }
  r.push_back({base, 10});
  for (int i = 0; i < 7; ++i) r.push_back({prompt_of(3 + i, 100 + i), 6 + i});
  return r;
}

std::vector<std::vector<int32_t>> run_greedy(EngineConfig c, const std::vector<std::pair<std::vector<int32_t>, int>>& reqs,
                                             EngineStats* st = nullptr, bool one_by_one = false) {
  Engine e(c);
  std::vector<std::vector<int32_t>> out;
  std::vector<uint64_t> ids;
  std::map<uint64_t, std::vector<int32_t>> got;
  for (auto& [p, n] : reqs) {
    ids.push_back(e.add_request(p, greedy(n)));
    if (one_by_one) got.merge(drain(e));
  }
  got.merge(drain(e));
  for (uint64_t id : ids) out.push_back(got[id]);
  if (st) *st = e.stats();
  return out;
}

}  // namespace

TEST(SpeculativeConfig, ParsesAndRefuses) {
  auto sc = parse_speculative_config(R"({"method": "mtp", "num_speculative_tokens": 3})");
  EXPECT_EQ(sc.method, "mtp");
  EXPECT_EQ(sc.num_speculative_tokens, 3);
  EXPECT_FALSE(parse_speculative_config("").enabled());
  for (const char* bad : {R"({"method": "mtp", "num_speculative_tokens": 0})",
                          R"({"method": "mtp", "num_speculative_tokens": 5})", R"({"method": "mtp"})",
                          R"({"method": "eagle", "num_speculative_tokens": 2})",
                          R"({"method": "dspark", "num_speculative_tokens": 0})",
                          R"({"method": "mtp", "num_speculative_tokens": 2, "x": 1})", "[1]", "{"})
    EXPECT_THROW(parse_speculative_config(bad), Error) << bad;
  // dspark: the draft count is the checkpoint's block size, filled in against its config.
  EXPECT_TRUE(parse_speculative_config(R"({"method": "dspark"})").dspark());
  EXPECT_EQ(parse_speculative_config(R"({"method": "dspark"})").num_speculative_tokens, 0);
  EXPECT_EQ(parse_speculative_config(R"({"method": "dspark", "num_speculative_tokens": 7})").num_speculative_tokens, 7);
}

TEST(SpeculativeConfig, CheckpointWithoutMtpIsRefused) {
  EngineConfig c = config(2);
  c.model_dir = kTinyA;  // num_nextn_predict_layers 0, no mtp.* tensors
  try {
    Engine e(c);
    FAIL() << "an engine without MTP weights started";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no MTP layer"), std::string::npos) << e.what();
  }
}

TEST(SpeculativeGreedy, MatchesNonSpeculativeAloneAndInABatch) {
  const auto reqs = mixed_requests();
  const auto want = run_greedy(config(0), reqs, nullptr, true);
  for (int n : {1, 2, 3}) {
    EngineStats st;
    EXPECT_EQ(run_greedy(config(n), reqs, &st, true), want) << "alone, N = " << n;
    EXPECT_GT(st.spec_num_drafts, 0u);
    EXPECT_GT(st.prefix_hits, 0u) << "prefix caching must still hit with speculation on";
    EXPECT_EQ(run_greedy(config(n), reqs, &st), want) << "batched, N = " << n;
    EXPECT_GT(st.spec_num_draft_tokens, st.spec_num_drafts - 1);
  }
}

// DSpark (its own drafts: a random drafter, so mostly rejected): greedy output is the plain output, alone and in
// the mixed batch (prefix-cache hits counted, chunked prefill), and with a preemption.
TEST(SpeculativeGreedy, DSparkMatchesNonSpeculative) {
  const auto reqs = mixed_requests();
  const auto want = run_greedy(dspark_config(false), reqs, nullptr, true);
  EngineStats st;
  EXPECT_EQ(run_greedy(dspark_config(true), reqs, &st, true), want) << "alone";
  EXPECT_GT(st.spec_num_drafts, 0u);
  EXPECT_GT(st.prefix_hits, 0u) << "prefix caching must still hit with speculation on";
  EXPECT_EQ(st.spec_accepted_per_pos.size(), 5u);  // the block size
  EXPECT_EQ(run_greedy(dspark_config(true), reqs, &st), want) << "batched";
  EXPECT_GT(st.spec_num_draft_tokens, 4 * st.spec_num_drafts) << "whole blocks of 5 drafts, but near max_tokens";
  EngineConfig c = dspark_config(true);
  c.max_num_seqs = 8;
  {
    Engine probe(c);
    const auto ps = probe.stats();
    c.kv_cache_memory = 8 * ps.bytes_per_sequence + 7 * ps.bytes_per_block;
  }
  c.max_model_len = 512;
  EXPECT_EQ(run_greedy(c, reqs, &st), want) << "with preemption";
  EXPECT_GT(st.preemptions, 0u);
}

TEST(SpeculativeConfig, DSparkRefusals) {
  auto error_of = [](EngineConfig c) {
    try {
      Engine e(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EngineConfig c = dspark_config(true);
  c.speculative_config = R"({"method": "dspark", "num_speculative_tokens": 7})";
  EXPECT_NE(error_of(c).find("num_speculative_tokens 7 is not the checkpoint's block size 5"), std::string::npos)
      << error_of(c);
  c.speculative_config = R"({"method": "dspark", "num_speculative_tokens": 5})";
  EXPECT_EQ(error_of(c), "");  // the block size itself is fine
  c.speculative_config = R"({"method": "mtp", "num_speculative_tokens": 2})";
  EXPECT_NE(error_of(c).find("ships a DSpark drafter"), std::string::npos) << error_of(c);
  c = dspark_config(true);
  c.model_dir = mtp_model();
  EXPECT_NE(error_of(c).find("no DSpark drafter"), std::string::npos) << error_of(c);
  // A config that says DSpark over a checkpoint without the drafter's tensors: the weight loader names it.
  const fs::path d = fs::path(dspark_model()).parent_path() / "dspark-no-weights";
  fs::create_directories(d);
  fs::copy_file(dspark_model() + "/config.json", d / "config.json", fs::copy_options::overwrite_existing);
  fs::create_symlink(fs::absolute(mtp_model()) / "model.safetensors", d / "model.safetensors");
  c.model_dir = d.string();
  EXPECT_NE(error_of(c).find("no DSpark weights (no tensor 'mtp.0.main_proj.weight')"), std::string::npos)
      << error_of(c);
}

TEST(SpeculativeGreedy, MatchesUnderPreemption) {
  const auto reqs = mixed_requests();
  const auto want = run_greedy(config(0), reqs, nullptr, true);
  EngineConfig c = config(3);
  c.max_num_seqs = 8;
  {
    Engine probe(c);
    const auto ps = probe.stats();
    c.kv_cache_memory = 8 * ps.bytes_per_sequence + 7 * ps.bytes_per_block;  // a few sequences' blocks at a time
  }
  c.max_model_len = 512;
  EngineStats st;
  EXPECT_EQ(run_greedy(c, reqs, &st), want);
  EXPECT_GT(st.preemptions, 0u);
  EXPECT_GT(st.spec_num_drafts, 0u);
}

namespace {

// Drafters that always propose the target's own choice (every draft accepted, plus the bonus token) and that
// always propose a wrong token (every draft rejected): outputs and the whole KV arena (but the save areas)
// match, byte for byte, a run that never drafted, at every point where both have computed the same positions.
// `spec`: an engine config with speculation on (its drafter's own drafts are replaced by the test's).
void check_rollback(const EngineConfig& spec) {
  const int gen = 40;
  const auto prompt = prompt_of(110, 5);  // the output crosses a ratio-128 window and a 128-token block end
  auto run = [&](const char* mode, const std::vector<int32_t>& oracle,
                 std::map<int64_t, std::vector<uint8_t>>* arenas) {
    EngineConfig c = spec;
    c.kv_cache_memory = 8ull << 20;
    c.draft_hook = [&](uint64_t, const std::vector<int32_t>& toks, std::vector<Draft>& drafts) {
      if (std::string(mode) == "none") return drafts.clear();
      for (size_t k = 0; k < drafts.size(); ++k) {
        const size_t at = toks.size() - prompt.size() + k;  // index into the output of the draft's token
        const int32_t right = at < oracle.size() ? oracle[at] : 2;
        drafts[k].token = std::string(mode) == "right" ? right : (right + 1) % 2048;
        drafts[k].q = {{drafts[k].token, 1.0f}};
      }
    };
    Engine e(c);
    KvStorage& kv = e.runner().kv_storage();
    e.runner().backend().fill(kv.arena(), 0);
    const KvLayout& L = kv.layout();
    e.add_request(prompt, greedy(gen));
    std::vector<int32_t> out;
    while (e.has_work()) {
      for (auto& o : e.step()) out.insert(out.end(), o.new_tokens.begin(), o.new_tokens.end());
      std::vector<uint8_t> a(kv.bytes());
      e.runner().backend().download(a.data(), kv.arena(), a.size());
      for (int64_t s = 0; s < L.shape.n_slots; ++s)
        std::memset(a.data() + L.shape.slot_offset(s) + L.save_off, 0, size_t(L.save_bytes));
      (*arenas)[int64_t(out.size())] = std::move(a);
    }
    return std::make_pair(out, e.stats());
  };
  std::map<int64_t, std::vector<uint8_t>> plain, right, wrong;
  const auto [want, st0] = run("none", {}, &plain);
  ASSERT_EQ(int(want.size()), gen);
  EXPECT_EQ(st0.spec_num_drafts, 0u);
  const auto [got_r, st_r] = run("right", want, &right);
  const auto [got_w, st_w] = run("wrong", want, &wrong);
  EXPECT_EQ(got_r, want);
  EXPECT_EQ(got_w, want);
  EXPECT_EQ(st_r.spec_num_accepted_tokens, st_r.spec_num_draft_tokens);
  EXPECT_GT(st_w.spec_num_draft_tokens, 0u);
  EXPECT_EQ(st_w.spec_num_accepted_tokens, 0u);
  int compared = 0;
  for (auto* runs : {&right, &wrong})
    for (auto& [n, bytes] : *runs) {
      if (n == gen || !plain.count(n)) continue;  // finished: the sequence's slot is free again
      EXPECT_TRUE(bytes == plain[n]) << "KV arena differs after " << n << " tokens ("
                                     << (runs == &right ? "accepting" : "rejecting") << " drafter)";
      ++compared;
    }
  EXPECT_GT(compared, 15);
}

}  // namespace

TEST(SpeculativeRollback, RejectedDraftsLeaveNoTrace) { check_rollback(config(3)); }

// DSpark: the stages' rings are written by the main model's steps, verify positions included; a rejected
// block's positions go back with the model's own state.
TEST(SpeculativeRollback, DSparkRejectedDraftsLeaveNoTrace) { check_rollback(dspark_config(true)); }

namespace {

// Token counts at output positions 0..3 of many seeded requests (temperature 1, top-k 6) on one prompt.
std::vector<std::map<int32_t, int>> sample_counts(EngineConfig c, int n, uint64_t seed0, EngineStats* st) {
  c.max_num_seqs = 64;
  c.max_num_batched_tokens = 512;
  Engine e(c);
  const auto prompt = prompt_of(6, 77);
  for (int i = 0; i < n; ++i) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_k = 6;
    p.max_tokens = 4;
    p.ignore_eos = true;
    p.seed = seed0 + uint64_t(i);
    e.add_request(prompt, p);
  }
  std::vector<std::map<int32_t, int>> counts(4);
  for (auto& [id, toks] : drain(e)) {
    EXPECT_EQ(toks.size(), 4u);
    for (size_t k = 0; k < toks.size() && k < 4; ++k) ++counts[k][toks[k]];
  }
  if (st) *st = e.stats();
  return counts;
}

// Two-sample chi-square (equal sizes), bins with fewer than 10 observations pooled; true when the samples are
// consistent at the 0.999 level.
bool same_distribution(const std::map<int32_t, int>& a, const std::map<int32_t, int>& b, std::string* why) {
  std::map<int32_t, std::pair<int, int>> bins;
  for (auto& [t, n] : a) bins[t].first += n;
  for (auto& [t, n] : b) bins[t].second += n;
  double chi2 = 0;
  int df = -1, pa = 0, pb = 0;
  for (auto& [t, ab] : bins) {
    if (ab.first + ab.second < 10) {
      pa += ab.first, pb += ab.second;
      continue;
    }
    chi2 += double(ab.first - ab.second) * (ab.first - ab.second) / (ab.first + ab.second);
    ++df;
  }
  if (pa + pb > 0) chi2 += double(pa - pb) * (pa - pb) / (pa + pb), ++df;
  if (df < 1) return true;
  const double k = 2.0 / (9.0 * df), crit = df * std::pow(1 - k + 3.09 * std::sqrt(k), 3);  // Wilson-Hilferty
  *why = fmt::format("chi2 {:.1f} with {} degrees of freedom (0.999 quantile {:.1f})", chi2, df, crit);
  return chi2 < crit;
}

}  // namespace

// Sampled drafts, verified by the lossless rule: the output tokens' distribution is the target's. Once with the
// MTP drafter (on a random model: drafts mostly rejected, so the residual resampling carries it) and once with a
// test drafter whose first draft comes from q = p^6 (normalized), p the target's own distribution for that
// context (read from its top logprobs): q has p's support and another shape, so many drafts are accepted, many
// rejected, and a rule that accepted too often would come out sharpened. Its later drafts: the plain run's
// token frequencies at that output position, squared.
TEST(SpeculativeSampling, OutputFollowsTheTargetDistribution) {
  const int S = 1000;
  const auto plain = sample_counts(config(0, false), S, 1, nullptr);
  const size_t prompt_len = 6;
  std::map<int32_t, std::vector<TokenProb>> sharp;  // first output token -> q for the second
  {
    Engine e(config(0, false));
    std::map<uint64_t, int32_t> first;
    for (auto& [t1, n] : plain[0]) {
      auto p = prompt_of(6, 77);
      p.push_back(t1);
      SamplingParams g = greedy(1);
      g.logprobs = 20;
      first[e.add_request(p, g)] = t1;
    }
    while (e.has_work())
      for (auto& o : e.step()) {
        ASSERT_EQ(o.logprobs.size(), 1u);
        auto top = o.logprobs[0].top;  // logprob descending: the top-6 are the target's support
        top.resize(6);
        double z = 0;
        for (auto& t : top) z += std::exp(6.0 * t.logprob);
        for (auto& t : top) sharp[first[o.id]].push_back({t.token, float(std::exp(6.0 * t.logprob) / z)});
      }
  }
  for (int mode = 0; mode < 2; ++mode) {
    EngineConfig c = config(2, false);
    SamplerRng rng(99);
    if (mode == 1)
      c.draft_hook = [&](uint64_t, const std::vector<int32_t>& toks, std::vector<Draft>& drafts) {
        for (size_t k = 0; k < drafts.size(); ++k) {
          Draft& d = drafts[k];
          d.q.clear();
          if (toks.size() - prompt_len + k == 1 && sharp.count(toks[prompt_len])) {
            d.q = sharp[toks[prompt_len]];
            d.token = draw_token(d.q, rng.uniform());
            continue;
          }
          double z = 0;
          for (auto& [t, n] : plain[toks.size() - prompt_len + k]) z += double(n) * n;
          for (auto& [t, n] : plain[toks.size() - prompt_len + k]) d.q.push_back({t, float(double(n) * n / z)});
          d.q.push_back({2, 0.01f});  // and a token the target never samples (top-k 6): always rejected
          d.token = draw_token(d.q, rng.uniform());
        }
      };
    EngineStats st;
    const auto spec = sample_counts(c, S, 100000, &st);
    EXPECT_GT(st.spec_num_draft_tokens, uint64_t(S));  // 2 at the first verify, then 1 (max_tokens)
    EXPECT_LT(st.spec_num_accepted_tokens, st.spec_num_draft_tokens) << "some drafts must be rejected";
    if (mode == 1) {
      EXPECT_GT(st.spec_num_accepted_tokens, st.spec_num_draft_tokens / 5) << "and many accepted";
    }
    for (int k = 0; k < 4; ++k) {
      std::string why;
      EXPECT_TRUE(same_distribution(plain[size_t(k)], spec[size_t(k)], &why))
          << (mode ? "test drafter" : "MTP drafter") << ", output token " << k << ": " << why;
    }
  }
}
