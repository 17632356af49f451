// Server-sent events framing (text/event-stream).
#pragma once
#include <string>
#include <string_view>

namespace dsv4::server {

// OpenAI style: `data: <json>\n\n` (and `data: [DONE]\n\n` at the end).
inline std::string sse_data(std::string_view data) {
  std::string s;
  s.reserve(data.size() + 8);
  s += "data: ";
  s += data;
  s += "\n\n";
  return s;
}

// Anthropic style: a named event, `event: <name>\ndata: <json>\n\n`.
inline std::string sse_event(std::string_view name, std::string_view data) {
  std::string s;
  s.reserve(name.size() + data.size() + 16);
  s += "event: ";
  s += name;
  s += '\n';
  s += sse_data(data);
  return s;
}

}  // namespace dsv4::server
