// DeepSeek-V4 prompt encoding: a C++ port of DeepSeek's `encoding/encoding_dsv4.py` (MIT, © DeepSeek),
// spec §6.2. Byte-exact against the four golden pairs in ../shared/fixtures/encoding/.
//
// Messages are OpenAI-style JSON objects: role (system | user | assistant | tool | developer |
// latest_reminder), content (string, null, or a list of {"type": "text", "text": ...} parts), and per role
// reasoning_content, tool_calls ([{id, type, function: {name, arguments}}], arguments a JSON string or an
// object), tool_call_id, tools ([{type, function}]) and response_format (system/developer), task (action |
// query | authority | domain | title | read_url), wo_eos.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace dsv4 {

enum class ThinkingMode { Chat, Thinking };
enum class ReasoningEffort { None, High, Max };

struct ChatEncodeOptions {
  ThinkingMode thinking_mode = ThinkingMode::Chat;
  ReasoningEffort reasoning_effort = ReasoningEffort::None;  // Max adds the fixed "Reasoning Effort" preamble
  bool drop_thinking = true;  // drop reasoning of turns before the last user message (forced off with tools)
  bool add_bos = true;        // BOS when there is no context
};

// encode_messages(messages, thinking_mode, context, drop_thinking, add_default_bos_token, reasoning_effort).
// `context`: earlier messages (a JSON array, or null) whose encoding the caller already has; they shape how
// `messages` render but are not rendered. Throws dsv4::Error where the Python asserts.
std::string encode_chat_messages(const nlohmann::ordered_json& messages, const ChatEncodeOptions& options,
                                 const nlohmann::ordered_json& context = nullptr);

// A whole request, as the golden inputs and `dsv4 encode-chat` take it: either a messages array, or an
// object {"messages": [...], "tools": [...], "response_format": {...}, "thinking_mode": "chat"|"thinking",
// "thinking": true|false|{"type": "enabled"|"disabled"}, "reasoning_effort": "high"|"max"|null,
// "drop_thinking": bool}. Top-level tools and response_format go on the first message when it is a system
// message without its own, else on a new empty system message put first. Fields present in the request
// override `defaults`.
struct ChatRequest {
  nlohmann::ordered_json messages;
  ChatEncodeOptions options;
};
ChatRequest parse_chat_request(const nlohmann::ordered_json& request, const ChatEncodeOptions& defaults = {});
std::string encode_chat_request(const nlohmann::ordered_json& request, const ChatEncodeOptions& defaults = {});

ThinkingMode parse_thinking_mode(const std::string& s);        // "chat" | "thinking"
ReasoningEffort parse_reasoning_effort(const std::string& s);  // "" | "none" | "high" | "max"

}  // namespace dsv4
