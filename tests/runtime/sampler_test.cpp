#include "runtime/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"

using namespace dsv4;

namespace {

SamplingParams with_seed(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  return p;
}

std::vector<double> softmax(const std::vector<float>& l, double t = 1.0) {
  double mx = *std::max_element(l.begin(), l.end());
  std::vector<double> p(l.size());
  double s = 0;
  for (size_t i = 0; i < l.size(); ++i) s += p[i] = std::exp((l[i] - mx) / t);
  for (double& x : p) x /= s;
  return p;
}

// Logits whose softmax is exactly the given probabilities (up to float rounding).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}

std::map<int32_t, float> as_map(const std::vector<TokenProb>& d) {
  std::map<int32_t, float> m;
  for (auto& tp : d) m[tp.token] = tp.prob;
  return m;
}

std::string error_of(const SamplingParams& p, int64_t vocab = 0) {
  try {
    p.validate(vocab);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- validation

TEST(SamplingParams, DefaultsAndBoundariesAreValid) {
  SamplingParams p;
  EXPECT_EQ(error_of(p), "");
  p.temperature = 0;
  p.top_p = 1;
  p.top_k = 0;
  p.min_p = 1;
  p.frequency_penalty = 2;
  p.presence_penalty = -2;
  p.logprobs = 20;
  p.max_tokens = 1;
  p.stop_token_ids = {0, 99};
  EXPECT_EQ(error_of(p, 100), "");
  p.top_k = -1;
  p.logprobs = 0;
  EXPECT_EQ(error_of(p), "");
}

TEST(SamplingParams, RejectsInvalidValuesWithClearMessages) {
  auto check = [](auto mutate, const std::string& needle, int64_t vocab = 0) {
    SamplingParams p;
    mutate(p);
    std::string e = error_of(p, vocab);
    EXPECT_NE(e.find(needle), std::string::npos) << "got: '" << e << "' wanted: " << needle;
  };
  check([](SamplingParams& p) { p.temperature = -0.5f; }, "temperature");
  check([](SamplingParams& p) { p.temperature = NAN; }, "temperature");
  check([](SamplingParams& p) { p.temperature = INFINITY; }, "temperature");
  check([](SamplingParams& p) { p.top_p = 0; }, "top_p must be in (0, 1]");
  check([](SamplingParams& p) { p.top_p = 1.01f; }, "top_p");
  check([](SamplingParams& p) { p.top_k = -2; }, "top_k");
  check([](SamplingParams& p) { p.min_p = -0.1f; }, "min_p");
  check([](SamplingParams& p) { p.min_p = 1.5f; }, "min_p");
  check([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  check([](SamplingParams& p) { p.repetition_penalty = -1; }, "repetition_penalty");
  check([](SamplingParams& p) { p.frequency_penalty = 2.5f; }, "frequency_penalty");
  check([](SamplingParams& p) { p.presence_penalty = -2.01f; }, "presence_penalty");
  check([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  check([](SamplingParams& p) { p.logprobs = 21; }, "logprobs must be between 0 and 20, got 21");
  check([](SamplingParams& p) { p.logprobs = -2; }, "logprobs");
  check([](SamplingParams& p) { p.stop_token_ids = {-1}; }, "stop_token_ids");
  check([](SamplingParams& p) { p.stop_token_ids = {100}; }, "stop_token_ids: 100", 100);
}

// ---- greedy

TEST(Sampler, GreedyPicksArgmaxAndLowestIdOnTies) {
  for (float t : {0.0f, 1e-6f}) {
    SamplingParams p;
    p.temperature = t;
    p.top_k = 1;  // ignored under greedy
    SamplerState s(p);
    EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 2.9f}).token, 1);
    EXPECT_EQ(s.sample(std::vector<float>{1.0f, 5.0f, 5.0f, 5.0f}).token, 1);
    EXPECT_EQ(s.sample(std::vector<float>{NAN, -INFINITY, 0.0f, NAN}).token, 2);
    auto d = s.distribution(std::vector<float>{7, 7, 1});
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].token, 0);
    EXPECT_EQ(d[0].prob, 1.0f);
  }
}

TEST(Sampler, AllMaskedLogitsThrow) {
  SamplingParams gp;
  gp.temperature = 0;
  SamplerState g(gp);
  EXPECT_THROW(g.sample(std::vector<float>{-INFINITY, NAN}), Error);
  SamplerState r(with_seed(1));
  EXPECT_THROW(r.sample(std::vector<float>{-INFINITY, -INFINITY}), Error);
  EXPECT_THROW(r.sample(std::vector<float>{}), Error);
}

TEST(Sampler, MaskedTokensAreNeverSampled) {
  SamplerState s(with_seed(3));
  std::vector<float> l{0, -INFINITY, 0, NAN, 0};
  for (int i = 0; i < 2000; ++i) {
    int32_t t = s.sample(l).token;
    EXPECT_TRUE(t == 0 || t == 2 || t == 4) << t;
  }
}

// ---- temperature, top_k, top_p, min_p on fixed logits

TEST(Sampler, TemperatureDistributionIsSoftmaxOverT) {
  std::vector<float> l{1.0f, 2.0f, 0.5f, -1.0f, 3.0f};
  for (float t : {0.3f, 1.0f, 2.5f}) {
    SamplingParams p;
    p.temperature = t;
    auto m = as_map(SamplerState(p).distribution(l));
    auto ref = softmax(l, t);
    ASSERT_EQ(m.size(), l.size());
    for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(m[int32_t(i)], ref[i], 1e-6) << t;
  }
}

TEST(Sampler, TopKKeepsTheKHighestRenormalized) {
  std::vector<float> l{1.0f, 4.0f, 2.0f, 3.0f, 0.0f, 3.5f};
  SamplingParams p;
  p.top_k = 3;
  auto m = as_map(SamplerState(p).distribution(l));
  ASSERT_EQ(m.size(), 3u);
  double z = std::exp(4.0) + std::exp(3.5) + std::exp(3.0);
  EXPECT_NEAR(m[1], std::exp(4.0) / z, 1e-6);
  EXPECT_NEAR(m[5], std::exp(3.5) / z, 1e-6);
  EXPECT_NEAR(m[3], std::exp(3.0) / z, 1e-6);
  // Ties at the boundary go to the lowest ids; top_k >= vocab is off.
  p.top_k = 2;
  auto t = as_map(SamplerState(p).distribution(std::vector<float>{1, 2, 2, 2, 0}));
  ASSERT_EQ(t.size(), 2u);
  EXPECT_TRUE(t.count(1) && t.count(2));
  p.top_k = 10;
  EXPECT_EQ(SamplerState(p).distribution(l).size(), l.size());
}

TEST(Sampler, TopPKeepsSmallestSetReachingMass) {
  // Probabilities 0.05 0.5 0.1 0.2 0.15 (shuffled on purpose).
  auto l = logits_of({0.05, 0.5, 0.1, 0.2, 0.15});
  struct Case {
    float top_p;
    std::vector<int32_t> kept;
    double mass;
  };
  for (const Case& c : {Case{0.8f, {1, 3, 4}, 0.85}, Case{0.69f, {1, 3}, 0.7}, Case{0.3f, {1}, 0.5},
                        Case{0.01f, {1}, 0.5}, Case{0.9f, {1, 2, 3, 4}, 0.95},
                        Case{1.0f, {0, 1, 2, 3, 4}, 1.0}}) {
    SamplingParams p;
    p.top_p = c.top_p;
    auto m = as_map(SamplerState(p).distribution(l));
    std::vector<int32_t> kept;
    double total = 0;
    for (auto& [t, pr] : m) kept.push_back(t), total += pr;
    EXPECT_EQ(kept, c.kept) << "top_p " << c.top_p;
    EXPECT_NEAR(total, 1.0, 1e-6);
    // Renormalized: each kept probability is its original one over the kept mass.
    auto orig = softmax(l);
    for (auto& [t, pr] : m) EXPECT_NEAR(pr, orig[size_t(t)] / c.mass, 1e-5);
  }
}

TEST(Sampler, TopPAppliesToTopKSurvivorsAndTemperature) {
  auto l = logits_of({0.05, 0.5, 0.1, 0.2, 0.15});
  SamplingParams p;
  p.top_k = 3;    // keeps 0.5, 0.2, 0.15 -> renormalized 0.588, 0.235, 0.176
  p.top_p = 0.8f; // 0.588 + 0.235 = 0.824 >= 0.8
  auto m = as_map(SamplerState(p).distribution(l));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_NEAR(m[1], 0.5 / 0.7, 1e-5);
  // Temperature sharpens first: at T=0.5 the probabilities are p^2 normalized, 0.25/0.325 = 0.77.
  p = SamplingParams{};
  p.temperature = 0.5f;
  p.top_p = 0.7f;
  EXPECT_EQ(SamplerState(p).distribution(l).size(), 1u);
}

// Reference for the whole filter chain in double with a full sort: top_k, then top_p over the top_k
// survivors, then min_p.
static std::vector<int32_t> reference_kept(const std::vector<float>& l, float T, int k, float top_p,
                                           float min_p) {
  auto pr = softmax(l, T);
  std::vector<int32_t> ord(l.size());
  std::iota(ord.begin(), ord.end(), 0);
  std::sort(ord.begin(), ord.end(),
            [&](int32_t a, int32_t b) { return pr[a] > pr[b] || (pr[a] == pr[b] && a < b); });
  if (k > 0 && size_t(k) < ord.size()) ord.resize(size_t(k));
  double mass = 0;
  for (int32_t t : ord) mass += pr[size_t(t)];
  double cum = 0;
  size_t keep = 0;
  while (keep < ord.size() && cum < top_p * mass) cum += pr[size_t(ord[keep++])];
  ord.resize(keep);
  const double thr = min_p * pr[size_t(ord[0])];
  std::erase_if(ord, [&](int32_t t) { return pr[size_t(t)] < thr; });
  return ord;
}

TEST(Sampler, FilterChainMatchesBruteForceOnFullVocab) {
  // Vocab-sized rows (one not a multiple of 8) through every selection path: heap top_k, threshold
  // candidates, the large-k nth_element path, the top_p weighted quickselect over flat and peaked rows.
  struct Case {
    int k;
    float top_p, min_p, T;
  };
  const std::vector<Case> cases{{50, 1, 0, 1},      {-1, 0.5f, 0, 1},   {-1, 0.9f, 0, 1},
                                {-1, 0.95f, 0, 0.7f}, {4000, 1, 0, 1},   {4000, 0.8f, 0, 1.3f},
                                {40, 0.95f, 0.05f, 1}, {-1, 1, 0.01f, 1}, {2000, 0.99f, 0.001f, 2}};
  std::mt19937 g(7);
  for (size_t V : {size_t(129280), size_t(129283)}) {
    for (float spread : {1.0f, 3.0f}) {
      for (bool peaked : {false, true}) {
        std::normal_distribution<float> nd(0, spread);
        std::vector<float> l(V);
        for (auto& x : l) x = nd(g);
        if (peaked)
          for (int j = 0; j < 30; ++j) l[g() % V] += 6 + 0.3f * float(j);
        for (const Case& c : cases) {
          SamplingParams p;
          p.top_k = c.k;
          p.top_p = c.top_p;
          p.min_p = c.min_p;
          p.temperature = c.T;
          auto d = SamplerState(p).distribution(l);
          auto want = reference_kept(l, c.T, c.k, c.top_p, c.min_p);
          std::vector<int32_t> got;
          double total = 0;
          for (auto& tp : d) got.push_back(tp.token), total += tp.prob;
          EXPECT_NEAR(total, 1.0, 1e-4);
          // Float vs double sums may move the top_p cut by a token at an exact boundary, no more.
          const std::string what = fmt::format("V {} spread {} peaked {} k {} top_p {} min_p {} T {}", V,
                                               spread, peaked, c.k, c.top_p, c.min_p, c.T);
          ASSERT_LE(std::abs(double(got.size()) - double(want.size())), 1.0) << what;
          std::sort(got.begin(), got.end());
          want.resize(std::min(want.size(), got.size()));
          std::sort(want.begin(), want.end());
          EXPECT_TRUE(std::includes(got.begin(), got.end(), want.begin(), want.end())) << what;
        }
      }
    }
  }
}

TEST(Sampler, ProbabilitiesAccurateOverWideRange) {
  // exp is a vectorized polynomial: check it against double precision across the useful range.
  std::vector<float> l;
  for (int i = 0; i < 203; ++i) l.push_back(-0.4f * float(i) + 0.01f * float(i % 7));
  auto d = as_map(SamplerState(SamplingParams{}).distribution(l));
  auto ref = softmax(l);
  for (size_t i = 0; i < l.size(); ++i) {
    if (ref[i] < 1e-37) continue;  // beyond float range: reported as 0
    EXPECT_NEAR(d[int32_t(i)] / ref[i], 1.0, 2e-6) << i;
  }
}

TEST(Sampler, MinPDropsTokensBelowFractionOfMax) {
  auto l = logits_of({0.05, 0.5, 0.1, 0.2, 0.15});
  SamplingParams p;
  p.min_p = 0.25f;  // threshold 0.125: keeps 0.5, 0.2, 0.15
  auto m = as_map(SamplerState(p).distribution(l));
  ASSERT_EQ(m.size(), 3u);
  EXPECT_NEAR(m[1], 0.5 / 0.85, 1e-5);
  EXPECT_NEAR(m[3], 0.2 / 0.85, 1e-5);
  EXPECT_NEAR(m[4], 0.15 / 0.85, 1e-5);
  p.min_p = 1.0f;  // only the maximum
  EXPECT_EQ(SamplerState(p).distribution(l).size(), 1u);
  // Relative to the tempered distribution: at T=2 the probabilities are ~ sqrt(p): 0.05 -> 0.316 of max.
  p.min_p = 0.3f;
  p.temperature = 2.0f;
  EXPECT_EQ(SamplerState(p).distribution(l).size(), 5u);
  p.min_p = 0.35f;
  p.temperature = 1.0f;
  EXPECT_EQ(SamplerState(p).distribution(l).size(), 2u);  // threshold 0.175: 0.5 and 0.2
}

// ---- penalties

TEST(Sampler, RepetitionPenaltyOverPromptAndOutput) {
  SamplingParams p;
  p.repetition_penalty = 1.5f;
  std::vector<int32_t> prompt{1, 2, 2};
  SamplerState s(p, prompt);
  s.record_output(4);
  std::vector<float> l{2.0f, 3.0f, -1.0f, 0.5f, -0.6f, 0.0f};
  s.apply_penalties(l);
  EXPECT_FLOAT_EQ(l[0], 2.0f);          // unseen
  EXPECT_FLOAT_EQ(l[1], 3.0f / 1.5f);   // prompt, positive: divided
  EXPECT_FLOAT_EQ(l[2], -1.0f * 1.5f);  // prompt, negative: multiplied (once despite repeats)
  EXPECT_FLOAT_EQ(l[3], 0.5f);
  EXPECT_FLOAT_EQ(l[4], -0.6f * 1.5f);  // output
  EXPECT_FLOAT_EQ(l[5], 0.0f);
}

TEST(Sampler, FrequencyAndPresenceOverOutputOnly) {
  SamplingParams p;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  std::vector<int32_t> prompt{0, 1};
  SamplerState s(p, prompt);
  for (int32_t t : {1, 3, 3, 3, 4}) s.record_output(t);
  std::vector<float> l{1, 1, 1, 1, 1, 1};
  s.apply_penalties(l);
  EXPECT_FLOAT_EQ(l[0], 1.0f);                       // prompt only: untouched
  EXPECT_FLOAT_EQ(l[1], 1.0f - 0.5f - 0.25f);        // once in output
  EXPECT_FLOAT_EQ(l[2], 1.0f);
  EXPECT_FLOAT_EQ(l[3], 1.0f - 3 * 0.5f - 0.25f);    // three times
  EXPECT_FLOAT_EQ(l[4], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(l[5], 1.0f);
  // Negative values reward repetition.
  SamplingParams q;
  q.frequency_penalty = -1.0f;
  SamplerState s2(q);
  s2.record_output(2);
  s2.record_output(2);
  std::vector<float> l2{0, 0, 0};
  s2.apply_penalties(l2);
  EXPECT_FLOAT_EQ(l2[2], 2.0f);
}

TEST(Sampler, RepetitionThenFrequencyCombined) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  SamplerState s(p);
  s.record_output(0);
  s.record_output(0);
  std::vector<float> l{3.0f, 3.0f};
  s.apply_penalties(l);
  EXPECT_FLOAT_EQ(l[0], 3.0f / 2.0f - 2.0f);
  EXPECT_FLOAT_EQ(l[1], 3.0f);
}

TEST(Sampler, PenaltiesSteerGreedyAndSampledTokensAreRecorded) {
  SamplingParams p;
  p.temperature = 0;
  p.presence_penalty = 2.0f;
  SamplerState s(p);
  std::vector<float> l{5.0f, 4.0f, 3.5f};
  EXPECT_EQ(s.sample(l).token, 0);  // recorded: 0 now costs 2
  EXPECT_EQ(s.sample(l).token, 1);
  EXPECT_EQ(s.sample(l).token, 2);
  EXPECT_EQ(s.sample(l).token, 0);  // all penalized equally: back to the top
  EXPECT_EQ(s.num_generated(), 4);
}

// ---- RNG and determinism

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferent) {
  std::mt19937 g(11);
  std::normal_distribution<float> nd(0, 2);
  std::vector<std::vector<float>> rows(100, std::vector<float>(50));
  for (auto& r : rows)
    for (auto& x : r) x = nd(g);
  auto run = [&](std::optional<uint64_t> seed) {
    SamplingParams p;
    p.seed = seed;
    p.top_p = 0.95f;
    p.presence_penalty = 0.3f;
    SamplerState s(p);
    std::vector<int32_t> out;
    for (auto& r : rows) out.push_back(s.sample(r).token);
    return out;
  };
  auto a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(run(std::nullopt), run(std::nullopt));  // unseeded requests get distinct streams
}

TEST(Sampler, SeededOutputIndependentOfOtherSequencesAndThreads) {
  std::vector<float> l{0.1f, 0.4f, 0.2f, 0.0f, 0.3f, -0.5f};
  std::vector<int32_t> alone;
  {
    SamplerState s(with_seed(99));
    for (int i = 0; i < 200; ++i) alone.push_back(s.sample(l).token);
  }
  // Same request interleaved with other requests (other logits, other params), sampled on other threads.
  SamplerState s(with_seed(99));
  std::vector<SamplerState> others;
  for (int k = 0; k < 3; ++k) others.emplace_back(with_seed(uint64_t(k)));
  std::vector<int32_t> mixed;
  std::vector<float> other_row(129280, 0.0f);
  for (int i = 0; i < 200; ++i) {
    std::thread t([&] { others[size_t(i) % 3].sample(other_row); });
    if (i % 2) mixed.push_back(s.sample(l).token);
    t.join();
    if (i % 2 == 0) {
      std::thread u([&] { mixed.push_back(s.sample(l).token); });
      u.join();
    }
  }
  EXPECT_EQ(alone, mixed);
}

TEST(Sampler, EmpiricalDistributionMatchesSoftmax) {
  std::vector<float> l{1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f, -2.0f, 0.7f};
  const float T = 0.8f;
  SamplingParams p;
  p.temperature = T;
  p.seed = 2024;
  SamplerState s(p);
  const int N = 20000;
  std::vector<int> cnt(l.size(), 0);
  for (int i = 0; i < N; ++i) ++cnt[size_t(s.sample(l).token)];
  auto ref = softmax(l, T);
  double chi2 = 0, max_sigma = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    double e = N * ref[i];
    chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
    max_sigma = std::max(max_sigma, std::abs(cnt[i] - e) / std::sqrt(e * (1 - ref[i])));
  }
  EXPECT_LT(chi2, 29.9) << "7 dof, p = 1e-4";
  EXPECT_LT(max_sigma, 4.5);
}

