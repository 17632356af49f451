#include "runtime/sampler.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include "core/error.h"

namespace dsv4 {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kFltMax = std::numeric_limits<float>::max();

// Per-thread scratch: a vocab-sized row per sequence would add up across a large batch, and sample()
// never needs it past its return.
struct Scratch {
  std::vector<float> v;        // penalized logits, then unnormalized probabilities exp((l - max) / T)
  std::vector<int32_t> idx;    // kept token ids, idx[0, n)
  std::vector<uint64_t> keys;  // selection keys, see prepare()
  std::vector<std::pair<float, int32_t>> heap;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// NaN ranks as -inf; +inf is clamped so the softmax shift (x - max) never computes inf - inf.
inline float clean(float x) { return x != x ? kNegInf : x > kFltMax ? kFltMax : x; }

// ---- vocab-sized loops, written with GCC/Clang vector extensions: GCC will not if-convert float
// selects under the default -ftrapping-math, so plain loops stay scalar (and libm's expf never
// vectorizes). Lanes past the end are padded with -inf, which every kernel treats as "absent".
using f8 = float __attribute__((vector_size(32)));
using i8 = int32_t __attribute__((vector_size(32)));
constexpr size_t W = 8;

inline f8 splat(float x) { return f8{x, x, x, x, x, x, x, x}; }
inline f8 load(const float* p, size_t n = W) {
  f8 r;
  if (n >= W) {
    std::memcpy(&r, p, sizeof r);
  } else {
    r = splat(kNegInf);
    for (size_t k = 0; k < n; ++k) r[k] = p[k];
  }
  return r;
}
inline void store(float* p, f8 x, size_t n = W) {
  if (n >= W) {
    std::memcpy(p, &x, sizeof x);
  } else {
    for (size_t k = 0; k < n; ++k) p[k] = x[k];
  }
}
inline bool any(i8 m) {
  uint64_t a[4];
  std::memcpy(a, &m, sizeof a);
  return (a[0] | a[1] | a[2] | a[3]) != 0;
}
inline float hsum(f8 x) { return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7])); }
inline f8 clean8(f8 x) { return x != x ? splat(kNegInf) : x > splat(kFltMax) ? splat(kFltMax) : x; }

