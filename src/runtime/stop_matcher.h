// Stopping: stop strings on the detokenized text stream, and the per-token stop/length decision.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/sampler.h"

namespace dsv4 {

// Watches a sequence's detokenized text, fed piece by piece in order, for any of a set of stop strings,
// including ones spanning piece boundaries. feed() returns the text that is safe to stream now:
//   - text before a stop string is emitted; the stop string itself is not (vLLM's default,
//     include_stop_str_in_output = false), and nothing after it;
//   - a tail that could still be the start of a stop string is held back until the next pieces decide,
//     so a streaming client never sees part of a stop string.
// The text is matched as bytes (UTF-8 stop strings in UTF-8 text can only match at character starts).
// The stop is the first one to complete in the text; when several complete on the same byte, the longest
// wins (it starts first). The result does not depend on how the text is split into pieces.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops, bool include_stop_str = false);

  // Appends the next piece; returns what may be emitted now (possibly empty). After a stop: "".
  std::string feed(std::string_view piece);
  // End of generation without a stop string: returns the held-back tail. After a stop: "".
  std::string flush();

  bool stopped() const { return stop_index_ >= 0; }
  int stop_index() const { return stop_index_; }  // into the constructor's list; -1 if none
  const std::string& stop_string() const;          // the matched stop string ("" if none)
  size_t held() const { return held_.size(); }     // bytes held back right now
  bool active() const { return !pats_.empty(); }   // false: feed() passes pieces straight through

 private:
  // One Knuth-Morris-Pratt automaton per stop string: state = longest suffix of the text so far that is
  // a prefix of the pattern, which is exactly what must be held back for it.
  struct Pattern {
    std::string s;
    std::vector<uint32_t> fail;  // KMP failure function
    uint32_t state = 0;
    int index = 0;  // position in the constructor's list
  };
  std::vector<std::string> stops_;
  std::vector<Pattern> pats_;
  std::string held_;
  bool include_ = false;
  int stop_index_ = -1;
};

// Why a sequence finishes after sampling `token` as its `num_generated`-th output token (1-based count
// including it), before any stop-string check. A stop token wins over the length limit when both apply,
// since the model did end there. The engine maps Eos and StopToken to finish_reason "stop" (stop_reason:
// the token id for StopToken, none for Eos, as vLLM) and Length to "length".
enum class TokenStop { None, Eos, StopToken, Length };
TokenStop check_token_stop(const SamplingParams& params, int32_t token, int64_t num_generated,
                           std::span<const int32_t> eos_token_ids);
const char* finish_reason_of(TokenStop s);  // "stop", "length", or nullptr for None

}  // namespace dsv4
