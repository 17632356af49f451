// A request's generated text as the engine streams it: incremental detokenization (never a partial UTF-8
// character) and stop strings (matched across token boundaries, never emitted in part). Special tokens are
// kept in the text because the output parsers (reasoning `</think>`, DSML tool calls) need them; the token
// that stops the sequence (EOS or a stop token id) is not rendered, as in vLLM.
#pragma once
#include <string>

#include "runtime/sampler.h"
#include "runtime/stop_matcher.h"
#include "tokenizer/incremental_detokenizer.h"

namespace dsv4 {

class RequestText {
 public:
  RequestText(const Tokenizer& tok, const SamplingParams& params)
      : detok_(tok, false), stops_(params.stop, params.include_stop_str_in_output) {}

  // Text that may be sent after `token`; `stop_token` = the token ends the sequence and is not rendered.
  std::string add(int32_t token, bool stop_token) {
    if (stops_.stopped()) return {};
    std::string piece;
    if (!stop_token) detok_.push(token, piece);
    return stops_.feed(piece);
  }
  // End of generation: what was held back (an incomplete character, a possible stop-string prefix).
  std::string finish() {
    if (stops_.stopped()) return {};
    std::string out = stops_.feed(detok_.finish());
    return out + stops_.flush();
  }
  bool stopped() const { return stops_.stopped(); }
  const std::string& stop_string() const { return stops_.stop_string(); }

 private:
  IncrementalDetokenizer detok_;
  StopMatcher stops_;
};

}  // namespace dsv4
