#include "server/chat_prompt.h"

#include <fmt/format.h>

#include "core/error.h"
#include "server/json_fields.h"

namespace dsv4::server {

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

// A text-only model must refuse images, audio and parts it does not know rather than drop them silently.
[[noreturn]] void unsupported_part(const std::string& where, const std::string& type) {
  bad(where, fmt::format("'{}': content of type '{}' is not supported (this model reads text only)", where, type));
}

// Content: a string, null, or an array of text parts (objects with type "text" and a string "text").
Json check_content(const Json& c, const std::string& where) {
  if (c.is_null() || c.is_string()) return c;
  if (!c.is_array()) bad(where, fmt::format("'{}' must be a string, null or an array of content parts", where));
  for (size_t i = 0; i < c.size(); ++i) {
    const Json& part = c[i];
    const std::string w = fmt::format("{}[{}]", where, i);
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      bad(w, fmt::format("'{}' must be an object with a string 'type'", w));
    if (part["type"] != "text") unsupported_part(w, part["type"].get<std::string>());
    if (!(part.contains("text") && part["text"].is_string()))
      bad(w, fmt::format("'{}': a text part needs a string 'text'", w));
  }
  return c;
}

Json check_tool_calls(const Json& tcs, const std::string& where) {
  if (!tcs.is_array()) bad(where, fmt::format("'{}' must be an array", where));
  Json out = Json::array();
  for (size_t i = 0; i < tcs.size(); ++i) {
    const Json& tc = tcs[i];
    const std::string w = fmt::format("{}[{}]", where, i);
    const Json* fn = tc.is_object() ? find_field(tc, "function") : nullptr;
    if (!fn || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string())
      bad(w, fmt::format("'{}' needs a function with a string name", w));
    Json args = fn->contains("arguments") ? (*fn)["arguments"] : Json("{}");
    if (!args.is_string() && !args.is_object()) bad(w, fmt::format("'{}.function.arguments' must be a string", w));
    Json call = {{"type", "function"}, {"function", {{"name", (*fn)["name"]}, {"arguments", std::move(args)}}}};
    if (tc.contains("id") && tc["id"].is_string()) call["id"] = tc["id"];
    out.push_back(std::move(call));
  }
  return out;
}

Json check_tools(const Json& tools) {
  Json out = Json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& t = tools[i];
    const std::string w = fmt::format("tools[{}]", i);
    if (!t.is_object() || nested_string(t, "type", w, "function") != "function")
      bad(w, fmt::format("'{}' must be an object with type \"function\"", w));
    const Json* fn = find_field(t, "function");
    if (!fn || !fn->is_object() || !fn->contains("name") || !(*fn)["name"].is_string())
      bad(w, fmt::format("'{}.function' needs a string name", w));
    out.push_back(Json{{"type", "function"}, {"function", *fn}});
  }
  return out;
}

// Applies tool_choice: "none" drops the tools; a named function keeps only that one. "required" renders
// the tools like "auto"; the grammar (tool_constraint) forces the call. `mode` gets what was chosen.
Json apply_tool_choice(Json tools, const Json* choice, bool anthropic, std::string* mode = nullptr) {
  if (mode) *mode = "auto";
  if (!choice) return tools;
  std::string type, name;
  if (choice->is_string()) {
    type = choice->get<std::string>();
  } else if (choice->is_object()) {
    type = nested_string(*choice, "type", "tool_choice");
    if (anthropic)
      name = nested_string(*choice, "name", "tool_choice");
    else if (const Json* f = get_object(*choice, "function"))
      name = nested_string(*f, "name", "tool_choice.function");
  } else {
    bad("tool_choice", "'tool_choice' must be a string or an object");
  }
  // A choice that demands a tool call cannot be met without tools (vLLM answers 400 as well).
  if (tools.empty() && (type == "required" || type == "any" || type == "function" || type == "tool"))
    bad("tool_choice", fmt::format("tool_choice '{}' needs 'tools', and the request has none", type));
  if (mode) *mode = type == "any" ? "required" : type == "tool" ? "function" : type;
  if (type == "none") return Json::array();
  if (type == "auto" || type == "required" || type == "any") return tools;
  if (type == "function" || type == "tool") {
    Json kept = Json::array();
    for (const auto& t : tools)
      if (t["function"]["name"] == name) kept.push_back(t);
    if (kept.empty()) bad("tool_choice", fmt::format("tool_choice names '{}', which is not among the tools", name));
    return kept;
  }
  bad("tool_choice", fmt::format("unknown tool_choice '{}'", type));
}

