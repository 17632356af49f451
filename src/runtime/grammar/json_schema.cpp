#include "runtime/grammar/json_schema.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "runtime/grammar/one_of.h"
#include "runtime/grammar/regex.h"

namespace dsv4::grammar {

namespace {

constexpr int64_t kMaxMagnitude = 999999999999999;  // 15 digits
constexpr int kIntDigits = 15, kFracDigits = 15, kExpDigits = 2;  // 15 digits x 10^99 stays finite

[[noreturn]] void unsupported(const std::string& kw, const std::string& path, const std::string& why = {}) {
  fail("unsupported JSON Schema keyword '{}' at {}{}", kw, path, why.empty() ? "" : ": " + why);
}

const std::set<std::string> kAnnotations = {"title",     "description", "default",  "examples",  "$schema",
                                            "$id",       "$comment",    "deprecated", "readOnly", "writeOnly",
                                            "$defs",     "definitions", "discriminator", "markdownDescription",
                                            "strict"};
const std::set<std::string> kSupported = {
    "type",       "enum",        "const",           "nullable",         "anyOf",           "oneOf",
    "allOf",      "$ref",        "properties",      "required",         "additionalProperties", "items",
    "prefixItems", "minItems", "additionalItems",   "maxItems",        "pattern",          "format",          "minLength",
    "maxLength",  "minimum",     "maximum",         "exclusiveMinimum", "exclusiveMaximum", "uniqueItems"};
const std::set<std::string> kTypes = {"null", "boolean", "integer", "number", "string", "object", "array"};

bool is_annotation(const std::string& k) { return kAnnotations.count(k) || k.rfind("x-", 0) == 0; }

// Keywords that constrain (everything but annotations).
bool has_constraints_besides(const SchemaJson& s, const std::string& except) {
  for (auto it = s.begin(); it != s.end(); ++it)
    if (it.key() != except && !is_annotation(it.key())) return true;
  return false;
}

std::string json_text(const SchemaJson& v) { return v.dump(-1, ' ', false, SchemaJson::error_handler_t::replace); }

int64_t count_keyword(const SchemaJson& s, const char* k, const std::string& path, int64_t dflt, int64_t cap) {
  if (!s.contains(k)) return dflt;
  const SchemaJson& v = s[k];
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
    fail("JSON Schema keyword '{}' at {} must be a non-negative integer", k, path);
  const double d = v.get<double>();
  if (d < 0) fail("JSON Schema keyword '{}' at {} must be a non-negative integer", k, path);
  if (d > double(cap)) unsupported(k, path, fmt::format("values above {} are not supported", cap));
  return int64_t(d);
}

std::set<std::string> type_set(const SchemaJson& s, const std::string& path) {
  std::set<std::string> t;
  if (!s.contains("type")) return t;
  const SchemaJson& v = s["type"];
  auto add = [&](const SchemaJson& x) {
    if (!x.is_string() || !kTypes.count(x.get<std::string>()))
      fail("JSON Schema keyword 'type' at {}: unknown type {}", path, json_text(x));
    t.insert(x.get<std::string>());
  };
  if (v.is_array()) {
    for (const auto& x : v) add(x);
    if (t.empty()) fail("JSON Schema keyword 'type' at {} is an empty list", path);
  } else {
    add(v);
  }
  return t;
}

std::string json_type_of(const SchemaJson& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number()) return std::floor(v.get<double>()) == v.get<double>() ? "integer" : "number";
  if (v.is_string()) return "string";
  if (v.is_object()) return "object";
  return "array";
}

}  // namespace

namespace {
Frag key_not_in(GrammarBuilder& b_, const std::vector<std::string>& names, TextOptions opt_);
}  // namespace

SchemaCompiler::SchemaCompiler(GrammarBuilder& b, const SchemaJson& root, TextOptions opt)
    : b_(b), root_(root), opt_(opt) {}

Frag SchemaCompiler::ws() { return b_.opt(b_.literal(" ")); }

void SchemaCompiler::check_keywords(const SchemaJson& s, const std::string& path) {
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    if (is_annotation(k)) continue;
    if (!kSupported.count(k)) unsupported(k, path);
  }
  if (s.contains("uniqueItems") && s["uniqueItems"] != false) unsupported("uniqueItems", path);
}

const SchemaJson& SchemaCompiler::resolve_ref(const std::string& ref, const std::string& path) {
  if (ref.empty() || ref[0] != '#') unsupported("$ref", path, fmt::format("only local references (\"#...\"), got \"{}\"", ref));
  try {
    const nlohmann::json_pointer<std::string> ptr(ref.substr(1));
    const SchemaJson& t = root_.at(ptr);
    return t;
  } catch (const std::exception&) {
    fail("JSON Schema $ref \"{}\" at {} does not resolve", ref, path);
  }
}

