#include "runtime/grammar/one_of.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>

#include "core/error.h"

namespace dsv4::grammar {

namespace {

using Resolve = std::function<SchemaJson(const SchemaJson&)>;
using Types = std::set<std::string>;
const Types kAll = {"null", "boolean", "number", "string", "object", "array"};
constexpr int kMaxDepth = 8;  // nested property schemas looked into (recursive $refs stop here: "may overlap")

bool overlap(const std::string& a, const std::string& b) {
  return a == b || (a == "integer" && b == "number") || (a == "number" && b == "integer");
}
bool overlaps(const std::string& t, const Types& ts) {
  for (const auto& u : ts)
    if (overlap(t, u)) return true;
  return false;
}

std::optional<Types> explicit_types(const SchemaJson& s) {
  if (!s.is_object() || !s.contains("type")) return std::nullopt;
  Types t;
  if (s["type"].is_array()) {
    for (const auto& x : s["type"])
      if (x.is_string()) t.insert(x.get<std::string>());
  } else if (s["type"].is_string()) {
    t.insert(s["type"].get<std::string>());
  }
  if (s.value("nullable", false)) t.insert("null");
  return t;
}

bool type_matches(const std::string& t, const SchemaJson& v) {  // JSON Schema's: 1.0 is an integer
  if (t == "null") return v.is_null();
  if (t == "boolean") return v.is_boolean();
  if (t == "integer")
    return v.is_number_integer() || v.is_number_unsigned() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "number") return v.is_number();
  if (t == "string") return v.is_string();
  if (t == "object") return v.is_object();
  return t == "array" && v.is_array();
}

std::string type_of(const SchemaJson& v) {
  for (const char* t : {"null", "boolean", "integer", "number", "string", "object", "array"})
    if (type_matches(t, v)) return t;
  return "null";
}

bool has_combinator(const SchemaJson& s) { return s.is_object() && (s.contains("anyOf") || s.contains("oneOf")); }

// The const/enum values the compiler writes for `s` (filtered by its type, as SchemaCompiler::value does).
std::optional<std::vector<SchemaJson>> literals(const SchemaJson& s) {
  if (!s.is_object() || has_combinator(s) || !(s.contains("enum") || s.contains("const"))) return std::nullopt;
  std::vector<SchemaJson> in, out;
  if (s.contains("const")) in.push_back(s["const"]);
  if (s.contains("enum") && s["enum"].is_array())
    for (const auto& v : s["enum"])
      if (!s.contains("const") || v == s["const"]) in.push_back(v);
  if (s.value("nullable", false)) in.push_back(nullptr);
  const auto types = explicit_types(s);
  for (const auto& v : in) {
    bool ok = !types;
    if (types)
      for (const auto& t : *types) ok = ok || type_matches(t, v);
    if (ok) out.push_back(v);
  }
  return out;
}

// A superset of the JSON types of the values the compiler writes for `s`.
Types gen_types(const SchemaJson& s) {
  if (!s.is_object()) return s.is_boolean() && !s.get<bool>() ? Types{} : kAll;
  if (has_combinator(s)) return explicit_types(s).value_or(kAll);  // merged branches only narrow the parent's
  if (auto lits = literals(s)) {
    Types t;
    for (const auto& v : *lits) t.insert(type_of(v));
    return t;
  }
  if (auto t = explicit_types(s)) return *t;
  auto has = [&](std::initializer_list<const char*> ks) {
    for (const char* k : ks)
      if (s.contains(k)) return true;
    return false;
  };
  Types t;  // no type: the compiler infers it from the keywords present (SchemaCompiler::value)
  if (has({"properties", "required", "additionalProperties"})) t.insert("object");
  if (has({"items", "prefixItems", "minItems", "additionalItems", "maxItems"})) t.insert("array");
  if (has({"pattern", "format", "minLength", "maxLength"})) t.insert("string");
  if (has({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})) t.insert("number");
  return t.empty() ? kAll : t;
}

// A superset of the JSON types `s` accepts (JSON Schema semantics: keywords without `type` assert nothing).
Types acc_types(const SchemaJson& s, const Resolve& resolve, int depth) {
  if (!s.is_object()) return s.is_boolean() && !s.get<bool>() ? Types{} : kAll;
  std::optional<Types> t = explicit_types(s);
  if (s.contains("enum") || s.contains("const")) {
    std::vector<SchemaJson> vals;
    if (s.contains("const")) vals.push_back(s["const"]);
    if (s.contains("enum") && s["enum"].is_array())
      for (const auto& v : s["enum"]) vals.push_back(v);
    Types lt;
    for (const auto& v : vals) lt.insert(type_of(v));
    if (!t) return lt;
    Types both;
    for (const auto& x : lt)
      if (overlaps(x, *t)) both.insert(x);
    return both;
  }
  if (t) return *t;
  if (has_combinator(s) && depth < kMaxDepth) {
    Types u;
    for (const char* kw : {"anyOf", "oneOf"})
      if (s.contains(kw) && s[kw].is_array())
        for (const auto& b : s[kw]) {
          const Types bt = acc_types(resolve(b), resolve, depth + 1);
          u.insert(bt.begin(), bt.end());
        }
    return u;
  }
  return kAll;
}

// `s` surely rejects the value v.
bool rejects(const SchemaJson& s0, const SchemaJson& v, const Resolve& resolve, int depth) {
  if (s0.is_boolean()) return !s0.get<bool>();
  if (!s0.is_object() || depth > kMaxDepth) return false;
  const SchemaJson s = resolve(s0);
  if (s.is_boolean()) return !s.get<bool>();
  if (s.contains("const") && s["const"] != v) return true;
  if (s.contains("enum") && s["enum"].is_array()) {
    bool found = false;
    for (const auto& e : s["enum"]) found = found || e == v;
    if (!found) return true;
  }
  if (auto t = explicit_types(s)) {
    bool ok = false;
    for (const auto& x : *t) ok = ok || type_matches(x, v);
    if (!ok) return true;
  }
  for (const char* kw : {"anyOf", "oneOf"})
    if (s.contains(kw) && s[kw].is_array() && !s[kw].empty()) {
      bool all = true;
      for (const auto& b : s[kw]) all = all && rejects(b, v, resolve, depth + 1);
      if (all) return true;
    }
  return false;
}

std::set<std::string> required_of(const SchemaJson& s) {
  std::set<std::string> r;
  if (s.contains("required") && s["required"].is_array())
    for (const auto& x : s["required"])
      if (x.is_string()) r.insert(x.get<std::string>());
  return r;
}

// The compiler writes keys beyond `properties` (SchemaCompiler::object_frag's rule).
bool writes_extra_keys(const SchemaJson& s) {
  if (s.contains("additionalProperties")) return !(s["additionalProperties"].is_boolean() && !s["additionalProperties"].get<bool>());
  return !s.contains("properties");
}

bool is_false(const SchemaJson& s) { return s.is_boolean() && !s.get<bool>(); }

// An object schema the compiler writes from its properties (not a literal, not a combinator).
bool plain_object(const SchemaJson& s) {
  return s.is_object() && !has_combinator(s) && !literals(s) && gen_types(s).count("object");
}

bool excludes(const SchemaJson& gen, const SchemaJson& acc, const Resolve& resolve, int depth);

// Every object the compiler writes for `gi` is rejected by `j` (both resolved).
bool object_excluded(const SchemaJson& gi, const SchemaJson& j, const Resolve& resolve, int depth) {
  if (!j.is_object()) return is_false(j);
  const SchemaJson kNone = SchemaJson::object();
  const SchemaJson& gp = gi.contains("properties") && gi["properties"].is_object() ? gi["properties"] : kNone;
  const SchemaJson& jp = j.contains("properties") && j["properties"].is_object() ? j["properties"] : kNone;
  const std::set<std::string> ri = required_of(gi), rj = required_of(j);
  for (const auto& p : ri) {  // always written by gi: does j reject it?
    const SchemaJson pi = gp.contains(p) ? resolve(gp[p]) : SchemaJson::object();
    if (jp.contains(p)) {
      if (excludes(pi, jp[p], resolve, depth + 1)) return true;
    } else if (j.contains("additionalProperties")) {
      if (excludes(pi, j["additionalProperties"], resolve, depth + 1)) return true;
    }
  }
  for (const auto& q : rj) {  // required by j, never written by gi (extra keys exclude declared names)
    const bool never = gp.contains(q) ? is_false(gp[q]) : !writes_extra_keys(gi);
    if (!ri.count(q) && never) return true;
  }
  return false;
}

// Every value the compiler writes for `gen0` is rejected by `acc0` (JSON Schema semantics for acc0).
bool excludes(const SchemaJson& gen0, const SchemaJson& acc0, const Resolve& resolve, int depth) {
  if (depth > kMaxDepth) return false;
  const SchemaJson gen = gen0.is_object() ? resolve(gen0) : gen0;
  const SchemaJson acc = acc0.is_object() ? resolve(acc0) : acc0;
  if (is_false(gen) || is_false(acc)) return true;
  if (auto lits = literals(gen)) {
    for (const auto& v : *lits)
      if (!rejects(acc, v, resolve, depth)) return false;
    return true;
  }
  const Types at = acc_types(acc, resolve, depth);
  for (const auto& t : gen_types(gen)) {
    if (!overlaps(t, at)) continue;
    if (t == "object" && plain_object(gen) && object_excluded(gen, acc, resolve, depth)) continue;
    return false;
  }
  return true;
}

// Makes `gen` (a branch as written) leave out an optional property `other` requires; false when none.
bool drop_property_required_by(SchemaJson& gen, const SchemaJson& other) {
  if (!plain_object(gen) || !other.is_object()) return false;
  const bool typed_object = explicit_types(gen).has_value();
  const bool object_keywords = gen.contains("properties") || gen.contains("required") || gen.contains("additionalProperties");
  if (!typed_object && !object_keywords) return false;
  const std::set<std::string> ri = required_of(gen);
  for (const auto& q : required_of(other)) {
    if (ri.count(q)) continue;
    const bool declared = gen.contains("properties") && gen["properties"].contains(q);
    if (!declared && !writes_extra_keys(gen)) continue;  // never written anyway: not the overlap
    if (declared && is_false(gen["properties"][q])) continue;
    // Adding `properties` must not turn off the extra keys the compiler wrote before.
    if (!gen.contains("properties") && !gen.contains("additionalProperties")) gen["additionalProperties"] = true;
    gen["properties"][q] = false;
    return true;
  }
  return false;
}

}  // namespace

std::vector<SchemaJson> exclusive_one_of(std::vector<SchemaJson> branches, const std::string& path,
                                         const std::function<SchemaJson(const SchemaJson&)>& resolve,
                                         std::vector<bool>& changed) {
  const std::vector<SchemaJson> accept = branches;  // validators check the branches as written
  changed.assign(branches.size(), false);
  for (size_t i = 0; i < branches.size(); ++i)
    for (size_t j = 0; j < branches.size(); ++j) {
      if (i == j) continue;
      while (!excludes(branches[i], accept[j], resolve, 0)) {
        if (!drop_property_required_by(branches[i], accept[j]))
          fail("unsupported JSON Schema keyword 'oneOf' at {}: branches {} and {} may both match one value (exactly "
               "one is enforced when the branches differ in type, const/enum, or a required property the other "
               "branch forbids or gives other values; use anyOf if a value may match several)",
               path, std::min(i, j), std::max(i, j));
        changed[i] = true;
      }
    }
  return branches;
}

}  // namespace dsv4::grammar