ChatPrompt render(Json messages, Json tools, const Json* response_format, const ChatEncodeOptions& opts) {
  Json req = {{"messages", std::move(messages)}};
  if (!tools.empty()) req["tools"] = tools;
  if (response_format) req["response_format"] = *response_format;
  ChatPrompt p;
  try {
    const ChatRequest r = parse_chat_request(req, opts);
    p.text = encode_chat_messages(r.messages, r.options);
    p.thinking = r.options.thinking_mode;
    // The encoder opens the assistant turn only after a user turn; agents (Claude Code) end with a system turn,
    // and the model must still answer rather than continue the system text.
    if (!r.messages.empty() && r.messages.back().value("role", "") == "system")
      p.text += p.thinking == ThinkingMode::Thinking ? "<｜Assistant｜><think>" : "<｜Assistant｜></think>";
  } catch (const Error& e) {
    bad("messages", e.what());
  }
  p.tools = !tools.empty();
  return p;
}

// The tool-call grammar for the kept tools: required / named force a call; auto constrains calls the model
// opens (when enabled).
void tool_constraint(ChatPrompt& p, const Json& tools, const std::string& mode, bool parallel) {
  if (tools.empty()) return;
  grammar::ConstraintSpec spec;
  spec.parallel_calls = parallel;
  spec.kind = grammar::ConstraintSpec::Kind::ToolCalls;
  spec.tool_mode = mode == "required" ? grammar::ConstraintSpec::ToolMode::Required
                   : mode == "function" ? grammar::ConstraintSpec::ToolMode::Named
                                        : grammar::ConstraintSpec::ToolMode::Auto;
  spec.thinking = p.thinking == ThinkingMode::Thinking;
  for (const auto& t : tools) {
    const Json& fn = t["function"];
    spec.tools.push_back({fn["name"].get<std::string>(), fn.contains("parameters") ? fn["parameters"] : Json(nullptr)});
  }
  p.constraint = std::move(spec);
  p.constraint_param = "tools";
}

bool parse_thinking_switch(const Json& v, const char* field) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_object() && v.contains("type") && v["type"].is_string()) {
    const std::string t = v["type"];
    if (t == "enabled" || t == "adaptive") return true;
    if (t == "disabled") return false;
  }
  if (v.is_string() && (v == "thinking" || v == "chat")) return v == "thinking";
  bad(field, fmt::format("'{}' must be a boolean or {{\"type\": \"enabled\" | \"disabled\"}}", field));
}

}  // namespace

ReasoningEffort parse_effort_field(const Json& v, const char* field) {
  if (v.is_null()) return ReasoningEffort::None;
  if (v.is_string()) {
    const std::string s = v;
    if (s == "none" || s.empty()) return ReasoningEffort::None;
    // DeepSeek's API maps low and medium to high, and xhigh to max.
    if (s == "minimal" || s == "low" || s == "medium" || s == "high") return ReasoningEffort::High;
    if (s == "max" || s == "xhigh") return ReasoningEffort::Max;
  }
  bad(field, fmt::format("'{}' must be one of none, low, medium, high, max", field));
}