// Shallow merge for allOf and for a parent's keywords inside its anyOf branches: properties merge, required
// unions, type lists intersect, anything else must agree.
SchemaJson SchemaCompiler::merge(const SchemaJson& a0, const SchemaJson& b0, const std::string& path) {
  auto deref = [&](const SchemaJson& s) -> SchemaJson {
    if (s.is_boolean()) {
      if (s.get<bool>()) return SchemaJson::object();
      fail("JSON Schema at {}: a 'false' schema accepts nothing", path);
    }
    if (!s.is_object()) fail("JSON Schema at {} must be an object", path);
    if (s.contains("$ref")) {
      SchemaJson rest = s;
      rest.erase("$ref");
      return merge(resolve_ref(s["$ref"].get<std::string>(), path), rest, path);
    }
    return s;
  };
  SchemaJson a = deref(a0);
  const SchemaJson b = deref(b0);
  for (auto it = b.begin(); it != b.end(); ++it) {
    const std::string& k = it.key();
    if (!a.contains(k) || is_annotation(k)) {
      if (!a.contains(k)) a[k] = it.value();
      continue;
    }
    if (k == "properties") {
      for (auto p = it.value().begin(); p != it.value().end(); ++p)
        a[k][p.key()] = a[k].contains(p.key()) ? merge(a[k][p.key()], p.value(), path + "/properties/" + p.key())
                                               : p.value();
    } else if (k == "required") {
      for (const auto& r : it.value())
        if (std::find(a[k].begin(), a[k].end(), r) == a[k].end()) a[k].push_back(r);
    } else if (k == "type") {
      std::set<std::string> ta = type_set(a, path), tb = type_set(b, path), both;
      for (const auto& t : ta)
        if (tb.count(t) || (t == "integer" && tb.count("number"))) both.insert(t);
      for (const auto& t : tb)
        if (t == "integer" && ta.count("number")) both.insert(t);
      if (both.empty()) fail("JSON Schema at {}: allOf/anyOf combine types that exclude each other", path);
      a[k] = SchemaJson(std::vector<std::string>(both.begin(), both.end()));
    } else if (a[k] != it.value()) {
      unsupported(k, path, "different values in a schema and its allOf/anyOf parts");
    }
  }
  return a;
}

SchemaJson SchemaCompiler::resolve_top(const SchemaJson& s, const std::string& path) {
  if (!s.is_object() || !(s.contains("$ref") || s.contains("allOf"))) return s;
  SchemaJson m = merge(s, SchemaJson::object(), path);  // resolves a top-level $ref
  for (int k = 0; k < 32 && m.contains("allOf"); ++k) {
    const SchemaJson all = m["allOf"];
    m.erase("allOf");
    if (all.is_array())
      for (const auto& x : all) m = merge(m, x, path);
  }
  return m;
}

Frag SchemaCompiler::json(const SchemaJson& s, const std::string& path) {
  auto f = value(s, path, Mode::Json);
  if (!f) fail("JSON Schema at {} accepts no value", path);
  return *f;
}

Frag SchemaCompiler::any_value() {
  if (any_rule_ < 0) {
    any_rule_ = int(b_.declare_rule());
    const uint32_t r = uint32_t(any_rule_);
    Frag str = b_.seq({b_.literal("\""), b_.star(json_string_char(b_, opt_)), b_.literal("\"")});
    // Keys as for additional properties everywhere: no escapes.
    Frag member = b_.seq({b_.literal("\""), key_not_in(b_, {}, opt_), b_.literal("\":"), ws(), b_.call(r)});
    Frag more_members = b_.star(b_.seq({b_.literal(","), ws(), b_.literal("\""), key_not_in(b_, {}, opt_),
                                        b_.literal("\":"), ws(), b_.call(r)}));
    Frag obj = b_.seq({b_.literal("{"), b_.opt(b_.seq({member, more_members})), b_.literal("}")});
    Frag arr = b_.seq({b_.literal("["), b_.opt(b_.seq({b_.call(r), b_.star(b_.seq({b_.literal(","), ws(), b_.call(r)}))})),
                       b_.literal("]")});
    b_.define_rule(r, b_.alt({obj, arr, str, number_frag(SchemaJson::object(), "#"), b_.literal("true"),
                              b_.literal("false"), b_.literal("null")}));
  }
  return b_.call(uint32_t(any_rule_));
}

std::optional<Frag> SchemaCompiler::literal_value(const SchemaJson& v, Mode mode) {
  if (mode == Mode::Raw) {
    if (!v.is_string()) return std::nullopt;
    const std::string s = v.get<std::string>();
    if (opt_.no_dsml_bar && s.find("｜") != std::string::npos) return std::nullopt;
    return b_.literal(s);
  }
  if (mode == Mode::JsonNoString && v.is_string()) return std::nullopt;
  return b_.literal(json_text(v));
}

