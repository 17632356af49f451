#include "tokenizer/chat_encoding.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "tokenizer/python_json.h"

namespace dsv4 {

namespace {

using json = nlohmann::ordered_json;

constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
constexpr const char* kEos = "<｜end▁of▁sentence｜>";
constexpr const char* kThinkStart = "<think>";
constexpr const char* kThinkEnd = "</think>";
constexpr const char* kUser = "<｜User｜>";
constexpr const char* kAssistant = "<｜Assistant｜>";
constexpr const char* kLatestReminder = "<｜latest_reminder｜>";

// The fixed texts of encoding_dsv4.py (MIT, © DeepSeek), with its placeholders filled in.
constexpr const char* kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n";

constexpr const char* kToolsHead = R"(## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a "<｜DSML｜tool_calls>" block like the following:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning inside <think>...</think> BEFORE any tool calls or final response.

Otherwise, output directly after </think> with tool calls or final response.

### Available Tool Schemas

)";
constexpr const char* kToolsTail =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";
constexpr const char* kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

const std::map<std::string, std::string>& task_tokens() {
  static const std::map<std::string, std::string> m = {
      {"action", "<｜action｜>"}, {"query", "<｜query｜>"}, {"authority", "<｜authority｜>"},
      {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"}, {"read_url", "<｜read_url｜>"}};
  return m;
}

// Python truthiness of a JSON value (None, "", [], {}, 0 and False are false).
bool truthy(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return false;
    case json::value_t::boolean: return v.get<bool>();
    case json::value_t::string: return !v.get_ref<const std::string&>().empty();
    case json::value_t::array:
    case json::value_t::object: return !v.empty();
    case json::value_t::number_integer: return v.get<int64_t>() != 0;
    case json::value_t::number_unsigned: return v.get<uint64_t>() != 0;
    case json::value_t::number_float: return v.get<double>() != 0;
    default: return false;
  }
}

const json& get(const json& msg, const char* key) {  // msg.get(key) with None for a missing key
  static const json null_value;
  if (!msg.is_object()) return null_value;
  auto it = msg.find(key);
  return it == msg.end() ? null_value : *it;
}

std::string role_of(const json& msg) {
  const json& r = get(msg, "role");
  return r.is_string() ? r.get<std::string>() : std::string();
}

// Content as text: a string, nothing for null, or a list of parts joined as the reference joins tool-result
// parts (text parts by a blank line, other parts as "[Unsupported TYPE]").
std::string text_of(const json& content) {
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string s;
    bool first = true;
    for (const auto& part : content) {
      if (!first) s += "\n\n";
      first = false;
      if (part.is_string()) {
        s += part.get<std::string>();
      } else if (part.is_object() && get(part, "type") == "text") {
        s += text_of(get(part, "text"));
      } else {
        const json& t = get(part, "type");
        s += "[Unsupported " + (t.is_string() ? t.get<std::string>() : python_json_dumps(t)) + "]";
      }
    }
    return s;
  }
  return python_json_dumps(content);
}

std::string render_tools(const json& tools) {
  std::string s = kToolsHead;
  bool first = true;
  for (const auto& t : tools) {
    if (!first) s += '\n';
    first = false;
    python_json_dump(t.is_object() && t.contains("function") ? t.at("function") : t, s);
  }
  s += kToolsTail;
  return s;
}

std::string encode_arguments_to_dsml(const json& arguments) {
  json args;
  if (arguments.is_string()) {
    // As the reference: arguments that are not a JSON object become one string parameter "arguments".
    try {
      args = json::parse(arguments.get<std::string>());
    } catch (const json::exception&) {
      args = nullptr;
    }
    if (!args.is_object()) args = json{{"arguments", arguments}};
  } else if (arguments.is_object()) {
    args = arguments;
  } else {
    args = json{{"arguments", arguments}};
  }
  std::string s;
  bool first = true;
  for (auto it = args.begin(); it != args.end(); ++it) {
    if (!first) s += '\n';
    first = false;
    const bool is_str = it.value().is_string();
    s += "<｜DSML｜parameter name=\"" + it.key() + "\" string=\"" + (is_str ? "true" : "false") + "\">";
    s += is_str ? it.value().get<std::string>() : python_json_dumps(it.value());
    s += "</｜DSML｜parameter>";
  }
  return s;
}

int find_last_user_index(const json& messages) {
  for (int i = int(messages.size()) - 1; i >= 0; --i) {
    const std::string r = role_of(messages[i]);
    if (r == "user" || r == "developer") return i;
  }
  return -1;
}

std::string render_message(size_t index, const json& messages, ThinkingMode mode, bool drop_thinking,
                           ReasoningEffort effort) {
  const json& msg = messages[index];
  const int last_user_idx = find_last_user_index(messages);
  const std::string role = role_of(msg);
  const json& content = get(msg, "content");
  const json& tools = get(msg, "tools");
  const json& response_format = get(msg, "response_format");
  const json& tool_calls = get(msg, "tool_calls");
  const bool thinking = mode == ThinkingMode::Thinking;
  std::string prompt;

  if (index == 0 && thinking && effort == ReasoningEffort::Max) prompt += kReasoningEffortMax;

  if (role == "system" || role == "developer") {
    if (role == "developer") {
      if (!truthy(content)) fail("chat encoding: a developer message needs content");
      prompt += kUser;
    }
    prompt += text_of(content);
    if (truthy(tools)) prompt += "\n\n" + render_tools(tools);
    if (truthy(response_format)) prompt += "\n\n" + std::string(kResponseFormatHead) + python_json_dumps(response_format);
  } else if (role == "user") {
    prompt += kUser;
    const json& blocks = get(msg, "content_blocks");
    if (truthy(blocks)) {
      bool first = true;
      for (const auto& b : blocks) {
        if (!first) prompt += "\n\n";
        first = false;
        const json& type = get(b, "type");
        if (type == "text") {
          prompt += text_of(get(b, "text"));
        } else if (type == "tool_result") {
          prompt += "<tool_result>" + text_of(get(b, "content")) + "</tool_result>";
        } else {
          prompt += "[Unsupported " + (type.is_string() ? type.get<std::string>() : python_json_dumps(type)) + "]";
        }
      }
    } else {
      prompt += text_of(content);
    }
  } else if (role == "latest_reminder") {
    prompt += kLatestReminder + text_of(content);
  } else if (role == "assistant") {
    std::string tc_content;
    if (truthy(tool_calls)) {
      tc_content = "\n\n<｜DSML｜tool_calls>\n";
      bool first = true;
      for (const auto& tc : tool_calls) {
        const json& fn = get(tc, "function");
        const json& name = get(fn, "name");
        if (!first) tc_content += '\n';
        first = false;
        tc_content += "<｜DSML｜invoke name=\"" + (name.is_string() ? name.get<std::string>() : python_json_dumps(name)) +
                      "\">\n" + encode_arguments_to_dsml(get(fn, "arguments")) + "\n</｜DSML｜invoke>";
      }
      tc_content += "\n</｜DSML｜tool_calls>";
    }
    // After a message with a task, the assistant turn is the task's output: no thinking part.
    const bool prev_has_task = index >= 1 && !get(messages[index - 1], "task").is_null();
    if (thinking && !prev_has_task && (!drop_thinking || int(index) > last_user_idx))
      prompt += text_of(get(msg, "reasoning_content")) + kThinkEnd;
    prompt += text_of(content) + tc_content;
    if (!truthy(get(msg, "wo_eos"))) prompt += kEos;
  } else if (role == "tool") {
    fail("chat encoding: tool messages must be merged into user messages first");
  } else {
    fail("chat encoding: unknown role '{}'", role);
  }

  // Transition to the next turn, only when the assistant (or a reminder) comes next or this is the end.
  if (index + 1 < messages.size()) {
    const std::string next = role_of(messages[index + 1]);
    if (next != "assistant" && next != "latest_reminder") return prompt;
  }
  const json& task = get(msg, "task");
  if (!task.is_null()) {
    auto it = task.is_string() ? task_tokens().find(task.get<std::string>()) : task_tokens().end();
    if (it == task_tokens().end())
      fail("chat encoding: invalid task {} (valid: action, query, authority, domain, title, read_url)",
           python_json_dumps(task));
    if (it->first != "action") {
      prompt += it->second;
    } else {
      prompt += kAssistant;
      prompt += thinking ? kThinkStart : kThinkEnd;
      prompt += it->second;
    }
  } else if (role == "user" || role == "developer") {
    prompt += kAssistant;
    const bool think = thinking && (!drop_thinking || int(index) >= last_user_idx);
    prompt += think ? kThinkStart : kThinkEnd;
  }
  return prompt;
}

// DeepSeek-V4 has no tool role: tool results become tool_result blocks of a user message, merged with the
// tool results and user text that follow.
json merge_tool_messages(const json& messages) {
  json merged = json::array();
  for (const auto& m : messages) {
    const std::string role = role_of(m);
    if (role == "tool") {
      json block = {{"type", "tool_result"},
                    {"tool_use_id", get(m, "tool_call_id").is_null() ? json("") : get(m, "tool_call_id")},
                    {"content", m.contains("content") ? m.at("content") : json("")}};
      if (!merged.empty() && role_of(merged.back()) == "user" && merged.back().contains("content_blocks")) {
        merged.back()["content_blocks"].push_back(std::move(block));
      } else {
        merged.push_back(json{{"role", "user"}, {"content_blocks", json::array({std::move(block)})}});
      }
    } else if (role == "user") {
      const json text = m.contains("content") ? json(text_of(m.at("content"))) : json("");
      json block = {{"type", "text"}, {"text", text}};
      if (!merged.empty() && role_of(merged.back()) == "user" && merged.back().contains("content_blocks") &&
          get(merged.back(), "task").is_null()) {
        merged.back()["content_blocks"].push_back(std::move(block));
      } else {
        json nm = {{"role", "user"}, {"content", text}, {"content_blocks", json::array({std::move(block)})}};
        for (const char* key : {"task", "wo_eos", "mask"})
          if (m.contains(key)) nm[key] = m.at(key);
        merged.push_back(std::move(nm));
      }
    } else {
      merged.push_back(m);
    }
  }
  return merged;
}

// Tool results follow the order of the calls in the latest assistant message with tool calls.
void sort_tool_results_by_call_order(json& messages) {
  std::map<std::string, int> order;
  for (auto& m : messages) {
    const std::string role = role_of(m);
    if (role == "assistant" && truthy(get(m, "tool_calls"))) {
      order.clear();
      int idx = 0;
      for (const auto& tc : m.at("tool_calls")) {
        json id = get(tc, "id");
        if (!truthy(id)) id = get(get(tc, "function"), "id");
        if (truthy(id) && id.is_string()) order[id.get<std::string>()] = idx;
        ++idx;
      }
    } else if (role == "user" && truthy(get(m, "content_blocks"))) {
      json& blocks = m["content_blocks"];
      std::vector<json> tool_blocks;
      for (const auto& b : blocks)
        if (get(b, "type") == "tool_result") tool_blocks.push_back(b);
      if (tool_blocks.size() > 1 && !order.empty()) {
        auto key = [&](const json& b) {
          const json& id = get(b, "tool_use_id");
          auto it = id.is_string() ? order.find(id.get<std::string>()) : order.end();
          return it == order.end() ? 0 : it->second;
        };
        std::stable_sort(tool_blocks.begin(), tool_blocks.end(),
                         [&](const json& a, const json& b) { return key(a) < key(b); });
        size_t k = 0;
        for (auto& b : blocks)
          if (get(b, "type") == "tool_result") b = tool_blocks[k++];
      }
    }
  }
}

// Before the last user message: assistant reasoning is removed and developer messages are dropped.
json drop_thinking_messages(const json& messages) {
  const int last_user_idx = find_last_user_index(messages);
  json result = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string role = role_of(messages[i]);
    if (role == "user" || role == "system" || role == "tool" || role == "latest_reminder" ||
        role == "direct_search_results" || int(i) >= last_user_idx) {
      result.push_back(messages[i]);
    } else if (role == "assistant") {
      json m = messages[i];
      m.erase("reasoning_content");
      result.push_back(std::move(m));
    }
  }
  return result;
}