// exp(x) for x <= 0: Cephes expf polynomial (~2 ulp); x < -87 (and -inf) gives exactly 0.
inline f8 exp8(f8 x) {
  const f8 c = x < splat(-87.0f) ? splat(-87.0f) : x;
  const f8 n = (c * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(c / ln 2)
  const f8 r = c - n * 0.693359375f + n * 2.12194440e-4f;
  f8 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const f8 y = p * r * r + r + 1.0f;
  const i8 scale = (__builtin_convertvector(n, i8) + 127) << 23;
  return (f8)((i8)(y * (f8)scale) & (x >= splat(-87.0f)));
}

void clean_copy(const float* in, float* out, size_t n) {
  for (size_t i = 0; i < n; i += W) store(out + i, clean8(load(in + i, n - i)), n - i);
}

// Maximum of clean(v[i]).
float max_clean(const float* v, size_t n) {
  f8 m = splat(kNegInf);
  for (size_t i = 0; i < n; i += W) {
    const f8 x = clean8(load(v + i, n - i));
    m = x > m ? x : m;
  }
  float r = kNegInf;
  for (size_t k = 0; k < W; ++k) r = std::max(r, m[k]);
  return r;
}

// Sums in float lanes per block of 1024, in double across blocks: vector speed, double-grade totals.
constexpr size_t kBlock = 1024;
constexpr size_t kHeapTopK = 1024;  // larger top_k: threshold candidates + nth_element

// Sum of exp(clean(l[i]) - shift) (shift >= every clean(l[i])).
double sum_exp(const float* l, size_t n, float shift) {
  double total = 0;
  for (size_t b = 0; b < n; b += kBlock) {
    f8 acc{};
    for (size_t i = b, e = std::min(n, b + kBlock); i < e; i += W)
      acc += exp8(clean8(load(l + i, e - i)) - shift);
    total += hsum(acc);
  }
  return total;
}

// v[i] = exp((v[i] - shift) * scale) in place, with the total and, per threshold kTau[j], the size and
// mass of {p >= kTau[j]}.
constexpr int kNumTau = 3;
constexpr float kTau[kNumTau] = {1e-2f, 1e-4f, 1e-8f};
struct ExpStats {
  double total = 0, mass[kNumTau] = {};
  size_t cnt[kNumTau] = {};
};
ExpStats exp_pass(float* v, size_t n, float shift, float scale) {
  ExpStats st;
  for (size_t b = 0; b < n; b += kBlock) {
    f8 t{}, m[kNumTau] = {};
    i8 c[kNumTau] = {};
    for (size_t i = b, e = std::min(n, b + kBlock); i < e; i += W) {
      const f8 p = exp8((load(v + i, e - i) - shift) * scale);
      store(v + i, p, e - i);
      t += p;
      for (int j = 0; j < kNumTau; ++j) {
        const i8 k = p >= kTau[j];
        m[j] += (f8)((i8)p & k);
        c[j] -= k;
      }
    }
    st.total += hsum(t);
    for (int j = 0; j < kNumTau; ++j) {
      st.mass[j] += hsum(m[j]);
      for (size_t k = 0; k < W; ++k) st.cnt[j] += size_t(c[j][k]);
    }
  }
  return st;
}

// Appends the ids i with v[i] >= tau, ascending; returns how many.
size_t select_ge(const float* v, size_t n, float tau, int32_t* idx) {
  size_t c = 0;
  for (size_t i = 0; i < n; i += W) {
    const i8 m = load(v + i, n - i) >= tau;
    if (!any(m)) continue;
    for (size_t k = 0; k < W && i + k < n; ++k)
      if (m[k]) idx[c++] = int32_t(i + k);
  }
  return c;
}

// The N best of clean(x[0, V)) (value descending, ties lowest id first) into h, best first: a bounded
// heap whose front is the worst kept, fed only by 8-lane blocks that beat it. Scanning ids upward, a tie
// never displaces.
void top_n(const float* x, size_t V, size_t N, std::vector<std::pair<float, int32_t>>& h) {
  auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  N = std::min(N, V);
  h.clear();
  for (size_t i = 0; i < V; i += W) {
    const f8 y = clean8(load(x + i, V - i));
    if (h.size() == N && !any(y > h.front().first)) continue;
    for (size_t k = 0; k < W && i + k < V; ++k) {
      if (h.size() < N) {
        h.emplace_back(y[k], int32_t(i + k));
        std::push_heap(h.begin(), h.end(), better);
      } else if (y[k] > h.front().first) {
        std::pop_heap(h.begin(), h.end(), better);
        h.back() = {y[k], int32_t(i + k)};
        std::push_heap(h.begin(), h.end(), better);
      }
    }
  }
  std::sort_heap(h.begin(), h.end(), better);
}

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
  if (params_.grammar) matcher_.emplace(params_.grammar);
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
  if (matcher_ && !matcher_->accept_token(token))
    fail("structured output: token {} is not allowed by the request's {} grammar here", token,
         matcher_->compiled().description());
  if (matcher_) matcher_->prefetch_mask();  // computed while the next forward pass runs
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
  bool all = false;    // every token kept, in id order (no idx)
  size_t n = 0;        // otherwise the kept tokens are scratch().idx[0, n); probabilities in scratch().v
  double total = 0;    // their unnormalized mass
};