std::optional<Frag> SchemaCompiler::value(const SchemaJson& s, const std::string& path, Mode mode, int depth) {
  if (depth > 32) fail("JSON Schema at {}: references nest too deeply", path);
  if (s.is_boolean()) {
    if (!s.get<bool>()) fail("JSON Schema at {}: a 'false' schema accepts nothing", path);
    if (mode == Mode::Json) return any_value();
    if (mode == Mode::Raw) return b_.star(char_class(b_, any_char(), Encoding::Raw, opt_));
    return value(SchemaJson{{"type", {"null", "boolean", "number", "object", "array"}}}, path, mode, depth);
  }
  if (!s.is_object()) fail("JSON Schema at {} must be an object or a boolean", path);
  check_keywords(s, path);
  if (!has_constraints_besides(s, "")) return value(SchemaJson(true), path, mode, depth);  // {}: any value

  if (s.contains("$ref")) {
    if (!s["$ref"].is_string()) fail("JSON Schema keyword '$ref' at {} must be a string", path);
    const std::string ref = s["$ref"].get<std::string>();
    if (has_constraints_besides(s, "$ref")) {
      SchemaJson rest = s;
      rest.erase("$ref");
      return value(merge(resolve_ref(ref, path), rest, path), path, mode, depth + 1);
    }
    const auto key = std::make_pair(ref, int(mode));
    auto it = ref_rules_.find(key);
    if (it == ref_rules_.end()) {
      const SchemaJson& target = resolve_ref(ref, path);
      const uint32_t r = b_.declare_rule();
      ref_rules_[key] = r;
      auto body = value(target, ref, mode, depth + 1);
      if (!body) {
        ref_rules_[key] = UINT32_MAX;  // empty in this mode
        b_.define_rule(r, b_.literal("\x01\x02never"));  // unreachable: callers are told "none"
        return std::nullopt;
      }
      b_.define_rule(r, *body);
      it = ref_rules_.find(key);
    }
    if (it->second == UINT32_MAX) return std::nullopt;
    return b_.call(it->second);
  }
  if (s.contains("allOf")) {
    const SchemaJson& all = s["allOf"];
    if (!all.is_array() || all.empty()) fail("JSON Schema keyword 'allOf' at {} must be a non-empty array", path);
    SchemaJson m = s;
    m.erase("allOf");
    for (size_t i = 0; i < all.size(); ++i) m = merge(m, all[i], fmt::format("{}/allOf/{}", path, i));
    return value(m, path, mode, depth + 1);
  }
  for (const char* kw : {"anyOf", "oneOf"}) {
    if (!s.contains(kw)) continue;
    const SchemaJson& br = s[kw];
    if (!br.is_array() || br.empty()) fail("JSON Schema keyword '{}' at {} must be a non-empty array", kw, path);
    SchemaJson parent = s;
    parent.erase(kw);
    const bool plain = !has_constraints_besides(parent, "");
    // oneOf: exactly one branch; the branches as compiled (some restricted), or a 400 (one_of.h).
    std::vector<SchemaJson> exclusive;
    std::vector<bool> changed(br.size(), false);
    if (std::string(kw) == "oneOf") {
      std::vector<SchemaJson> merged;
      for (size_t i = 0; i < br.size(); ++i)
        merged.push_back(plain ? resolve_top(br[i], path) : merge(parent, br[i], fmt::format("{}/{}/{}", path, kw, i)));
      exclusive = exclusive_one_of(std::move(merged), path, [&](const SchemaJson& x) { return resolve_top(x, path); },
                                   changed);
    }
    std::vector<Frag> alts;
    for (size_t i = 0; i < br.size(); ++i) {
      const std::string p = fmt::format("{}/{}/{}", path, kw, i);
      auto f = changed[i] ? value(exclusive[i], p, mode, depth + 1)
               : plain    ? value(br[i], p, mode, depth + 1)
                          : value(merge(parent, br[i], p), p, mode, depth + 1);
      if (f) alts.push_back(*f);
    }
    if (alts.empty()) return std::nullopt;
    return b_.alt(alts);
  }

  std::set<std::string> types = type_set(s, path);
  const bool nullable = s.contains("nullable") && s["nullable"] == true;
  if (s.contains("enum") || s.contains("const")) {
    std::vector<SchemaJson> vals;
    if (s.contains("const")) vals.push_back(s["const"]);
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty())
        fail("JSON Schema keyword 'enum' at {} must be a non-empty array", path);
      for (const auto& v : s["enum"])
        if (!s.contains("const") || v == s["const"]) vals.push_back(v);
    }
    if (nullable) vals.push_back(nullptr);
    std::vector<Frag> alts;
    for (const auto& v : vals) {
      const std::string t = json_type_of(v);
      if (!types.empty() && !types.count(t) && !(t == "integer" && types.count("number")) && !(nullable && v.is_null()))
        continue;
      if (auto f = literal_value(v, mode)) alts.push_back(*f);
    }
    if (alts.empty()) return std::nullopt;
    return b_.alt(alts);
  }
  if (types.empty()) {  // no type: the keywords present say which; none = any value
    auto has = [&](std::initializer_list<const char*> ks) {
      for (const char* k : ks)
        if (s.contains(k)) return true;
      return false;
    };
    if (has({"properties", "required", "additionalProperties"})) types.insert("object");
    if (has({"items", "prefixItems", "minItems", "additionalItems", "maxItems"})) types.insert("array");
    if (has({"pattern", "format", "minLength", "maxLength"})) types.insert("string");
    if (has({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})) types.insert("number");
    if (types.empty()) types = {"null", "boolean", "number", "string", "object", "array"};
  }
  if (nullable) types.insert("null");
  if (types.count("number")) types.erase("integer");
  std::vector<Frag> alts;
  for (const auto& t : types)
    if (auto f = typed(t, s, path, mode)) alts.push_back(*f);
  if (alts.empty()) return std::nullopt;
  return b_.alt(alts);
}

