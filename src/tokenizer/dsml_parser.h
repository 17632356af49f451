// Parsing DeepSeek-V4 output (spec §6.2): reasoning up to `</think>` (thinking mode), then content, then an
// optional DSML tool-call block starting at `\n\n<｜DSML｜tool_calls`:
//
//   <｜DSML｜tool_calls>
//   <｜DSML｜invoke name="NAME">
//   <｜DSML｜parameter name="K" string="true|false">VALUE</｜DSML｜parameter>
//   </｜DSML｜invoke>
//   </｜DSML｜tool_calls>
//
// Tool calls come out OpenAI-style, `arguments` a JSON object text built as the reference's
// decode_dsml_to_arguments does (string="true" values JSON-encoded, others inserted as written; a value that
// is not valid JSON is encoded as a string). The streaming parser emits text as soon as it cannot be the start
// of a `</think>` or `\n\n<｜DSML｜tool_calls` marker, and each tool call when its `</｜DSML｜invoke>` line is
// complete. Before that it previews the call as it is generated (ToolCallStart once the name is known, then
// ToolCallArguments deltas: a string parameter's value streams as it arrives, other values when their
// parameter closes), so clients see arguments grow; the deltas of a call concatenated are exactly its final
// `arguments`, and never contain markup. A call whose block later breaks the grammar was previewed but is
// not emitted as ToolCall (its text goes to content, as below). Nothing is ever dropped: a block that breaks the grammar is returned as content from the point
// after the last complete call (and the rest of the output is content too); a block cut off by the end of
// output is returned as content and flagged as truncated. Feed decoded text without the EOS token.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat_encoding.h"

namespace dsv4 {

struct ParsedToolCall {
  std::string id;         // "call_" + 24 random characters
  std::string name;
  std::string arguments;  // JSON object text
};

struct OutputEvent {
  enum class Kind {
    Reasoning,     // text: reasoning delta
    ReasoningEnd,  // the `</think>` marker was consumed
    Content,       // text: content delta
    ToolCall,      // call: one complete tool call
    ToolCallsEnd,  // the closing `</｜DSML｜tool_calls>` was consumed
    // Previews (raw is empty: the text stays accounted for by the ToolCall that follows).
    ToolCallStart,      // call: id and name of the call being generated
    ToolCallArguments,  // text: the next piece of that call's arguments JSON
  };
  Kind kind = Kind::Content;
  std::string text;
  ParsedToolCall call;
  std::string raw;  // the exact input this event accounts for; all events' raw concatenated == all input
};

struct OutputSummary {
  bool reasoning_ended = false;       // thinking mode: `</think>` was seen
  int tool_calls = 0;                 // complete calls emitted
  bool tool_call_truncated = false;   // the output ended inside a tool-call block (e.g. max_tokens)
  bool tool_call_malformed = false;   // a tool-call block broke the grammar; its text went to content
};

class StreamingOutputParser {
 public:
  // `id_seed` 0 draws tool-call ids from std::random_device; another value makes them deterministic.
  explicit StreamingOutputParser(ThinkingMode mode, uint64_t id_seed = 0);

  void feed(std::string_view text, std::vector<OutputEvent>& events);
  void finish(std::vector<OutputEvent>& events);  // end of output: flushes held-back text
  const OutputSummary& summary() const { return summary_; }
  size_t held_back() const { return buf_.size(); }  // bytes received but not yet accounted for by an event

 private:
  enum class State { Reasoning, Content, Block, Passthrough };
  enum class Block { Open, Header, Param, AfterParam, InvokeClose, Next };
  void process(std::vector<OutputEvent>& events);
  bool step_block(std::vector<OutputEvent>& events);  // false: needs more input
  void emit_text(OutputEvent::Kind kind, size_t n, std::vector<OutputEvent>& events);
  void malformed(std::vector<OutputEvent>& events);
  std::string new_call_id();

  State state_;
  Block block_ = Block::Open;
  std::string buf_;  // text received and not yet emitted
  size_t cur_ = 0;   // Block state: how much of buf_ has been checked against the grammar
  void preview_param(std::string_view rest, std::vector<OutputEvent>& events);  // Param state, value incomplete
  void preview_send(const std::string& upto, std::vector<OutputEvent>& events);
  ParsedToolCall call_;
  std::vector<std::string> param_names_;
  size_t previewed_ = 0;  // bytes of the current call's arguments sent as ToolCallArguments
  OutputSummary summary_;
  std::mt19937_64 rng_;
};

struct ParsedOutput {
  std::string reasoning, content;
  std::vector<ParsedToolCall> tool_calls;
  OutputSummary summary;
};

// Whole-text parsing: the streaming parser fed everything at once (same results as token by token).
ParsedOutput parse_output(std::string_view text, ThinkingMode mode, uint64_t id_seed = 0);

}  // namespace dsv4
