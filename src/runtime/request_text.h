// A request's generated text, the one place that renders tokens to text and applies stop strings:
// incremental detokenization (never a partial UTF-8 character) and stop strings (matched across token
// boundaries, never emitted in part). Two uses:
//   - raw text (the engine's RequestOutput::text, the server's /v1/completions): the stop strings watch all
//     of it;
//   - chat output (`TextOptions::chat`): the text is split by the DeepSeek-V4 output parser into reasoning,
//     content and tool calls, and stop strings watch the content channel only: a stop string must not fire
//     inside reasoning or a tool-call block, and only the parser knows where those are.
// Special tokens are kept in chat text because the parser needs `</think>` and the DSML markers; the token
// that stops the sequence (EOS or a stop token id) is not rendered, as in vLLM.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "runtime/stop_matcher.h"
#include "tokenizer/dsml_parser.h"
#include "tokenizer/incremental_detokenizer.h"

namespace dsv4 {

struct TextOptions {
  bool skip_special_tokens = false;  // raw text only
  std::optional<ThinkingMode> chat;  // set: parse the output (reasoning / content / tool calls)
  bool tool_calls = true;            // chat: tool-call blocks become ToolCall events (false: their text is content)
  uint64_t tool_call_id_seed = 0;    // 0: random call ids
};

class RequestText {
 public:
  RequestText(const Tokenizer& tok, const SamplingParams& params, TextOptions opt = {});

  // Raw text that may be sent after `token`; `stop_token` = the token ends the sequence and is not rendered.
  std::string add(int32_t token, bool stop_token);
  // End of generation: what was held back (an incomplete character, a possible stop-string prefix).
  std::string finish();

  // The same as parser events (OutputEvent; raw text comes as Content). Content has passed the stop strings;
  // once one fires nothing more comes. Ids the tokenizer lacks render as U+FFFD.
  void add(int32_t token, bool stop_token, std::vector<OutputEvent>& out);
  void finish(std::vector<OutputEvent>& out);

  bool stopped() const { return stops_.stopped(); }
  const std::string& stop_string() const { return stops_.stop_string(); }

 private:
  void feed(std::string_view text, std::vector<OutputEvent>& out);
  void route(std::vector<OutputEvent>& pe, std::vector<OutputEvent>& out);
  void content(std::string_view text, std::vector<OutputEvent>& out);
  void release_held(std::vector<OutputEvent>& out);  // a tool call starts: held content was no stop string

  IncrementalDetokenizer detok_;
  std::vector<std::string> stop_list_;
  bool include_stop_;
  StopMatcher stops_;
  TextOptions opt_;
  std::unique_ptr<StreamingOutputParser> parser_;
};

}  // namespace dsv4