std::optional<Frag> SchemaCompiler::typed(const std::string& t, const SchemaJson& s, const std::string& path, Mode mode) {
  if (mode == Mode::Raw) {
    if (t != "string") return std::nullopt;
    return string_frag(s, path, Encoding::Raw);
  }
  if (t == "string") {
    if (mode == Mode::JsonNoString) return std::nullopt;
    return b_.seq({b_.literal("\""), string_frag(s, path, Encoding::Json), b_.literal("\"")});
  }
  if (t == "null") return b_.literal("null");
  if (t == "boolean") return b_.alt({b_.literal("true"), b_.literal("false")});
  if (t == "integer") return integer_frag(s, path);
  if (t == "number") return number_frag(s, path);
  if (t == "object") return object_frag(s, path);
  return array_frag(s, path);
}

// ---- strings

namespace {
// Anchored regexes for the formats we enforce (RFC 3339 dates and times; day-of-month is not checked
// against the month; simple email/uri/hostname shapes).
const char* format_regex(const std::string& f) {
  if (f == "date") return "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";
  if (f == "time") return "^([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";
  if (f == "date-time")
    return "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?"
           "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";
  if (f == "uuid") return "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
  if (f == "ipv4")
    return "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$";
  if (f == "email") return "^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\\.[A-Za-z0-9-]{1,63}){1,4}$";
  if (f == "uri") return "^[A-Za-z][A-Za-z0-9+.-]{0,15}:[!#-;=?-Z\\[\\]_a-z~]{1,256}$";
  if (f == "hostname") return "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,8}$";
  return nullptr;
}
}  // namespace

Frag SchemaCompiler::string_frag(const SchemaJson& s, const std::string& path, Encoding enc) {
  const bool has_len = s.contains("minLength") || s.contains("maxLength");
  if (s.contains("format") || s.contains("pattern")) {
    if (s.contains("format") && s.contains("pattern")) unsupported("format", path, "together with 'pattern'");
    if (has_len) unsupported(s.contains("format") ? "format" : "pattern", path, "together with minLength/maxLength");
    std::string re;
    if (s.contains("pattern")) {
      if (!s["pattern"].is_string()) fail("JSON Schema keyword 'pattern' at {} must be a string", path);
      re = s["pattern"].get<std::string>();
    } else {
      if (!s["format"].is_string()) fail("JSON Schema keyword 'format' at {} must be a string", path);
      const char* r = format_regex(s["format"].get<std::string>());
      if (!r) unsupported("format", path, fmt::format("the format \"{}\"", s["format"].get<std::string>()));
      re = r;
    }
    try {
      return compile_pattern(b_, re, enc, opt_);
    } catch (const Error& e) {
      fail("{} (at {})", e.what(), path);
    }
  }
  const int64_t lo = count_keyword(s, "minLength", path, 0, kMaxStringLength);
  const int64_t hi = count_keyword(s, "maxLength", path, -1, kMaxStringLength);
  if (hi >= 0 && hi < lo) fail("JSON Schema at {}: maxLength < minLength", path);
  auto ch = [&] {
    return enc == Encoding::Json ? json_string_char(b_, opt_) : char_class(b_, any_char(), Encoding::Raw, opt_);
  };
  std::vector<Frag> parts;
  for (int64_t i = 0; i < lo; ++i) parts.push_back(ch());
  if (hi < 0) {
    parts.push_back(b_.star(ch()));
  } else {
    Frag tail = b_.empty();
    for (int64_t i = lo; i < hi; ++i) tail = b_.opt(b_.seq({ch(), tail}));
    parts.push_back(tail);
  }
  return b_.seq(parts);
}

// ---- numbers

