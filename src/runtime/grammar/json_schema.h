// JSON Schema (the subset real tool definitions use) compiled to grammar fragments: the JSON text of a value,
// or the DSML parameter lines of a tool call's arguments. Every keyword is either enforced, an annotation
// (title, description, default, examples, $schema, $id, $comment, deprecated, readOnly, writeOnly, x-...),
// or refused with dsv4::Error "unsupported JSON Schema keyword 'K' at PATH" (the server answers 400).
//
// Supported: type (string or list), enum, const, nullable; anyOf, oneOf (exactly one branch: one_of.h
// decides it or refuses), allOf (merged into one schema), $ref to "#", "#/$defs/..", "#/definitions/.." or any local
// JSON pointer (recursion through rule calls, depth kMaxCallDepth); object: properties (emitted in schema
// order), required, additionalProperties (false, true or a schema; absent = false when properties are
// given, true otherwise, as OpenAI's strict mode); array: items, prefixItems, minItems, maxItems; string: enum, const, pattern
// (regex.h), format (date, time, date-time, uuid, ipv4, email, uri, hostname), minLength, maxLength (up to
// kMaxStringLength); integer and number: minimum, maximum, exclusiveMinimum, exclusiveMaximum (for numbers
// integer-valued bounds only). Bounds: integers and integer parts up to 15 digits, fractions up to 15 digits,
// exponents up to 2 digits; no whitespace except one optional space after ':' and ','.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/grammar/text.h"

namespace dsv4::grammar {

using SchemaJson = nlohmann::ordered_json;
constexpr int kMaxStringLength = 4096;
constexpr int kMaxItems = 1 << 14;  // minItems/maxItems are unrolled up to this

class SchemaCompiler {
 public:
  // `root` must outlive the compiler ($ref targets are looked up in it).
  SchemaCompiler(GrammarBuilder& b, const SchemaJson& root, TextOptions opt = {});

  Frag json(const SchemaJson& s, const std::string& path = "#");  // the JSON text of a value
  // DSML: the `<｜DSML｜parameter ...>` lines of an object schema (a tool's parameters), in schema order.
  Frag dsml_parameters(const SchemaJson& s, const std::string& path = "#");
  Frag any_value();  // any JSON value

 private:
  enum class Mode { Json, JsonNoString, Raw };
  std::optional<Frag> value(const SchemaJson& s, const std::string& path, Mode mode, int depth = 0);
  std::optional<Frag> typed(const std::string& type, const SchemaJson& s, const std::string& path, Mode mode);
  Frag string_frag(const SchemaJson& s, const std::string& path, Encoding enc);
  Frag integer_frag(const SchemaJson& s, const std::string& path);
  Frag number_frag(const SchemaJson& s, const std::string& path);
  Frag object_frag(const SchemaJson& s, const std::string& path);
  Frag array_frag(const SchemaJson& s, const std::string& path);
  Frag call_value(const SchemaJson& s, const std::string& path);  // JSON value through a rule (repeats)
  std::optional<Frag> literal_value(const SchemaJson& v, Mode mode);
  const SchemaJson& resolve_ref(const std::string& ref, const std::string& path);
  SchemaJson merge(const SchemaJson& a, const SchemaJson& b, const std::string& path);
  SchemaJson resolve_top(const SchemaJson& s, const std::string& path);  // top-level $ref and allOf merged
  void check_keywords(const SchemaJson& s, const std::string& path);
  Frag ws();

  GrammarBuilder& b_;
  const SchemaJson& root_;
  TextOptions opt_;
  std::map<std::pair<std::string, int>, uint32_t> ref_rules_;  // ($ref, mode) -> rule
  int any_rule_ = -1;
};

}  // namespace dsv4::grammar