TEST(Sampler, EmpiricalDistributionMatchesFilteredDistribution) {
  auto l = logits_of({0.05, 0.3, 0.1, 0.2, 0.15, 0.12, 0.08});
  SamplingParams p;
  p.top_k = 5;
  p.top_p = 0.8f;
  p.min_p = 0.45f;  // after top_k (5) and top_p (4 left), drops 0.12 (0.4 of the max)
  p.seed = 5;
  SamplerState s(p);
  auto d = as_map(s.distribution(l));
  const int N = 20000;
  std::map<int32_t, int> cnt;
  for (int i = 0; i < N; ++i) ++cnt[s.sample(l).token];
  double chi2 = 0;
  for (auto& [t, c] : cnt) {
    ASSERT_TRUE(d.count(t)) << "sampled filtered token " << t;
  }
  for (auto& [t, pr] : d) {
    double e = N * pr;
    chi2 += (cnt[t] - e) * (cnt[t] - e) / e;
  }
  ASSERT_EQ(d.size(), 3u);
  EXPECT_LT(chi2, 18.4) << "2 dof, p = 1e-4";
}

// ---- logprobs

TEST(Sampler, LogprobsAreRawLogSoftmaxWithRankAndTop) {
  std::vector<float> l{1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
  SamplingParams p;
  p.temperature = 0.5f;            // logprobs ignore temperature ...
  p.repetition_penalty = 1.7f;     // ... and penalties
  p.logprobs = 3;
  p.seed = 1;
  SamplerState s(p, std::vector<int32_t>{1});
  auto ref = softmax(l);
  for (int i = 0; i < 50; ++i) {
    SampleResult r = s.sample(l);
    ASSERT_TRUE(r.has_logprobs);
    EXPECT_NEAR(r.logprob, std::log(ref[size_t(r.token)]), 1e-5);
    int rank = 1;
    for (size_t j = 0; j < l.size(); ++j)
      rank += l[j] > l[size_t(r.token)] || (l[j] == l[size_t(r.token)] && int32_t(j) < r.token);
    EXPECT_EQ(r.rank, rank);
    ASSERT_EQ(r.top.size(), 3u);
    EXPECT_EQ(r.top[0].token, 1);  // tie with 3: lowest id first
    EXPECT_EQ(r.top[1].token, 3);
    EXPECT_EQ(r.top[2].token, 2);
    for (auto& e : r.top) EXPECT_NEAR(e.logprob, std::log(ref[size_t(e.token)]), 1e-5);
  }
}

TEST(Sampler, LogprobsZeroAndOff) {
  std::vector<float> l{0.0f, 1.0f};
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 0;
  SampleResult r = SamplerState(p).sample(l);
  EXPECT_TRUE(r.has_logprobs);
  EXPECT_EQ(r.token, 1);
  EXPECT_EQ(r.rank, 1);
  EXPECT_NEAR(r.logprob, -std::log1p(std::exp(-1.0)), 1e-6);
  EXPECT_TRUE(r.top.empty());
  p.logprobs = -1;
  EXPECT_FALSE(SamplerState(p).sample(l).has_logprobs);
  // More requested than the vocabulary: the whole vocabulary; masked tokens report -inf.
  SampleResult all;
  compute_logprobs(std::vector<float>{0.0f, -INFINITY}, 0, 5, all);
  ASSERT_EQ(all.top.size(), 2u);
  EXPECT_NEAR(all.top[0].logprob, 0.0f, 1e-7);
  EXPECT_EQ(all.top[1].logprob, -INFINITY);
}

// ---- cost on the real vocabulary (reported, not asserted: CI machines vary)

TEST(Sampler, FullVocabCost) {
  const size_t V = 129280;
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0, 3);
  std::vector<float> l(V);
  for (auto& x : l) x = nd(g);
  std::vector<int32_t> prompt(2000);
  for (auto& t : prompt) t = int32_t(g() % V);
  auto mk = [](float T, int k, float top_p, float min_p, float rep, float freq, int lp) {
    SamplingParams p;
    p.temperature = T, p.top_k = k, p.top_p = top_p, p.min_p = min_p;
    p.repetition_penalty = rep, p.frequency_penalty = freq, p.logprobs = lp, p.seed = 1;
    return p;
  };
  struct Cfg {
    const char* name;
    SamplingParams p;
  };
  std::vector<Cfg> cfgs{{"greedy", mk(0, -1, 1, 0, 1, 0, -1)},
                        {"T=1", mk(1, -1, 1, 0, 1, 0, -1)},
                        {"top_k=50", mk(1, 50, 1, 0, 1, 0, -1)},
                        {"top_p=0.9", mk(1, -1, 0.9f, 0, 1, 0, -1)},
                        {"top_k+top_p+min_p", mk(1, 40, 0.95f, 0.05f, 1, 0, -1)},
                        {"penalties+logprobs5", mk(1, -1, 1, 0, 1.1f, 0.5f, 5)}};
  for (auto& c : cfgs) {
    SamplerState s(c.p, prompt);
    s.sample(l);  // warm the scratch
    const int n = 50;
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) s.sample(l);
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / n;
    std::printf("  sample %-22s %8.1f us\n", c.name, us);
  }
}