SamplerState::Prepared SamplerState::prepare(std::span<const float> logits) const {
  const size_t V = logits.size();
  DSV4_CHECK(V > 0, "sampler: empty logits row");
  DSV4_CHECK(V <= size_t(std::numeric_limits<int32_t>::max()), "sampler: vocabulary too large");
  Scratch& S = scratch();
  S.v.resize(V);
  float* v = S.v.data();
  clean_copy(logits.data(), v, V);
  if (matcher_ && matcher_->apply(std::span<float>(v, V)) == 0)
    fail("structured output: no token can continue the {} grammar here", matcher_->compiled().description());
  if (track_seen_ || track_counts_) {
    apply_penalties(std::span<float>(v, V));
    clean_copy(v, v, V);  // a penalty can push a huge logit to inf
  }
  const float vmax = max_clean(v, V);
  if (vmax == kNegInf) fail("sampler: every logit is -inf or NaN");
  Prepared P;
  if (params_.greedy()) {
    P.greedy = true;
    P.token = int32_t(std::find(v, v + V, vmax) - v);  // first maximum: lowest id on ties
    return P;
  }

  // Unnormalized probabilities exp((l - max) / T) (the maximum maps to exactly 1), and the size and mass
  // of the candidate sets {p >= tau} used below, all in one vectorized pass.
  const float inv_t = 1.0f / params_.temperature;
  const ExpStats st = exp_pass(v, V, vmax, inv_t);
  double total = st.total;
  const float min_p = params_.min_p;
  const size_t top_k = params_.top_k > 0 ? size_t(params_.top_k) : V;
  const bool use_k = top_k < V, use_p = params_.top_p < 1.0f;
  if (!use_k && !use_p && min_p <= 0.0f) {
    P.all = true;
    P.n = V;
    P.total = total;
    return P;
  }

  int32_t* idx = (S.idx.resize(V), S.idx.data());
  if (!use_k && !use_p) {  // min_p alone: relative to the maximum, whose probability is exactly 1
    P.n = select_ge(v, V, min_p, idx);
    for (size_t j = 0; j < P.n; ++j) P.total += v[idx[j]];
    return P;
  }

  // Candidates: the most probable tokens {p >= tau} for the largest tau that provably contains the top_k
  // set (>= k tokens) or the top_p nucleus (>= top_p of the mass), so the selection below usually works
  // on a few hundred tokens rather than the vocabulary.
  float tau = 0.0f;
  const double target_all = double(params_.top_p) * total;
  for (int j = kNumTau - 1; j >= 0; --j)
    if (use_k ? st.cnt[j] >= top_k : st.mass[j] >= target_all) tau = kTau[j];

  // Selection runs on packed keys, probability bits then inverted id: larger key = more probable, ties to
  // the lowest id, and no indirection in the comparisons.
  auto key_of = [](float p, int32_t t) {
    return uint64_t(std::bit_cast<uint32_t>(p)) << 32 | (0xffffffffu - uint32_t(t));
  };
  auto p_of = [](uint64_t k) { return std::bit_cast<float>(uint32_t(k >> 32)); };
  S.keys.resize(V);
  uint64_t* keys = S.keys.data();
  const std::greater<uint64_t> gt;
  size_t n = 0;
  if (use_k && top_k <= kHeapTopK) {  // the usual k: one heap pass over the row
    top_n(v, V, top_k, S.heap);
    for (const auto& [p, t] : S.heap) keys[n++] = key_of(p, t);
  } else {
    n = select_ge(v, V, tau, idx);
    for (size_t j = 0; j < n; ++j) keys[j] = key_of(v[idx[j]], idx[j]);
  }
  // top_k: exactly k tokens, ties at the boundary to the lowest ids (vLLM keeps every token tied with the
  // k-th value; that differs only on exactly equal probabilities).
  if (use_k) {
    if (top_k < n) std::nth_element(keys, keys + top_k, keys + n, gt);
    n = std::min(n, top_k);
    total = 0;
    for (size_t j = 0; j < n; ++j) total += p_of(keys[j]);
  }
  // top_p: the smallest most-probable prefix whose mass reaches top_p of what top_k left. Weighted
  // quickselect: halve the range around its median until the cut is pinned to a short run, then sort
  // only that run; O(n) rather than sorting the nucleus.
  if (use_p) {
    const double target = double(params_.top_p) * total;
    size_t lo = 0, hi = n;  // everything before lo is kept, everything from hi on is dropped
    double cum = 0;         // mass of [0, lo)
    while (hi - lo > 64) {
      const size_t mid = lo + (hi - lo) / 2;
      std::nth_element(keys + lo, keys + mid, keys + hi, gt);
      double upper = 0;
      for (size_t j = lo; j < mid; ++j) upper += p_of(keys[j]);
      if (cum + upper >= target) {
        hi = mid;
      } else {
        cum += upper;
        lo = mid;
      }
    }
    std::sort(keys + lo, keys + hi, gt);
    size_t keep = lo;
    while (keep < hi && cum < target) cum += p_of(keys[keep++]);
    n = std::max<size_t>(keep, 1);  // rounding can leave cum a hair short: keep the run
  }
  // min_p relative to the most probable token, whose probability is exactly 1 and which top_k and top_p
  // always keep.
  size_t w = 0;
  total = 0;
  for (size_t j = 0; j < n; ++j) {
    const float p = p_of(keys[j]);
    if (p >= min_p) idx[w++] = int32_t(0xffffffffu - uint32_t(keys[j])), total += p;
  }
  P.n = w;
  P.total = total;
  return P;
}

