// One API request's generation: submits its prompts (x n choices) to the generator, renders what comes back
// with RequestText (runtime/request_text.h: the one place for detokenization, the reasoning / content /
// tool-call split and stop strings), and turns it into ordered events per choice that the OpenAI, Anthropic
// and Responses shapers render.
//
// Stop strings go to RequestText's content channel, not to the generator (it gets none): a stop string must
// not fire inside reasoning or inside a tool-call block. When one fires, the engine request is aborted at
// once. Stop token ids do go to the engine (they are tokens, not text).
#pragma once
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/request_text.h"
#include "server/api_error.h"
#include "server/server_context.h"

namespace dsv4::server {

struct GenEvent {
  // ToolCallStart (id, name), then ToolCallArguments deltas as the call is generated, then ToolCall (the
  // complete call; its arguments == the deltas concatenated). Only tool-enabled chat requests get them.
  enum class Kind { Reasoning, Content, ToolCallStart, ToolCallArguments, ToolCall, Finished };
  Kind kind = Kind::Content;
  int choice = 0;
  std::string text;     // Reasoning / Content / ToolCallArguments delta
  ParsedToolCall call;  // ToolCallStart, ToolCall
};

struct ChoiceResult {
  std::string reasoning, content;
  std::vector<ParsedToolCall> tool_calls;
  std::vector<TokenLogprobs> logprobs;  // every generated token's, when requested
  std::string finish_reason;            // stop | length | tool_calls | abort | error ("" while running)
  Json stop_reason;                     // the matched stop string, the stop token id, or null
  std::string error;
  int64_t generated = 0;
  int64_t reasoning_tokens = 0;  // generated tokens before the reasoning ended (thinking mode)
  int prompt_index = 0;
};

struct GenerationRequest {
  std::vector<std::vector<int32_t>> prompts;  // one or more (completions accept a list)
  SamplingParams params;                      // params.stop is applied by the server
  int n = 1;                                  // choices per prompt; seeds seed, seed+1, ...
  bool chat = false;                          // parse output (reasoning, content, tool calls)
  ThinkingMode thinking = ThinkingMode::Chat;
  bool tools = false;               // tool calls become ToolCall events; otherwise their text is content
  bool skip_special_tokens = true;  // raw mode only: chat output keeps them for the parser
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
};

class Generation {
 public:
  // Submits every choice; a request the generator rejects is a 400 (nothing stays submitted).
  Generation(ServerContext& ctx, GenerationRequest req);
  ~Generation();  // aborts what is still running (client gone, shutdown)
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  bool done() const { return active_ == 0; }
  // Waits up to `wait` for output and appends the resulting events, Finished last for a choice that ended.
  void poll(std::vector<GenEvent>& events, std::chrono::milliseconds wait);
  void abort_all();  // finishes every running choice as "abort" (no events)

  int num_choices() const { return int(choices_.size()); }
  const ChoiceResult& result(int i) const;
  // Logprobs of the tokens received since the previous call (streaming attaches them to the next chunk).
  std::vector<TokenLogprobs> take_logprobs(int i);
  int64_t prompt_tokens() const;  // summed over prompts (each counted once, not per choice)
  int64_t cached_tokens() const;
  int64_t completion_tokens() const;  // summed over choices
  int64_t reasoning_tokens() const;   // summed over choices
  const std::vector<int32_t>& prompt(int i) const { return req_.prompts[size_t(i)]; }

 private:
  struct Choice;
  void process(Choice& c, RequestOutput& o, std::vector<GenEvent>& events);
  void emit(Choice& c, std::vector<OutputEvent>& te, std::vector<GenEvent>& events);
  void finish(Choice& c, const std::string& reason, Json stop_reason, std::vector<GenEvent>& events);

  ServerContext& ctx_;
  GenerationRequest req_;
  SamplingParams text_params_;  // what RequestText needs (stop strings); the generator gets none
  std::vector<std::unique_ptr<Choice>> choices_;
  int active_ = 0;
  size_t rr_ = 0;  // round-robin start when several choices run
};

}  // namespace dsv4::server