namespace {

Frag digit_run(GrammarBuilder& b, int lo, int hi) {  // [0-9]{lo,hi}
  std::vector<Frag> parts;
  auto d = [&] {
    Frag f{b.node(), b.node()};
    b.bytes(f.in, f.out, '0', '9');
    return f;
  };
  for (int i = 0; i < lo; ++i) parts.push_back(d());
  Frag tail = b.empty();
  for (int i = lo; i < hi; ++i) tail = b.opt(b.seq({d(), tail}));
  parts.push_back(tail);
  return b.seq(parts);
}

Frag digit_range(GrammarBuilder& b, char lo, char hi) {
  Frag f{b.node(), b.node()};
  b.bytes(f.in, f.out, uint8_t(lo), uint8_t(hi));
  return f;
}

// Equal-length digit strings from lo to hi (leading zeros allowed).
Frag same_len(GrammarBuilder& b, const std::string& lo, const std::string& hi) {
  const size_t n = lo.size();
  if (n == 0) return b.empty();
  if (lo == std::string(n, '0') && hi == std::string(n, '9')) return digit_run(b, int(n), int(n));  // linear size
  if (lo[0] == hi[0]) return b.seq({digit_range(b, lo[0], lo[0]), same_len(b, lo.substr(1), hi.substr(1))});
  const std::string nines(n - 1, '9'), zeros(n - 1, '0');
  std::vector<Frag> alts;
  alts.push_back(b.seq({digit_range(b, lo[0], lo[0]), same_len(b, lo.substr(1), nines)}));
  if (lo[0] + 1 <= hi[0] - 1) alts.push_back(b.seq({digit_range(b, char(lo[0] + 1), char(hi[0] - 1)), digit_run(b, int(n - 1), int(n - 1))}));
  alts.push_back(b.seq({digit_range(b, hi[0], hi[0]), same_len(b, zeros, hi.substr(1))}));
  return b.alt(alts);
}

// Decimal integers in [a, b], no leading zeros (0 <= a <= b <= kMaxMagnitude).
Frag uint_range(GrammarBuilder& g, int64_t a, int64_t b) {
  std::vector<Frag> alts;
  int64_t p = 1;  // 10^(L-1)
  for (int L = 1; L <= kIntDigits; ++L, p *= 10) {
    const int64_t lo = std::max(a, L == 1 ? 0 : p), hi = std::min(b, p * 10 - 1);
    if (lo <= hi) alts.push_back(same_len(g, std::to_string(lo), std::to_string(hi)));
  }
  DSV4_CHECK(!alts.empty(), "grammar: empty integer range");
  return g.alt(alts);
}

struct Bound {
  bool set = false, exclusive = false;
  double v = 0;
};

// minimum/maximum with draft-4 (boolean) and draft-6+ (number) exclusive forms.
void read_bounds(const SchemaJson& s, const std::string& path, Bound& lo, Bound& hi) {
  auto num = [&](const char* k) {
    if (!s[k].is_number()) fail("JSON Schema keyword '{}' at {} must be a number", k, path);
    return s[k].get<double>();
  };
  if (s.contains("minimum")) lo = {true, false, num("minimum")};
  if (s.contains("maximum")) hi = {true, false, num("maximum")};
  for (auto [k, bd] : {std::pair{"exclusiveMinimum", &lo}, {"exclusiveMaximum", &hi}}) {
    if (!s.contains(k)) continue;
    if (s[k].is_boolean()) {
      if (s[k].get<bool>() && bd->set) bd->exclusive = true;
      continue;
    }
    const double v = num(k);
    const bool is_min = bd == &lo;
    if (!bd->set || (is_min ? v >= bd->v : v <= bd->v)) *bd = {true, true, v};
  }
}

}  // namespace

Frag SchemaCompiler::integer_frag(const SchemaJson& s, const std::string& path) {
  Bound blo, bhi;
  read_bounds(s, path, blo, bhi);
  double lo = -double(kMaxMagnitude), hi = double(kMaxMagnitude);
  if (blo.set) lo = std::max(lo, blo.exclusive ? std::floor(blo.v) + 1 : std::ceil(blo.v));
  if (bhi.set) hi = std::min(hi, bhi.exclusive ? std::ceil(bhi.v) - 1 : std::floor(bhi.v));
  if (lo > hi) fail("JSON Schema at {}: no integer lies within minimum/maximum (within 15 digits)", path);
  const int64_t a = int64_t(lo), b = int64_t(hi);
  std::vector<Frag> alts;
  if (b >= 0) alts.push_back(uint_range(b_, std::max<int64_t>(a, 0), b));
  if (a < 0) alts.push_back(b_.seq({b_.literal("-"), uint_range(b_, std::max<int64_t>(1, -b), -a)}));
  return b_.alt(alts);
}

Frag SchemaCompiler::number_frag(const SchemaJson& s, const std::string& path) {
  Bound blo, bhi;
  read_bounds(s, path, blo, bhi);
  auto frac_any = [&] { return b_.opt(b_.seq({b_.literal("."), digit_run(b_, 1, kFracDigits)})); };
  if (!blo.set && !bhi.set) {
    Frag intpart = b_.alt({b_.literal("0"), b_.seq({digit_range(b_, '1', '9'), digit_run(b_, 0, kIntDigits - 1)})});
    Frag exp = b_.opt(b_.seq({b_.alt({b_.literal("e"), b_.literal("E")}), b_.opt(b_.alt({b_.literal("+"), b_.literal("-")})),
                              digit_run(b_, 1, kExpDigits)}));
    return b_.seq({b_.opt(b_.literal("-")), intpart, frac_any(), exp});
  }
  for (const Bound* bd : {&blo, &bhi})
    if (bd->set && std::floor(bd->v) != bd->v)
      unsupported(bd == &blo ? (blo.exclusive ? "exclusiveMinimum" : "minimum") : (bhi.exclusive ? "exclusiveMaximum" : "maximum"),
                  path, "a non-integer bound on a number");
  const double M = double(kMaxMagnitude);
  // Non-negative decimals in [A, B] (B < 0 = unbounded), integer bounds, exclusive flags; no exponent.
  auto nonneg = [&](int64_t A, bool exA, int64_t B, bool exB) -> std::optional<Frag> {
    auto frac_zero = [&] { return b_.opt(b_.seq({b_.literal("."), b_.plus(b_.literal("0"))})); };
    auto frac_nonzero = [&] {
      return b_.seq({b_.literal("."), digit_run(b_, 0, 7), digit_range(b_, '1', '9'), digit_run(b_, 0, 7)});
    };
    std::vector<Frag> alts;
    const bool inf = B < 0;
    if (!inf && A == B) {
      if (exA || exB) return std::nullopt;
      return b_.seq({b_.literal(std::to_string(A)), frac_zero()});
    }
    alts.push_back(b_.seq({b_.literal(std::to_string(A)), exA ? frac_nonzero() : frac_any()}));
    const int64_t top = inf ? kMaxMagnitude : B - 1;
    if (A + 1 <= top) alts.push_back(b_.seq({uint_range(b_, A + 1, top), frac_any()}));
    if (!inf && !exB) alts.push_back(b_.seq({b_.literal(std::to_string(B)), frac_zero()}));
    return b_.alt(alts);
  };
  const double lo = blo.set ? std::max(blo.v, -M) : -M, hi = bhi.set ? std::min(bhi.v, M) : M;
  if (lo > hi) fail("JSON Schema at {}: minimum > maximum", path);
  std::vector<Frag> alts;
  if (hi >= 0) {
    const bool neg_lo = lo < 0;
    if (auto f = nonneg(neg_lo ? 0 : int64_t(lo), neg_lo ? false : blo.exclusive, bhi.set ? int64_t(hi) : -1, bhi.exclusive))
      alts.push_back(*f);
  }
  if (lo < 0) {
    const int64_t A = hi < 0 ? int64_t(-hi) : 0;
    const bool exA = hi < 0 ? bhi.exclusive : true;  // y = -x > 0: zero belongs to the other side
    if (auto f = nonneg(A, exA, blo.set ? int64_t(-lo) : -1, blo.exclusive)) alts.push_back(b_.seq({b_.literal("-"), *f}));
  }
  if (alts.empty()) fail("JSON Schema at {}: no number lies within the bounds", path);
  return b_.alt(alts);
}

