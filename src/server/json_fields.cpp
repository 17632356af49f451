#include "server/json_fields.h"

#include <fmt/format.h>

#include <cmath>

namespace dsv4::server {

Json parse_body(std::string_view body) {
  Json j;
  try {
    j = Json::parse(body.begin(), body.end());
  } catch (const Json::parse_error& e) {
    // nlohmann's message names the byte offset; drop its "[json.exception.parse_error.101] " prefix.
    std::string m = e.what();
    if (auto p = m.find("] "); p != std::string::npos) m = m.substr(p + 2);
    throw ApiError(400, "malformed JSON in the request body: " + m);
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

const Json* find_field(const Json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw ApiError(400, fmt::format("'{}' must be a number", key), key);
  return v->get<double>();
}

std::optional<int64_t> get_int(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  throw ApiError(400, fmt::format("'{}' must be an integer", key), key);
}

std::optional<bool> get_bool(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw ApiError(400, fmt::format("'{}' must be a boolean", key), key);
  return v->get<bool>();
}

std::optional<std::string> get_string(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw ApiError(400, fmt::format("'{}' must be a string", key), key);
  return v->get<std::string>();
}

const Json* get_array(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  if (v && !v->is_array()) throw ApiError(400, fmt::format("'{}' must be an array", key), key);
  return v;
}

const Json* get_object(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  if (v && !v->is_object()) throw ApiError(400, fmt::format("'{}' must be an object", key), key);
  return v;
}

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace dsv4::server