std::vector<TokenProb> SamplerState::distribution(std::span<const float> logits) const {
  Prepared P = prepare(logits);
  if (P.greedy) return {{P.token, 1.0f}};
  const Scratch& S = scratch();
  std::vector<TokenProb> out(P.n);
  for (size_t j = 0; j < P.n; ++j) {
    int32_t t = P.all ? int32_t(j) : S.idx[j];
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
    // Inverse CDF over the kept tokens in their (deterministic) order: one draw per step. Whole blocks
    // are skipped by their (vectorized) sum so the common all-vocabulary case is not one long add chain.
    const Scratch& S = scratch();
    const float* v = S.v.data();
    const int32_t* idx = S.idx.data();
    const bool all = P.all;
    auto tok = [&](size_t j) { return all ? int32_t(j) : idx[j]; };
    const double u = rng_.uniform() * P.total;
    double cum = 0;
    int32_t last = -1;
    r.token = -1;
    for (size_t j = 0; j < P.n && r.token < 0;) {
      const size_t e = std::min(P.n, j + 1024);
      double bs = 0;
      if (all) {
        f8 acc{};
        for (size_t q = j; q < e; q += W) {
          const f8 x = load(v + q, e - q);
          acc += x > splat(0.0f) ? x : splat(0.0f);  // the -inf padding
        }
        bs = hsum(acc);
      } else {
        for (size_t q = j; q < e; ++q) bs += v[idx[q]];
      }
      if (cum + bs <= u && e < P.n) {
        cum += bs;
        j = e;
        continue;
      }
      for (; j < e; ++j) {
        const float p = v[tok(j)];
        if (p <= 0) continue;
        cum += p;
        last = tok(j);
        if (u < cum) {
          r.token = last;
          break;
        }
      }
      if (r.token < 0 && e == P.n) r.token = last;  // rounding: u a hair past the final sum
    }
    if (r.token < 0) fail("sampler: no token left with positive probability");  // max always survives
  }
  if (params_.logprobs >= 0) compute_logprobs(logits, r.token, params_.logprobs, r);
  record_output(r.token);
  return r;
}

void compute_logprobs(std::span<const float> logits, int32_t token, int top_count, SampleResult& r) {
  const size_t V = logits.size();
  DSV4_CHECK(token >= 0 && size_t(token) < V, "logprobs: token {} outside vocabulary {}", token, V);
  const float* l = logits.data();
  const float mx = max_clean(l, V);
  const double lse = mx == kNegInf ? 0.0 : double(mx) + std::log(sum_exp(l, V, mx));
  auto lp = [&](size_t i) { return float(double(clean(l[i])) - lse); };

  // rank = 1 + #(higher) + #(equal with a lower id).
  const float x = clean(l[size_t(token)]);
  const i8 lane{0, 1, 2, 3, 4, 5, 6, 7};
  i8 cnt{};
  for (size_t i = 0; i < V; i += W) {
    const f8 y = clean8(load(l + i, V - i));
    const i8 valid = (lane + int32_t(i)) < int32_t(V);
    const i8 before = (lane + int32_t(i)) < token;
    cnt -= ((y > x) | ((y == x) & before)) & valid;
  }
  int rank = 1;
  for (size_t k = 0; k < W; ++k) rank += cnt[k];
  r.has_logprobs = true;
  r.token = token;
  r.logprob = lp(size_t(token));
  r.rank = rank;
  r.top.clear();
  if (top_count <= 0) return;

  auto& h = scratch().heap;
  top_n(l, V, size_t(top_count), h);
  r.top.reserve(h.size());
  for (const auto& [y, i] : h) r.top.push_back({i, lp(size_t(i))});
}

}  // namespace dsv4