// ---- objects and arrays

Frag SchemaCompiler::call_value(const SchemaJson& s, const std::string& path) {
  const uint32_t r = b_.declare_rule();
  b_.define_rule(r, json(s, path));
  return b_.call(r);
}

namespace {
struct Prop {
  std::string name;
  const SchemaJson* schema;
  bool required;
};
std::vector<Prop> object_props(const SchemaJson& s, const std::string& path, const SchemaJson& any) {
  std::vector<Prop> props;
  std::set<std::string> req;
  if (s.contains("required")) {
    if (!s["required"].is_array()) fail("JSON Schema keyword 'required' at {} must be an array", path);
    for (const auto& r : s["required"]) {
      if (!r.is_string()) fail("JSON Schema keyword 'required' at {} must list strings", path);
      req.insert(r.get<std::string>());
    }
  }
  if (s.contains("properties")) {
    if (!s["properties"].is_object()) fail("JSON Schema keyword 'properties' at {} must be an object", path);
    for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it)
      props.push_back({it.key(), &it.value(), req.count(it.key()) > 0});
  }
  for (const auto& r : req) {  // required but not described: any value
    bool found = false;
    for (const auto& p : props) found = found || p.name == r;
    if (!found) props.push_back({r, &any, true});
  }
  return props;
}
}  // namespace

namespace {
// The characters of a key that is none of `names`: a character trie of the names, left for free text at the
// first character that leaves it; no escapes, no control characters (the same bytes raw or in JSON).
Frag key_not_in(GrammarBuilder& b_, const std::vector<std::string>& names, TextOptions opt_) {
  struct TrieNode {
    std::map<uint32_t, int> next;
    bool word = false;
  };
  std::vector<TrieNode> trie(1);
  for (const std::string& nm : names) {
    int cur = 0;
    for (size_t i = 0; i < nm.size();) {  // by code point
      const uint8_t c = uint8_t(nm[i]);
      const int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      uint32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
      for (int k = 1; k < len && i + size_t(k) < nm.size(); ++k) cp = cp << 6 | (uint8_t(nm[i + size_t(k)]) & 0x3F);
      i += size_t(len);
      auto it = trie[size_t(cur)].next.find(cp);
      if (it == trie[size_t(cur)].next.end()) {
        trie.push_back({});
        it = trie[size_t(cur)].next.emplace(cp, int(trie.size() - 1)).first;
      }
      cur = it->second;
    }
    trie[size_t(cur)].word = true;
  }
  Ranges plain = subtract({{0x20, 0x10FFFF}}, {{'"', '"'}, {'\\', '\\'}});
  const uint32_t key_end = b_.node(), free_st = b_.node();
  std::vector<uint32_t> tn(trie.size());
  for (auto& x : tn) x = b_.node();
  Frag fc = char_class(b_, plain, Encoding::Raw, opt_);
  b_.eps(free_st, fc.in);
  b_.eps(fc.out, free_st);
  b_.eps(free_st, key_end);
  for (size_t t = 0; t < trie.size(); ++t) {
    if (!trie[t].word) b_.eps(tn[t], key_end);
    Ranges out = plain;
    for (const auto& [cp, child] : trie[t].next) {
      Frag c = char_class(b_, {{cp, cp}}, Encoding::Raw, opt_);
      b_.eps(tn[t], c.in);
      b_.eps(c.out, tn[size_t(child)]);
      out = subtract(out, {{cp, cp}});
    }
    if (!out.empty()) {
      Frag c = char_class(b_, out, Encoding::Raw, opt_);
      b_.eps(tn[t], c.in);
      b_.eps(c.out, free_st);
    }
  }
  return {tn[0], key_end};
}
}  // namespace

