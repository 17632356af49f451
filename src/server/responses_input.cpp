// Responses API request -> chat request (see responses.h).
#include <fmt/format.h>

#include <algorithm>

#include "server/json_fields.h"
#include "server/response_store.h"
#include "server/responses.h"

namespace dsv4::server {

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

// Tool types OpenAI runs on its side; a local server cannot (see responses.h for the policy).
bool is_hosted_tool(const std::string& type) {
  static const char* kHosted[] = {"web_search",       "web_search_preview", "web_search_preview_2025_03_11",
                                  "web_search_2025_08_26", "file_search", "code_interpreter", "computer_use_preview",
                                  "computer_use", "image_generation", "mcp", "local_shell", "custom", "tool_search"};
  return std::find(std::begin(kHosted), std::end(kHosted), type) != std::end(kHosted);
}

// Message content: a string, or parts (input_text / output_text / text / refusal; images and files become
// the encoder's "[Unsupported ...]" placeholders).
Json message_content(const Json& c, const std::string& where) {
  if (c.is_string()) return c;
  if (!c.is_array()) bad(where, fmt::format("'{}' must be a string or an array of content parts", where));
  Json parts = Json::array();
  for (size_t i = 0; i < c.size(); ++i) {
    const Json& p = c[i];
    const std::string w = fmt::format("{}[{}]", where, i);
    const std::string type = p.is_object() ? p.value("type", "") : "";
    if (type == "input_text" || type == "output_text" || type == "text" || type == "refusal") {
      const char* key = type == "refusal" ? "refusal" : "text";
      if (!p.contains(key) || !p[key].is_string()) bad(w, fmt::format("'{}.{}' must be a string", w, key));
      parts.push_back(Json{{"type", "text"}, {"text", p[key]}});
    } else if (type == "input_image" || type == "input_file" || type == "input_audio") {
      parts.push_back(Json{{"type", type.substr(6)}});
    } else {
      bad(w + ".type", fmt::format("'{}.type' must be input_text, output_text, input_image or input_file", w));
    }
  }
  return parts;
}

std::string text_of(const Json& content) {
  if (content.is_string()) return content.get<std::string>();
  std::string s;
  for (const auto& p : content)
    if (p.value("type", "") == "text") s += p.value("text", "");
  return s;
}

std::string required_string(const Json& item, const char* key, const std::string& where) {
  auto v = get_string(item, key);
  if (!v) bad(where + "." + key, fmt::format("'{}.{}' is required and must be a string", where, key));
  return *v;
}

// A tool call's output: a string or content parts.
Json call_output(const Json& item, const std::string& where) {
  const Json* out = find_field(item, "output");
  if (!out) bad(where + ".output", fmt::format("'{}.output' is required", where));
  return out->is_string() ? *out : Json(text_of(message_content(*out, where + ".output")));
}

}  // namespace

