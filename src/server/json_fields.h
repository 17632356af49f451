// Typed access to request fields: a wrong type is a 400 naming the field. A null value counts as absent,
// as the OpenAI SDKs send explicit nulls for unset optional fields.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "server/api_error.h"

namespace dsv4::server {

// Parses a request body; malformed JSON or a non-object is a 400.
Json parse_body(std::string_view body);

const Json* find_field(const Json& obj, const char* key);  // nullptr when missing or null
std::optional<double> get_number(const Json& obj, const char* key);
std::optional<int64_t> get_int(const Json& obj, const char* key);  // integral numbers only (3.0 is accepted)
std::optional<bool> get_bool(const Json& obj, const char* key);
std::optional<std::string> get_string(const Json& obj, const char* key);
const Json* get_array(const Json& obj, const char* key);
const Json* get_object(const Json& obj, const char* key);

// Response bodies: invalid UTF-8 never reaches a client as a dump exception.
std::string dump(const Json& j);

}  // namespace dsv4::server
