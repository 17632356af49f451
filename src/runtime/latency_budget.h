// Keeps decodes at pace while a long prompt prefills (--max-inter-token-latency-ms): when a step carries
// decodes, its prefill tokens are capped so the predicted step time stays within the bound. The prediction is a
// running linear fit of measured steps, time = base + per_token x prefill tokens, whose per-token cost follows
// the prompt as its context (and so its attention cost) grows. The plan keeps headroom for the fit's error: the
// step is planned to bound / (1 + 3 sigma), sigma the running RMS of the relative error of past predictions, so
// a noisy machine or chunks whose cost jumps keep the tail, not only the median, under the bound (measured at
// 256K without it: p50 at the bound, p99 23% over). Steps without decodes are not capped: nobody waits on them.
// Pure arithmetic on the times it is given (tests feed synthetic ones).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dsv4 {

class PrefillLatencyBudget {
 public:
  // bound_s <= 0: off (every step may use the whole token budget).
  explicit PrefillLatencyBudget(double bound_s) : bound_(bound_s) {}
  bool enabled() const { return bound_ > 0; }

  // Prefill tokens a step with decodes may carry (>= kMinChunk so the prefill always progresses).
  int64_t prefill_tokens(int64_t token_budget) const {
    if (!enabled()) return token_budget;
    if (per_token_ <= 0) return std::min<int64_t>(token_budget, kFirstChunk);  // nothing measured yet
    const double room = bound_ / headroom() - base_;
    const int64_t n = room <= 0 ? 0 : int64_t(room / per_token_);
    return std::clamp<int64_t>(n, std::min<int64_t>(kMinChunk, token_budget), token_budget);
  }

  // A finished step: its prefill tokens and its wall time (the whole step: schedule to results).
  void observe(int64_t prefill_tokens, double seconds) {
    if (!enabled()) return;
    if (prefill_tokens == 0) {
      base_ = base_ <= 0 ? seconds : base_ + kAlpha * (seconds - base_);
      return;
    }
    if (per_token_ > 0) {  // the prediction this step was planned with, against what it took
      const double pred = std::max(base_, 0.0) + per_token_ * double(prefill_tokens);
      const double e = seconds / pred - 1;
      var_ += kBeta * (e * e - var_);
    }
    const double per = std::max(seconds - std::max(base_, 0.0), 0.0) / double(prefill_tokens);
    per_token_ = per_token_ <= 0 ? per : per_token_ + kAlpha * (per - per_token_);
  }
  double base_seconds() const { return base_; }
  double per_token_seconds() const { return per_token_; }
  // The factor the plan divides the bound by: 1 + kSpread x the RMS relative error of recent predictions.
  double headroom() const { return 1 + kSpread * std::sqrt(var_); }

  static constexpr int64_t kMinChunk = 16, kFirstChunk = 256;
  static constexpr double kAlpha = 0.3;  // recent steps weigh most: the context grows chunk by chunk
  static constexpr double kBeta = 0.05;  // the error's spread: ~20 steps of memory
  static constexpr double kSpread = 3;   // errors are not normal: the tail is longer than 2 sigma

 private:
  double bound_;
  double base_ = 0, per_token_ = 0, var_ = 0;
};

}  // namespace dsv4