void check_messages(const json& messages, const char* what) {
  if (!messages.is_array()) fail("chat encoding: {} must be a JSON array of messages", what);
  for (size_t i = 0; i < messages.size(); ++i)
    if (!messages[i].is_object()) fail("chat encoding: {}[{}] is not a JSON object", what, i);
}

}  // namespace

std::string encode_chat_messages(const json& messages_in, const ChatEncodeOptions& opt, const json& context_in) {
  check_messages(messages_in, "messages");
  const json context_raw = context_in.is_null() ? json::array() : context_in;
  check_messages(context_raw, "context");

  json combined = context_raw;
  for (auto& m : merge_tool_messages(messages_in)) combined.push_back(std::move(m));
  sort_tool_results_by_call_order(combined);
  json messages = json::array();
  for (size_t i = context_raw.size(); i < combined.size(); ++i) messages.push_back(std::move(combined[i]));
  json context = merge_tool_messages(context_raw);
  sort_tool_results_by_call_order(context);

  json full = context;
  for (const auto& m : messages) full.push_back(m);

  std::string prompt = opt.add_bos && context.empty() ? kBos : "";
  bool drop = opt.drop_thinking;
  for (const auto& m : full)
    if (truthy(get(m, "tools"))) drop = false;

  size_t num_to_render, context_len;
  if (opt.thinking_mode == ThinkingMode::Thinking && drop) {
    full = drop_thinking_messages(full);
    num_to_render = full.size() - drop_thinking_messages(context).size();
    context_len = full.size() - num_to_render;
  } else {
    num_to_render = messages.size();
    context_len = context.size();
  }
  for (size_t i = 0; i < num_to_render; ++i)
    prompt += render_message(i + context_len, full, opt.thinking_mode, drop, opt.reasoning_effort);
  return prompt;
}