ResponsesRequest responses_to_chat(const Json& body, const ResponseStore& store) {
  ResponsesRequest r;
  Json messages = Json::array();
  if (auto prev = get_string(body, "previous_response_id")) {
    auto s = store.get(*prev);
    if (!s)
      throw ApiError(404, fmt::format("Response with id '{}' not found (never stored, deleted, or evicted).", *prev),
                     "previous_response_id", "not_found");
    if (s->response.value("status", "") == "in_progress")
      bad("previous_response_id", fmt::format("Response '{}' is still in progress", *prev));
    messages = s->conversation;
  }
  const Json* input = find_field(body, "input");
  if (!input) bad("input", "'input' is required");
  std::string pending_reasoning;  // a reasoning item belongs to the assistant turn that follows it
  auto assistant_turn = [&]() -> Json& {
    if (messages.empty() || messages.back()["role"] != "assistant" || !pending_reasoning.empty()) {
      Json m = {{"role", "assistant"}, {"content", ""}};
      if (!pending_reasoning.empty()) m["reasoning_content"] = pending_reasoning;
      pending_reasoning.clear();
      messages.push_back(std::move(m));
    }
    return messages.back();
  };
  if (input->is_string()) {
    messages.push_back(Json{{"role", "user"}, {"content", *input}});
  } else if (input->is_array()) {
    for (size_t i = 0; i < input->size(); ++i) {
      const Json& it = (*input)[i];
      const std::string w = fmt::format("input[{}]", i);
      if (!it.is_object()) bad(w, fmt::format("'{}' must be an object", w));
      const std::string type = it.value("type", it.contains("role") ? "message" : "");
      if (type == "message") {
        const std::string role = required_string(it, "role", w);
        if (role != "user" && role != "system" && role != "developer" && role != "assistant")
          bad(w + ".role", fmt::format("'{}.role' must be user, system, developer or assistant", w));
        const Json* c = find_field(it, "content");
        if (!c) bad(w + ".content", fmt::format("'{}.content' is required", w));
        Json content = message_content(*c, w + ".content");
        if (role == "assistant") {
          Json& m = assistant_turn();
          m["content"] = m["content"].get<std::string>() + text_of(content);
        } else {
          messages.push_back(Json{{"role", role == "developer" ? "system" : role}, {"content", std::move(content)}});
        }
      } else if (type == "function_call" || type == "custom_tool_call") {
        const std::string call_id = required_string(it, "call_id", w);
        const std::string name = required_string(it, "name", w);
        std::string args;
        if (type == "function_call") {
          args = required_string(it, "arguments", w);
        } else {
          args = Json{{"input", required_string(it, "input", w)}}.dump();
        }
        Json& m = assistant_turn();
        if (!m.contains("tool_calls")) m["tool_calls"] = Json::array();
        m["tool_calls"].push_back(
            Json{{"id", call_id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", args}}}});
      } else if (type == "function_call_output" || type == "custom_tool_call_output") {
        messages.push_back(
            Json{{"role", "tool"}, {"tool_call_id", required_string(it, "call_id", w)}, {"content", call_output(it, w)}});
      } else if (type == "reasoning") {
        std::string text;
        for (const char* key : {"content", "summary"})
          if (const Json* parts = get_array(it, key)) {
            for (const auto& p : *parts)
              if (p.is_object() && p.contains("text") && p["text"].is_string()) text += p["text"].get<std::string>();
            if (!text.empty()) break;
          }
        // Our own reasoning comes back here when the client asked for it (it is not encrypted).
        if (text.empty()) text = it.value("encrypted_content", "");
        pending_reasoning += text;
      } else if (type.empty()) {
        bad(w + ".type", fmt::format("'{}' needs a 'type' (or a 'role' for a message)", w));
      } else {
        bad(w + ".type", fmt::format("'{}.type' '{}' is not supported (message, function_call, "
                                     "function_call_output, reasoning)", w, type));
      }
    }
  } else {
    bad("input", "'input' must be a string or an array of items");
  }
  if (messages.empty()) bad("input", "'input' has no messages");
  r.conversation = messages;

  if (const Json* ins = find_field(body, "instructions")) {
    if (!ins->is_string()) bad("instructions", "'instructions' must be a string");
    // Not carried over by previous_response_id (OpenAI's rule): it is not part of the stored conversation.
    if (!ins->get<std::string>().empty())
      messages.insert(messages.begin(), Json{{"role", "system"}, {"content", *ins}});
  }
  r.chat = Json{{"messages", std::move(messages)}};

  if (const Json* tools = find_field(body, "tools")) {
    if (!tools->is_array()) bad("tools", "'tools' must be an array");
    Json out = Json::array();
    auto add_function = [&](const Json& t, const std::string& w, const std::string& ns) {
      const std::string name = required_string(t, "name", w);
      Json fn = {{"name", name}};
      if (t.contains("description")) fn["description"] = t["description"];
      fn["parameters"] = t.contains("parameters") && t["parameters"].is_object() ? t["parameters"] : Json::object();
      if (r.namespace_of.count(name) || std::any_of(out.begin(), out.end(), [&](const Json& o) {
            return o["function"]["name"] == name;
          }))
        bad(w + ".name", fmt::format("'{}.name': tool '{}' is defined twice", w, name));
      if (!ns.empty()) r.namespace_of[name] = ns;
      out.push_back(Json{{"type", "function"}, {"function", std::move(fn)}});
    };
    for (size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string w = fmt::format("tools[{}]", i);
      if (!t.is_object()) bad(w, fmt::format("'{}' must be an object", w));
      const std::string type = t.value("type", "");
      if (type == "function") {
        add_function(t, w, "");
      } else if (type == "namespace") {
        const std::string ns = required_string(t, "name", w);
        const Json* inner = get_array(t, "tools");
        if (!inner) bad(w + ".tools", fmt::format("'{}.tools' must be an array", w));
        for (size_t k = 0; k < inner->size(); ++k) {
          const Json& f = (*inner)[k];
          const std::string wk = fmt::format("{}.tools[{}]", w, k);
          if (!f.is_object() || f.value("type", "function") != "function")
            bad(wk + ".type", fmt::format("'{}' must be a function tool", wk));
          add_function(f, wk, ns);
        }
      } else if (is_hosted_tool(type)) {
        r.dropped_tools.push_back(type);
      } else {
        bad(w + ".type", fmt::format("'{}.type' '{}' is not supported (function, namespace; hosted tools are "
                                     "dropped)", w, type));
      }
    }
    r.chat["tools"] = std::move(out);
  }
  if (const Json* tc = find_field(body, "tool_choice")) {
    if (tc->is_string()) {
      r.chat["tool_choice"] = *tc;
    } else if (tc->is_object()) {
      const std::string type = tc->value("type", "");
      if (type == "function") {
        r.chat["tool_choice"] = Json{{"type", "function"}, {"function", {{"name", tc->value("name", "")}}}};
      } else if (type == "allowed_tools") {
        r.chat["tool_choice"] = tc->value("mode", "auto");
      } else if (is_hosted_tool(type)) {
        bad("tool_choice", fmt::format("'tool_choice' names the hosted tool '{}', which this server cannot run", type));
      } else {
        bad("tool_choice", "'tool_choice' must be none, auto, required or {\"type\": \"function\", \"name\": ...}");
      }
    } else {
      bad("tool_choice", "'tool_choice' must be a string or an object");
    }
  }
  if (auto p = get_bool(body, "parallel_tool_calls")) r.parallel_tool_calls = *p;
  if (const Json* text = get_object(body, "text")) {
    if (const Json* f = get_object(*text, "format")) {
      const std::string type = f->value("type", "");
      if (type == "json_schema") {
        Json js = {{"name", f->value("name", "response")}};
        if (f->contains("schema")) js["schema"] = (*f)["schema"];
        if (f->contains("strict")) js["strict"] = (*f)["strict"];
        r.chat["response_format"] = Json{{"type", "json_schema"}, {"json_schema", std::move(js)}};
      } else if (type == "json_object") {
        r.chat["response_format"] = Json{{"type", "json_object"}};
      } else if (type != "text") {
        bad("text.format.type", "'text.format.type' must be text, json_object or json_schema");
      }
    }
  }
  if (const Json* reasoning = get_object(body, "reasoning"))
    if (const Json* effort = find_field(*reasoning, "effort")) {
      parse_effort_field(*effort, "reasoning.effort");  // a 400 naming this field, not the chat one
      r.chat["reasoning_effort"] = *effort;
    }
  if (const Json* inc = get_array(body, "include"))
    for (const auto& v : *inc) r.reasoning_in_encrypted_content |= v == "reasoning.encrypted_content";
  return r;
}

}  // namespace dsv4::server