Frag SchemaCompiler::object_frag(const SchemaJson& s, const std::string& path) {
  static const SchemaJson kAny = SchemaJson::object();
  const std::vector<Prop> props = object_props(s, path, kAny);
  const SchemaJson* extra = nullptr;  // schema of additional properties, null = none allowed
  if (s.contains("additionalProperties")) {
    const SchemaJson& ap = s["additionalProperties"];
    if (!(ap.is_boolean() && !ap.get<bool>())) extra = ap.is_boolean() ? &kAny : &ap;
  } else if (!s.contains("properties")) {
    extra = &kAny;
  }
  const size_t n = props.size();
  // Node (i, e): the first i properties decided, e = whether one was written (a comma comes first).
  std::vector<std::array<uint32_t, 2>> st(n + 1);
  for (auto& a : st) a = {b_.node(), b_.node()};
  for (size_t i = 0; i < n; ++i) {
    const Prop& p = props[i];
    const std::string key = json_text(SchemaJson(p.name)) + ":";
    const std::string pp = path + "/properties/" + p.name;
    if (p.schema->is_boolean() && !p.schema->get<bool>()) {  // a forbidden key: never written
      if (p.required) fail("JSON Schema at {}: a required property with a 'false' schema accepts nothing", pp);
      for (int e = 0; e < 2; ++e) b_.eps(st[i][e], st[i + 1][e]);
      continue;
    }
    for (int e = 0; e < 2; ++e) {
      Frag member = b_.seq({e ? b_.seq({b_.literal(","), ws()}) : b_.empty(), b_.literal(key), ws(), json(*p.schema, pp)});
      b_.eps(st[i][e], member.in);
      b_.eps(member.out, st[i + 1][1]);
      if (!p.required) b_.eps(st[i][e], st[i + 1][e]);
    }
  }
  if (extra) {
    // Additional keys: any string that is not a declared property; values of the extra schema.
    const uint32_t rule = b_.declare_rule();
    b_.define_rule(rule, json(*extra, path + "/additionalProperties"));
    std::vector<std::string> names;
    for (const auto& p : props) names.push_back(p.name);
    const Frag key = key_not_in(b_, names, opt_);
    for (int e = 0; e < 2; ++e) {
      Frag head = b_.seq({e ? b_.seq({b_.literal(","), ws()}) : b_.empty(), b_.literal("\"")});
      b_.eps(st[n][e], head.in);
      b_.eps(head.out, key.in);
    }
    Frag tail = b_.seq({b_.literal("\":"), ws(), b_.call(rule)});
    b_.eps(key.out, tail.in);
    b_.eps(tail.out, st[n][1]);
  }
  Frag close = b_.literal("}");
  b_.eps(st[n][0], close.in);
  b_.eps(st[n][1], close.in);
  Frag open = b_.literal("{");
  b_.eps(open.out, st[0][0]);
  return {open.in, close.out};
}

Frag SchemaCompiler::array_frag(const SchemaJson& s, const std::string& path) {
  constexpr int64_t kCap = kMaxItems;  // counts are unrolled (rule calls: a few nodes per element)
  const int64_t lo = count_keyword(s, "minItems", path, 0, kCap);
  const int64_t hi = count_keyword(s, "maxItems", path, -1, kCap);
  if (hi >= 0 && hi < lo) fail("JSON Schema at {}: maxItems < minItems", path);
  static const SchemaJson kAny = SchemaJson::object();
  std::vector<Frag> fixed;  // prefixItems (or the draft-4 array form of items)
  const SchemaJson* rest = &kAny;
  const SchemaJson* prefix = s.contains("prefixItems") ? &s["prefixItems"]
                             : (s.contains("items") && s["items"].is_array()) ? &s["items"] : nullptr;
  if (prefix) {
    if (!prefix->is_array()) fail("JSON Schema keyword 'prefixItems' at {} must be an array", path);
    for (size_t i = 0; i < prefix->size(); ++i) fixed.push_back(json((*prefix)[i], fmt::format("{}/prefixItems/{}", path, i)));
    if (s.contains("prefixItems") && s.contains("items")) rest = &s["items"];
    if (s.contains("additionalItems")) unsupported("additionalItems", path);
  } else if (s.contains("items")) {
    rest = &s["items"];
  }
  if (rest->is_boolean() && !rest->get<bool>()) rest = nullptr;
  const int64_t nfixed = int64_t(fixed.size());
  const int64_t max_total = rest ? hi : (hi < 0 ? nfixed : std::min(hi, nfixed));
  if (max_total >= 0 && lo > max_total) fail("JSON Schema at {}: minItems exceeds the items allowed", path);
  uint32_t rest_rule = 0;
  if (rest) {
    rest_rule = b_.declare_rule();
    b_.define_rule(rest_rule, json(*rest, path + "/items"));
  }
  auto elem = [&](int64_t i) { return i < nfixed ? fixed[size_t(i)] : b_.call(rest_rule); };
  auto sep = [&](int64_t i) { return i == 0 ? b_.empty() : b_.seq({b_.literal(","), ws()}); };
  // Elements from the last: tail(i) = what may follow i elements; past `unroll` only an unbounded rest.
  const int64_t unroll = max_total >= 0 ? max_total : std::max(lo, nfixed);
  Frag tail = b_.empty();
  if (max_total < 0) {
    Frag more = b_.star(b_.seq({b_.literal(","), ws(), b_.call(rest_rule)}));
    tail = unroll == 0 ? b_.opt(b_.seq({b_.call(rest_rule), more})) : more;
  }
  for (int64_t i = unroll - 1; i >= 0; --i) {
    Frag step = b_.seq({sep(i), elem(i), tail});
    tail = i >= lo ? b_.opt(step) : step;
  }
  return b_.seq({b_.literal("["), tail, b_.literal("]")});
}