ThinkingMode parse_thinking_mode(const std::string& s) {
  if (s == "chat") return ThinkingMode::Chat;
  if (s == "thinking") return ThinkingMode::Thinking;
  fail("invalid thinking mode '{}' (chat or thinking)", s);
}

ReasoningEffort parse_reasoning_effort(const std::string& s) {
  if (s.empty() || s == "none") return ReasoningEffort::None;
  if (s == "high") return ReasoningEffort::High;
  if (s == "max") return ReasoningEffort::Max;
  fail("invalid reasoning effort '{}' (high or max)", s);
}

ChatRequest parse_chat_request(const json& request, const ChatEncodeOptions& defaults) {
  ChatRequest r;
  r.options = defaults;
  if (request.is_array()) {
    r.messages = request;
    check_messages(r.messages, "messages");
    return r;
  }
  if (!request.is_object() || !request.contains("messages"))
    fail("chat request must be a messages array or an object with \"messages\"");
  r.messages = request.at("messages");
  check_messages(r.messages, "messages");

  if (auto it = request.find("thinking_mode"); it != request.end() && !it->is_null()) {
    if (!it->is_string()) fail("chat request: thinking_mode must be a string");
    r.options.thinking_mode = parse_thinking_mode(it->get<std::string>());
  }
  if (auto it = request.find("thinking"); it != request.end() && !it->is_null()) {
    bool on;
    if (it->is_boolean()) on = it->get<bool>();
    else if (it->is_object() && get(*it, "type").is_string()) on = get(*it, "type") == "enabled";
    else fail("chat request: thinking must be a boolean or {{\"type\": \"enabled\"|\"disabled\"}}");
    r.options.thinking_mode = on ? ThinkingMode::Thinking : ThinkingMode::Chat;
  }
  if (auto it = request.find("reasoning_effort"); it != request.end()) {
    if (it->is_null()) r.options.reasoning_effort = ReasoningEffort::None;
    else if (it->is_string()) r.options.reasoning_effort = parse_reasoning_effort(it->get<std::string>());
    else fail("chat request: reasoning_effort must be a string or null");
  }
  if (auto it = request.find("drop_thinking"); it != request.end() && !it->is_null()) {
    if (!it->is_boolean()) fail("chat request: drop_thinking must be a boolean");
    r.options.drop_thinking = it->get<bool>();
  }

  // Top-level tools / response_format belong to the system message.
  for (const char* key : {"tools", "response_format"}) {
    const json& v = get(request, key);
    if (!truthy(v)) continue;
    if (std::string(key) == "tools" && !v.is_array()) fail("chat request: tools must be an array");
    if (r.messages.empty() || role_of(r.messages[0]) != "system" || r.messages[0].contains(key))
      r.messages.insert(r.messages.begin(), json{{"role", "system"}, {"content", ""}});
    r.messages[0][key] = v;
  }
  return r;
}

std::string encode_chat_request(const json& request, const ChatEncodeOptions& defaults) {
  const ChatRequest r = parse_chat_request(request, defaults);
  return encode_chat_messages(r.messages, r.options);
}

}  // namespace dsv4