void apply_thinking(std::optional<bool> thinking, const Json* effort, const char* effort_field, ChatEncodeOptions& opts) {
  if (effort) {
    opts.reasoning_effort = parse_effort_field(*effort, effort_field);
    // Generic clients have no portable thinking switch; asking for any effort is asking for reasoning.
    const bool none = effort->is_null() || (effort->is_string() && (*effort == "none" || *effort == ""));
    if (!thinking && !none) thinking = true;
  }
  if (thinking) opts.thinking_mode = *thinking ? ThinkingMode::Thinking : ThinkingMode::Chat;
}

ChatPrompt openai_chat_prompt(const Json& body, const ChatEncodeOptions& defaults) {
  const Json* msgs = get_array(body, "messages");
  if (!msgs || msgs->empty()) bad("messages", "'messages' must be a non-empty array");
  Json messages = Json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const Json& m = (*msgs)[i];
    const std::string w = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad(w, fmt::format("'{}' must be an object", w));
    auto role = get_string(m, "role");
    if (!role) bad(w, fmt::format("'{}.role' is required", w));
    if (*role == "developer") *role = "system";
    if (*role != "system" && *role != "user" && *role != "assistant" && *role != "tool")
      bad(w, fmt::format("'{}.role' must be system, developer, user, assistant or tool, got '{}'", w, *role));
    Json out = {{"role", *role},
                {"content", check_content(m.contains("content") ? m["content"] : Json(nullptr), w + ".content")}};
    if (*role == "assistant") {
      for (const char* k : {"reasoning_content", "reasoning"})
        if (auto r = get_string(m, k)) {
          out["reasoning_content"] = *r;
          break;
        }
      if (const Json* tc = find_field(m, "tool_calls"); tc && !tc->empty())
        out["tool_calls"] = check_tool_calls(*tc, w + ".tool_calls");
    } else if (*role == "tool") {
      if (auto id = get_string(m, "tool_call_id")) out["tool_call_id"] = *id;
    }
    messages.push_back(std::move(out));
  }

  ChatEncodeOptions opts = defaults;
  const Json* kw = get_object(body, "chat_template_kwargs");
  static const Json kEmpty = Json::object();
  if (!kw) kw = &kEmpty;
  std::optional<bool> thinking;
  for (const auto& [src, key] :
       {std::pair{&body, "thinking"}, {kw, "thinking"}, {kw, "enable_thinking"}, {kw, "thinking_mode"}})
    if (const Json* v = find_field(*src, key)) thinking = parse_thinking_switch(*v, key);
  const Json* effort = nullptr;
  for (const Json* src : {&body, kw})
    if (src->contains("reasoning_effort")) effort = &(*src)["reasoning_effort"];
  apply_thinking(thinking, effort, "reasoning_effort", opts);

  Json tools = Json::array();
  if (const Json* t = get_array(body, "tools")) tools = check_tools(*t);
  std::string mode;
  tools = apply_tool_choice(std::move(tools), find_field(body, "tool_choice"), false, &mode);

  const Json* rf = get_object(body, "response_format");
  std::optional<grammar::ConstraintSpec> rf_spec = response_format_constraint(rf);
  if (!rf_spec) rf = nullptr;
  ChatPrompt p = render(std::move(messages), tools, rf, opts);
  // A forced tool call wins over response_format; otherwise response_format constrains the answer (and a
  // call cannot be made); otherwise calls the model opens follow the tools' schemas.
  if (mode == "required" || mode == "function" || !rf_spec) {
    tool_constraint(p, tools, mode, get_bool(body, "parallel_tool_calls").value_or(true));
  } else {
    rf_spec->thinking = p.thinking == ThinkingMode::Thinking;
    p.constraint = std::move(rf_spec);
    p.constraint_param = "response_format";
  }
  return p;
}