// ---- DSML tool-call arguments

Frag SchemaCompiler::dsml_parameters(const SchemaJson& s0, const std::string& path) {
  SchemaJson s = s0.is_null() ? SchemaJson::object() : s0;
  if (s.is_object() && s.contains("$ref")) s = merge(s, SchemaJson::object(), path);
  if (s.is_object() && s.contains("allOf")) {
    SchemaJson m = s;
    m.erase("allOf");
    for (const auto& x : s["allOf"]) m = merge(m, x, path);
    s = m;
  }
  if (!s.is_object()) fail("tool parameters at {} must be an object schema", path);
  check_keywords(s, path);
  for (const char* k : {"anyOf", "oneOf", "enum", "const"})
    if (s.contains(k)) unsupported(k, path, "at the top of a tool's parameters (an object with properties is needed)");
  const auto types = type_set(s, path);
  if (!types.empty() && !(types.size() == 1 && types.count("object")))
    fail("tool parameters at {} must be an object schema (type \"object\")", path);
  static const SchemaJson kAny = SchemaJson::object();
  const std::vector<Prop> props = object_props(s, path, kAny);
  const size_t n = props.size();
  std::vector<uint32_t> st(n + 1);
  for (auto& x : st) x = b_.node();
  for (size_t i = 0; i < n; ++i) {
    const Prop& p = props[i];
    const std::string pp = path + "/properties/" + p.name;
    if (p.name.find('"') != std::string::npos || p.name.find("｜") != std::string::npos || p.name.find('\n') != std::string::npos)
      fail("tool parameter name {} at {} cannot be written in DSML", json_text(SchemaJson(p.name)), path);
    if (p.schema->is_boolean() && !p.schema->get<bool>()) {  // a forbidden parameter: never written
      if (p.required) fail("JSON Schema at {}: a required property with a 'false' schema accepts nothing", pp);
      b_.eps(st[i], st[i + 1]);
      continue;
    }
    std::vector<Frag> forms;
    if (auto raw = value(*p.schema, pp, Mode::Raw))
      forms.push_back(b_.seq({b_.literal("string=\"true\">"), *raw}));
    if (auto js = value(*p.schema, pp, Mode::JsonNoString))
      forms.push_back(b_.seq({b_.literal("string=\"false\">"), *js}));
    if (forms.empty()) fail("JSON Schema at {} accepts no value", pp);
    Frag line = b_.seq({b_.literal("<｜DSML｜parameter name=\"" + p.name + "\" "), b_.alt(forms),
                        b_.literal("</｜DSML｜parameter>\n")});
    b_.eps(st[i], line.in);
    b_.eps(line.out, st[i + 1]);
    if (!p.required) b_.eps(st[i], st[i + 1]);
  }
  // Additional parameters (free-form tools such as {"type": "object"}): names that are not declared, after
  // the declared ones. Two extra parameters with the same name are not prevented (the parser would reject
  // that call); models do not repeat a parameter.
  const SchemaJson* extra = nullptr;
  if (s.contains("additionalProperties")) {
    const SchemaJson& ap = s["additionalProperties"];
    if (!(ap.is_boolean() && !ap.get<bool>())) extra = ap.is_boolean() ? &kAny : &ap;
  } else if (!s.contains("properties")) {
    extra = &kAny;
  }
  if (extra) {
    std::vector<std::string> names;
    for (const auto& p : props) names.push_back(p.name);
    const std::string pp = path + "/additionalProperties";
    std::vector<Frag> forms;
    if (auto raw = value(*extra, pp, Mode::Raw)) forms.push_back(b_.seq({b_.literal("string=\"true\">"), *raw}));
    if (auto js = value(*extra, pp, Mode::JsonNoString)) forms.push_back(b_.seq({b_.literal("string=\"false\">"), *js}));
    if (!forms.empty()) {
      Frag line = b_.seq({b_.literal("<｜DSML｜parameter name=\""), key_not_in(b_, names, opt_), b_.literal("\" "),
                          b_.alt(forms), b_.literal("</｜DSML｜parameter>\n")});
      b_.eps(st[n], line.in);
      b_.eps(line.out, st[n]);
    }
  }
  return {st[0], st[n]};
}

}  // namespace dsv4::grammar
