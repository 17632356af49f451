#include "runtime/sampler.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "core/error.h"

namespace dsv4 {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-thread scratch: a vocab-sized row (~0.5 MB) per sequence would add up across a large batch, and
// sample() never needs it past its return.
struct Scratch {
  std::vector<float> v;     // penalized logits, then unnormalized probabilities of candidates
  std::vector<int32_t> idx; // candidate token ids; the kept ones are idx[0, n)
  std::vector<std::pair<float, int32_t>> heap;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// NaN ranks as -inf; +inf is clamped so the softmax shift (x - max) never computes inf - inf.
inline float clean(float x) {
  return std::isnan(x) ? kNegInf : std::min(x, std::numeric_limits<float>::max());
}

// Higher value first, then lower id: the one ranking used everywhere.
struct ByValueDesc {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

}  // namespace

void SamplingParams::validate(int64_t vocab_size) const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    fail("temperature must be a finite number >= 0, got {}", temperature);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("top_p must be in (0, 1], got {}", top_p);
  if (top_k < -1) fail("top_k must be -1 or 0 (disabled) or a positive integer, got {}", top_k);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("min_p must be in [0, 1], got {}", min_p);
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    fail("repetition_penalty must be a finite number > 0, got {}", repetition_penalty);
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    fail("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    fail("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  if (max_tokens < 1) fail("max_tokens must be at least 1, got {}", max_tokens);
  if (logprobs < -1 || logprobs > kMaxLogprobs)
    fail("logprobs must be between 0 and {}, got {}", kMaxLogprobs, logprobs);
  for (int32_t id : stop_token_ids) {
    if (id < 0 || (vocab_size > 0 && id >= vocab_size))
      fail("stop_token_ids: {} is not a token id (vocabulary size {})", id, vocab_size);
  }
}

uint64_t SamplerRng::random_seed() {
  static std::atomic<uint64_t> counter{[] {
    std::random_device rd;
    uint64_t t = uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count());
    return (uint64_t(rd()) << 32 ^ rd()) ^ t;
  }()};
  // Each call takes the next SplitMix64 output of a shared stream: distinct seeds across threads.
  SamplerRng r(counter.fetch_add(0x9e3779b97f4a7c15ull, std::memory_order_relaxed));
  return r.next();
}

SamplerState::SamplerState(SamplingParams params, std::span<const int32_t> prompt)
    : params_(std::move(params)), rng_(params_.seed ? *params_.seed : SamplerRng::random_seed()) {
  track_seen_ = params_.repetition_penalty != 1.0f;
  track_counts_ = params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f;
  if (track_seen_) {
    for (int32_t t : prompt) {
      if (t < 0) continue;
      size_t w = size_t(t) >> 6;
      if (w >= seen_bits_.size()) seen_bits_.resize(w + 1, 0);
      uint64_t bit = 1ull << (t & 63);
      if (!(seen_bits_[w] & bit)) {
        seen_bits_[w] |= bit;
        seen_.push_back(t);
      }
    }
  }
}

void SamplerState::record_output(int32_t token) {
  ++num_generated_;
  if (token < 0) return;
  if (track_seen_) {
    size_t w = size_t(token) >> 6;
    if (w >= seen_bits_.size()) seen_bits_.resize(w + 1, 0);
    uint64_t bit = 1ull << (token & 63);
    if (!(seen_bits_[w] & bit)) {
      seen_bits_[w] |= bit;
      seen_.push_back(token);
    }
  }
  if (track_counts_) ++counts_[token];
}

void SamplerState::apply_penalties(std::span<float> logits) const {
  const size_t V = logits.size();
  if (track_seen_) {
    const float r = params_.repetition_penalty;
    for (int32_t t : seen_) {
      if (size_t(t) >= V) continue;
      float& l = logits[size_t(t)];
      l = l > 0 ? l / r : l * r;
    }
  }
  if (track_counts_) {
    const float f = params_.frequency_penalty, p = params_.presence_penalty;
    for (const auto& [t, c] : counts_) {
      if (size_t(t) >= V || c <= 0) continue;
      logits[size_t(t)] -= f * float(c) + p;
    }
  }
}

struct SamplerState::Prepared {
  bool greedy = false;
  int32_t token = -1;  // greedy choice
  size_t n = 0;        // kept candidates: scratch().idx[0, n), unnormalized probs in scratch().v
  double total = 0;    // their probability mass
};

SamplerState::Prepared SamplerState::prepare(std::span<const float> logits) const {
  const size_t V = logits.size();
  DSV4_CHECK(V > 0, "sampler: empty logits row");
  DSV4_CHECK(V <= size_t(std::numeric_limits<int32_t>::max()), "sampler: vocabulary too large");
  Scratch& S = scratch();
  S.v.resize(V);
  float* v = S.v.data();
  for (size_t i = 0; i < V; ++i) v[i] = clean(logits[i]);
  if (track_seen_ || track_counts_) {
    apply_penalties(std::span<float>(v, V));
    for (size_t i = 0; i < V; ++i) v[i] = clean(v[i]);  // a penalty can push a huge logit to inf
  }

  // First maximum: greedy's answer (lowest id on ties) and the softmax shift.
  size_t am = 0;
  for (size_t i = 1; i < V; ++i)
    if (v[i] > v[am]) am = i;
  const float vmax = v[am];
  if (vmax == kNegInf) fail("sampler: every logit is -inf or NaN");
  Prepared P;
  if (params_.greedy()) {
    P.greedy = true;
    P.token = int32_t(am);
    return P;
  }

  // top_k: exactly k candidates (ties at the boundary go to the lowest ids). vLLM keeps every token tied
  // with the k-th value instead; the difference only shows with exactly equal logits.
  S.idx.resize(V);
  std::iota(S.idx.begin(), S.idx.end(), 0);
  int32_t* idx = S.idx.data();
  size_t n = V;
  if (params_.top_k > 0 && size_t(params_.top_k) < V) {
    n = size_t(params_.top_k);
    std::nth_element(idx, idx + n, idx + V, ByValueDesc{v});
  }

  // Unnormalized probabilities exp((l - max) / T); the maximum maps to exactly 1.
  const float inv_t = 1.0f / params_.temperature;
  double total = 0;
  if (n == V) {
    for (size_t i = 0; i < V; ++i) {
      v[i] = std::exp((v[i] - vmax) * inv_t);
      total += v[i];
    }
  } else {
    for (size_t j = 0; j < n; ++j) {
      float& x = v[idx[j]];
      x = std::exp((x - vmax) * inv_t);
      total += x;
    }
  }

  // top_p: walk candidates from the most probable, selecting a growing prefix with nth_element so the
  // usual small nucleus never pays for a full sort of the vocabulary.
  if (params_.top_p < 1.0f) {
    const double target = double(params_.top_p) * total;
    const ByValueDesc cmp{v};
    size_t done = 0, m = std::min<size_t>(n, 64), keep = n;
    double cum = 0;
    for (;;) {
      if (m < n) std::nth_element(idx + done, idx + m, idx + n, cmp);
      std::sort(idx + done, idx + m, cmp);
      for (; done < m; ++done) {
        cum += v[idx[done]];
        if (cum >= target) break;
      }
      if (done < m) {
        keep = done + 1;
        break;
      }
      if (m == n) break;  // rounding left cum a hair under target: keep everything
      m = std::min(n, m * 4);
    }
    n = keep;
    total = 0;
    for (size_t j = 0; j < n; ++j) total += v[idx[j]];
  }

  // min_p relative to the most probable token, whose unnormalized probability is exactly 1 and which
  // top_k/top_p always keep.
  if (params_.min_p > 0.0f) {
    const float thr = params_.min_p;
    size_t w = 0;
    total = 0;
    for (size_t j = 0; j < n; ++j) {
      if (v[idx[j]] >= thr) {
        idx[w++] = idx[j];
        total += v[idx[j]];
      }
    }
    n = w;
  }
  P.n = n;
  P.total = total;
  return P;
}

std::vector<TokenProb> SamplerState::distribution(std::span<const float> logits) const {
  Prepared P = prepare(logits);
  if (P.greedy) return {{P.token, 1.0f}};
  const Scratch& S = scratch();
  std::vector<TokenProb> out(P.n);
  for (size_t j = 0; j < P.n; ++j) {
    int32_t t = S.idx[j];
    out[j] = {t, float(double(S.v[size_t(t)]) / P.total)};
  }
  return out;
}

SampleResult SamplerState::sample(std::span<const float> logits) {
  Prepared P = prepare(logits);
  SampleResult r;
  if (P.greedy) {
    r.token = P.token;
  } else {
    // Inverse CDF over the kept candidates in their (deterministic) order: one draw per step.
    const Scratch& S = scratch();
    const double u = rng_.uniform() * P.total;
    double cum = 0;
    r.token = -1;
    for (size_t j = 0; j < P.n; ++j) {
      float p = S.v[size_t(S.idx[j])];
      if (p <= 0) continue;
      cum += p;
      r.token = S.idx[j];
      if (u < cum) break;
    }
    if (r.token < 0) r.token = S.idx[0];  // all mass underflowed: the top candidate
  }
  if (params_.logprobs >= 0) compute_logprobs(logits, r.token, params_.logprobs, r);
  record_output(r.token);
  return r;
}

void compute_logprobs(std::span<const float> logits, int32_t token, int top_n, SampleResult& r) {
  const size_t V = logits.size();
  DSV4_CHECK(token >= 0 && size_t(token) < V, "logprobs: token {} outside vocabulary {}", token, V);
  float mx = kNegInf;
  for (size_t i = 0; i < V; ++i) mx = std::max(mx, clean(logits[i]));
  double sum = 0;
  if (mx != kNegInf)
    for (size_t i = 0; i < V; ++i) sum += std::exp(clean(logits[i]) - mx);
  const double lse = mx == kNegInf ? 0.0 : double(mx) + std::log(sum);
  auto lp = [&](size_t i) { return float(double(clean(logits[i])) - lse); };

  const float x = clean(logits[size_t(token)]);
  int rank = 1;
  for (size_t i = 0; i < V; ++i) {
    float y = clean(logits[i]);
    rank += (y > x) || (y == x && i < size_t(token));
  }
  r.has_logprobs = true;
  r.token = token;
  r.logprob = lp(size_t(token));
  r.rank = rank;
  r.top.clear();
  if (top_n <= 0) return;

  // Top-N by a bounded heap whose front is the worst kept; scanning ids upward, a tie never displaces.
  const size_t N = std::min<size_t>(size_t(top_n), V);
  auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  auto& h = scratch().heap;
  h.clear();
  for (size_t i = 0; i < V; ++i) {
    float y = clean(logits[i]);
    if (h.size() < N) {
      h.emplace_back(y, int32_t(i));
      std::push_heap(h.begin(), h.end(), better);
    } else if (y > h.front().first) {
      std::pop_heap(h.begin(), h.end(), better);
      h.back() = {y, int32_t(i)};
      std::push_heap(h.begin(), h.end(), better);
    }
  }
  std::sort_heap(h.begin(), h.end(), better);
  r.top.reserve(N);
  for (const auto& [y, i] : h) r.top.push_back({i, lp(size_t(i))});
}

}  // namespace dsv4
