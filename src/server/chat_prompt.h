// Renders OpenAI and Anthropic chat requests into DeepSeek-V4 prompt text with the tokenizer's chat encoder.
// Messages are rebuilt field by field (role, content, reasoning_content, tool_calls, tool_call_id) so a
// client cannot reach encoder-internal fields (task, wo_eos, content_blocks). Errors are 400 ApiErrors.
#pragma once
#include <optional>
#include <string>

#include "runtime/grammar/structured.h"
#include "server/api_error.h"
#include "tokenizer/chat_encoding.h"

namespace dsv4::server {

struct ChatPrompt {
  std::string text;
  ThinkingMode thinking = ThinkingMode::Chat;
  bool tools = false;  // tools were rendered: parse tool calls out of the output
  // Structured output to enforce (response_format, tool_choice required / named, and for tool_choice auto
  // the DSML structure of calls); compiled by the API handler (server/structured_output.h).
  std::optional<grammar::ConstraintSpec> constraint;
  std::string constraint_param;  // the request field it comes from (for 400s)
};

// OpenAI chat request: messages (developer counts as system), tools, tool_choice, response_format, and the
// thinking switches: chat_template_kwargs {thinking | enable_thinking | thinking_mode, reasoning_effort},
// top-level thinking ({"type": "enabled"} or a bool) and reasoning_effort.
ChatPrompt openai_chat_prompt(const Json& body, const ChatEncodeOptions& defaults);

// response_format ({type: text | json_object | json_schema, json_schema: {name, schema, strict}}) as a
// constraint (none for text); shape errors are 400s. Schemas are compiled (and refused) later.
std::optional<grammar::ConstraintSpec> response_format_constraint(const Json* response_format);

// Anthropic Messages request converted to OpenAI-shaped messages (system first, system turns where they stand
// in messages, tool_result blocks as tool messages, thinking blocks as reasoning_content, tool_use blocks as
// tool_calls) plus tools and thinking.
Json anthropic_to_openai(const Json& body);
ChatPrompt anthropic_chat_prompt(const Json& body, const ChatEncodeOptions& defaults);

ReasoningEffort parse_effort_field(const Json& v, const char* field);  // none | low..high -> High | max/xhigh
// An explicit thinking switch (if any) and a reasoning effort field (if present) onto `opts`: a non-none
// effort without an explicit switch turns thinking on.
void apply_thinking(std::optional<bool> thinking, const Json* effort, const char* effort_field, ChatEncodeOptions& opts);

}  // namespace dsv4::server
