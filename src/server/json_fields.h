// Typed access to request fields: a wrong type is a 400 naming the field. A null value counts as absent,
// as the OpenAI SDKs send explicit nulls for unset optional fields.
//
// The reader (parse_body) is the one place request JSON enters the server. It builds the order-preserving
// Json itself instead of nlohmann's DOM parser, whose ordered_map searches every existing key on each insert
// (a 1M-key object took ~40 min of a core); here an object is built in time linear in its size. It also caps
// nesting depth and keys per object, and turns every reader failure (syntax, a number beyond double range
// such as 1e999, a cap) into a 400 naming the position and, where there is one, the field's path.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "server/api_error.h"

namespace dsv4::server {

struct JsonLimits {
  int max_depth = 64;              // nested arrays/objects (--max-json-depth)
  size_t max_object_keys = 10000;  // keys in any one object (--max-json-object-keys)
  // Values in the whole body (--max-json-values; `dsv4 serve` scales it with the context): a DOM value takes
  // 16+ bytes however short its text ("0,"), so this bounds a body's memory, not just its length.
  size_t max_values = size_t(1) << 22;
};
// Process-wide caps for parse_body, set once by `dsv4 serve` before serving (the handlers call parse_body
// with the body only).
void set_json_limits(const JsonLimits& l);
const JsonLimits& json_limits();

// Parses a request body; malformed JSON, a non-object or a broken cap is a 400.
Json parse_body(std::string_view body);
Json parse_body(std::string_view body, const JsonLimits& limits);

const Json* find_field(const Json& obj, const char* key);  // nullptr when missing or null
std::optional<double> get_number(const Json& obj, const char* key);
std::optional<int64_t> get_int(const Json& obj, const char* key);  // integral numbers only (3.0 is accepted)
std::optional<bool> get_bool(const Json& obj, const char* key);
std::optional<std::string> get_string(const Json& obj, const char* key);
const Json* get_array(const Json& obj, const char* key);
const Json* get_object(const Json& obj, const char* key);
// A string field of a nested object, named by its path `where` in errors (e.g. "tools[2].type"); `def` when
// missing or null. A non-object `obj` counts as having no fields.
std::string nested_string(const Json& obj, const char* key, const std::string& where, std::string def = {});

// Response bodies: invalid UTF-8 never reaches a client as a dump exception.
std::string dump(const Json& j);

}  // namespace dsv4::server