std::optional<grammar::ConstraintSpec> response_format_constraint(const Json* rf) {
  if (!rf) return std::nullopt;
  const std::string type = nested_string(*rf, "type", "response_format");
  if (type != "text" && type != "json_object" && type != "json_schema")
    bad("response_format", "'response_format.type' must be text, json_object or json_schema");
  if (type == "text") return std::nullopt;
  grammar::ConstraintSpec spec;
  if (type == "json_object") return spec;
  spec.kind = grammar::ConstraintSpec::Kind::JsonSchema;
  const Json* js = get_object(*rf, "json_schema");
  if (!js) bad("response_format", "'response_format.json_schema' is required for type json_schema");
  const Json* schema = find_field(*js, "schema");
  if (!schema) bad("response_format", "'response_format.json_schema.schema' is required");
  if (!schema->is_object() && !schema->is_boolean())
    bad("response_format", "'response_format.json_schema.schema' must be a JSON Schema object");
  spec.schema = *schema;
  return spec;
}

namespace {
// Anthropic system text: a string or an array of text blocks (joined by a blank line).
std::string anthropic_system_text(const Json& sys, const std::string& where) {
  const std::string msg = fmt::format("'{}' must be a string or an array of text blocks", where);
  if (sys.is_string()) return sys.get<std::string>();
  if (!sys.is_array()) bad(where, msg);
  std::string text;
  for (const auto& b : sys) {
    if (!b.is_object() || !b.contains("type") || !b["type"].is_string() || b["type"] != "text" || !b.contains("text") ||
        !b["text"].is_string())
      bad(where, msg);
    if (!text.empty()) text += "\n\n";
    text += b["text"].get<std::string>();
  }
  return text;
}
}  // namespace

