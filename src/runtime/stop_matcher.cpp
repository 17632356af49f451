#include "runtime/stop_matcher.h"

#include <algorithm>

namespace dsv4 {

StopMatcher::StopMatcher(std::vector<std::string> stops, bool include_stop_str)
    : stops_(std::move(stops)), include_(include_stop_str) {
  for (size_t k = 0; k < stops_.size(); ++k) {
    const std::string& s = stops_[k];
    if (s.empty()) continue;  // would match everywhere; OpenAI clients sometimes send ""
    Pattern p;
    p.s = s;
    p.index = int(k);
    p.fail.assign(s.size(), 0);
    for (size_t i = 1, j = 0; i < s.size(); ++i) {
      while (j > 0 && s[i] != s[j]) j = p.fail[j - 1];
      if (s[i] == s[j]) ++j;
      p.fail[i] = uint32_t(j);
    }
    pats_.push_back(std::move(p));
  }
}

const std::string& StopMatcher::stop_string() const {
  static const std::string none;
  return stop_index_ >= 0 ? stops_[size_t(stop_index_)] : none;
}

std::string StopMatcher::feed(std::string_view piece) {
  if (stopped()) return {};
  if (pats_.empty()) return std::string(piece);
  const size_t base = held_.size();
  held_.append(piece);  // held_ is now everything not yet emitted
  for (size_t j = 0; j < piece.size(); ++j) {
    const char c = piece[j];
    Pattern* hit = nullptr;
    for (Pattern& p : pats_) {
      uint32_t st = p.state;
      while (st > 0 && p.s[st] != c) st = p.fail[st - 1];
      if (p.s[st] == c) ++st;
      p.state = st;
      if (st == p.s.size() && (!hit || p.s.size() > hit->s.size())) hit = &p;
    }
    if (hit) {
      // The match lies inside held_: had it started in emitted text, that text's tail would have been a
      // prefix of this pattern, i.e. still held.
      const size_t end = base + j + 1, start = end - hit->s.size();
      stop_index_ = hit->index;
      std::string out = held_.substr(0, include_ ? end : start);
      held_.clear();
      return out;
    }
  }
  uint32_t keep = 0;
  for (const Pattern& p : pats_) keep = std::max(keep, p.state);
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  if (stopped()) return {};
  std::string out = std::move(held_);
  held_.clear();
  for (Pattern& p : pats_) p.state = 0;
  return out;
}

TokenStop check_token_stop(const SamplingParams& params, int32_t token, int64_t num_generated,
                           std::span<const int32_t> eos_token_ids) {
  if (!params.ignore_eos &&
      std::find(eos_token_ids.begin(), eos_token_ids.end(), token) != eos_token_ids.end())
    return TokenStop::Eos;
  if (std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), token) !=
      params.stop_token_ids.end())
    return TokenStop::StopToken;
  if (num_generated >= params.max_tokens) return TokenStop::Length;
  return TokenStop::None;
}

const char* finish_reason_of(TokenStop s) {
  switch (s) {
    case TokenStop::Eos:
    case TokenStop::StopToken: return "stop";
    case TokenStop::Length: return "length";
    case TokenStop::None: break;
  }
  return nullptr;
}

}  // namespace dsv4
