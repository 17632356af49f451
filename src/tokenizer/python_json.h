// JSON text exactly as Python's json.dumps(value, ensure_ascii=False) writes it (", " and ": " separators,
// repr-style floats, keys in insertion order). DeepSeek's prompt encoder embeds tool schemas and arguments
// this way, so the bytes must match.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace dsv4 {

std::string python_json_dumps(const nlohmann::ordered_json& v);
void python_json_dump(const nlohmann::ordered_json& v, std::string& out);
// A string as a JSON string literal (json.dumps of a str).
void python_json_string(std::string_view s, std::string& out);

}  // namespace dsv4