Json anthropic_to_openai(const Json& body) {
  Json messages = Json::array();
  if (const Json* sys = find_field(body, "system"))
    messages.push_back(Json{{"role", "system"}, {"content", anthropic_system_text(*sys, "system")}});
  const Json* msgs = get_array(body, "messages");
  if (!msgs || msgs->empty()) bad("messages", "'messages' must be a non-empty array");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const Json& m = (*msgs)[i];
    const std::string w = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad(w, fmt::format("'{}' must be an object", w));
    auto role = get_string(m, "role");
    if (!role || (*role != "user" && *role != "assistant" && *role != "system"))
      bad(w, fmt::format("'{}.role' must be \"user\", \"assistant\" or \"system\"", w));
    const Json* content = find_field(m, "content");
    if (!content) bad(w, fmt::format("'{}.content' is required", w));
    if (*role == "system") {  // Claude Code sends these; DSV4 renders a system turn wherever it stands
      messages.push_back(Json{{"role", "system"}, {"content", anthropic_system_text(*content, w + ".content")}});
      continue;
    }
    if (content->is_string()) {
      messages.push_back(Json{{"role", *role}, {"content", *content}});
      continue;
    }
    if (!content->is_array()) bad(w, fmt::format("'{}.content' must be a string or an array of blocks", w));
    if (*role == "assistant") {
      std::string reasoning, text;
      Json calls = Json::array();
      for (size_t j = 0; j < content->size(); ++j) {
        const Json& b = (*content)[j];
        const std::string wb = fmt::format("{}.content[{}]", w, j);
        const std::string type = nested_string(b, "type", wb);
        if (type == "text") {
          text += nested_string(b, "text", wb);
        } else if (type == "thinking") {
          reasoning += nested_string(b, "thinking", wb);
        } else if (type == "redacted_thinking") {
        } else if (type == "tool_use") {
          if (!b.contains("name") || !b["name"].is_string()) bad(w, fmt::format("'{}': tool_use needs a name", w));
          Json input = b.contains("input") ? b["input"] : Json::object();
          calls.push_back(
              Json{{"id", nested_string(b, "id", wb)},
                   {"type", "function"},
                   {"function", {{"name", b["name"]}, {"arguments", input.is_object() ? input : Json::object()}}}});
        } else {
          bad(w, fmt::format("'{}': unsupported assistant content block type '{}'", w, type));
        }
      }
      Json out = {{"role", "assistant"}, {"content", text}};
      if (!reasoning.empty()) out["reasoning_content"] = reasoning;
      if (!calls.empty()) out["tool_calls"] = std::move(calls);
      messages.push_back(std::move(out));
      continue;
    }
    // User blocks, in order: tool results become tool messages; runs of other blocks become user messages.
    Json parts = Json::array();
    auto flush = [&] {
      if (!parts.empty()) messages.push_back(Json{{"role", "user"}, {"content", std::move(parts)}});
      parts = Json::array();
    };
    for (size_t j = 0; j < content->size(); ++j) {
      const Json& b = (*content)[j];
      const std::string wb = fmt::format("{}.content[{}]", w, j);
      const std::string type = nested_string(b, "type", wb);
      if (type == "tool_result") {
        flush();
        Json c = b.contains("content") ? b["content"] : Json("");
        if (c.is_array()) {
          Json tparts = Json::array();
          for (size_t k = 0; k < c.size(); ++k) {
            const std::string wt = fmt::format("{}.content[{}]", wb, k);
            const std::string ttype = nested_string(c[k], "type", wt);
            if (ttype != "text") unsupported_part(wt, ttype);
            tparts.push_back(Json{{"type", "text"}, {"text", nested_string(c[k], "text", wt)}});
          }
          c = std::move(tparts);
        } else if (!c.is_string()) {
          c = "";
        }
        messages.push_back(
            Json{{"role", "tool"}, {"tool_call_id", nested_string(b, "tool_use_id", wb)}, {"content", c}});
      } else if (type == "text") {
        if (!b.contains("text") || !b["text"].is_string())
          bad(w, fmt::format("'{}': a text block needs a string text", w));
        parts.push_back(Json{{"type", "text"}, {"text", b["text"]}});
      } else if (!type.empty()) {
        unsupported_part(wb, type);  // images, documents
      } else {
        bad(w, fmt::format("'{}': each content block needs a type", w));
      }
    }
    flush();
  }
  Json out = {{"messages", std::move(messages)}};
  if (const Json* tools = get_array(body, "tools")) {
    Json converted = Json::array();
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string w = fmt::format("tools[{}]", i);
      if (!t.is_object() || !t.contains("name") || !t["name"].is_string())
        bad(w, fmt::format("'{}' needs a string name", w));
      const std::string type = nested_string(t, "type", w, "custom");
      if (type != "custom") bad(w, fmt::format("'{}': tool type '{}' is not supported", w, type));
      Json fn = {{"name", t["name"]}};
      if (t.contains("description")) fn["description"] = t["description"];
      fn["parameters"] = t.contains("input_schema") ? t["input_schema"] : Json::object();
      converted.push_back(Json{{"type", "function"}, {"function", std::move(fn)}});
    }
    out["tools"] = std::move(converted);
  }
  return out;
}

ChatPrompt anthropic_chat_prompt(const Json& body, const ChatEncodeOptions& defaults) {
  Json conv = anthropic_to_openai(body);
  ChatEncodeOptions opts = defaults;
  if (const Json* t = find_field(body, "thinking"))
    opts.thinking_mode = parse_thinking_switch(*t, "thinking") ? ThinkingMode::Thinking : ThinkingMode::Chat;
  // Anthropic's effort knob (Claude Code sends it) maps to DSV4's reasoning effort; thinking stays as switched.
  if (const Json* oc = get_object(body, "output_config"))
    if (const Json* e = find_field(*oc, "effort")) opts.reasoning_effort = parse_effort_field(*e, "output_config.effort");
  Json tools = conv.contains("tools") ? conv["tools"] : Json::array();
  std::string mode;
  tools = apply_tool_choice(std::move(tools), find_field(body, "tool_choice"), true, &mode);
  ChatPrompt p = render(std::move(conv["messages"]), tools, nullptr, opts);
  const Json* tc = get_object(body, "tool_choice");
  tool_constraint(p, tools, mode, !(tc && get_bool(*tc, "disable_parallel_tool_use").value_or(false)));
  return p;
}

}  // namespace dsv4::server
