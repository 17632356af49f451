// Plain JSON Schema checks for the structured-output tests, written independently of the grammar
// compiler and automaton (src/runtime/grammar):
//   validate()      a parsed value against a schema (the subset the compiler supports, with real
//                   semantics: oneOf means exactly one branch, patterns via std::wregex);
//   viable_prefix() whether text is a prefix of some document the schema accepts, in the output form the
//                   grammar defines (no whitespace but one optional space after ':' and ','; numbers with up
//                   to 15 integer/fraction digits and 2 exponent digits; strings with any escape, valid
//                   UTF-8). A direct backtracking parse over the schema; no pattern/format, no bounds on
//                   non-integer numbers (throws Skip for those).
#pragma once
#include <cmath>
#include <codecvt>
#include <functional>
#include <locale>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <string_view>

namespace schema_test {

using Json = nlohmann::ordered_json;

inline const Json& resolve(const Json& root, const std::string& ref) {
  return root.at(nlohmann::json_pointer<std::string>(ref.substr(1)));
}

inline std::u32string to_u32(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    char32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
    for (int k = 1; k < n; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + size_t(k)]) & 0x3F);
    out.push_back(cp);
    i += size_t(n);
  }
  return out;
}

inline bool regex_search_utf8(const std::string& pattern, const std::string& value) {
  const std::u32string p = to_u32(pattern), v = to_u32(value);
  const std::wstring wp(p.begin(), p.end()), wv(v.begin(), v.end());
  return std::regex_search(wv, std::wregex(wp, std::regex::ECMAScript));
}

inline bool format_ok(const std::string& f, const std::string& v) {
  static const std::map<std::string, std::string> re = {
      {"date", R"(^\d{4}-(0[1-9]|1[012])-(0[1-9]|[12]\d|3[01])$)"},
      {"time", R"(^([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$)"},
      {"date-time", R"(^\d{4}-(0[1-9]|1[012])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$)"},
      {"uuid", R"(^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$)"},
      {"ipv4", R"(^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$)"},
      {"email", R"(^[^@\s]+@[^@\s]+\.[^@\s]+$)"},
      {"uri", R"(^[A-Za-z][A-Za-z0-9+.\-]*:\S+$)"},
      {"hostname", R"(^[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)*$)"},
  };
  auto it = re.find(f);
  return it != re.end() && std::regex_search(v, std::regex(it->second));
}

inline bool type_ok(const std::string& t, const Json& v) {
  if (t == "null") return v.is_null();
  if (t == "boolean") return v.is_boolean();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "number") return v.is_number();
  if (t == "string") return v.is_string();
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  return false;
}

// Why `v` fails `s` ("" = valid).
inline std::string validate(const Json& v, const Json& s, const Json& root, const std::string& at = "$") {
  if (s.is_boolean()) return s.get<bool>() ? "" : at + ": false schema";
  if (s.contains("$ref")) {
    if (auto e = validate(v, resolve(root, s["$ref"].get<std::string>()), root, at); !e.empty()) return e;
  }
  if (s.contains("allOf"))
    for (const auto& b : s["allOf"])
      if (auto e = validate(v, b, root, at); !e.empty()) return e;
  if (s.contains("anyOf")) {
    bool any = false;
    for (const auto& b : s["anyOf"]) any = any || validate(v, b, root, at).empty();
    if (!any) return at + ": no anyOf branch matches";
  }
  if (s.contains("oneOf")) {
    int n = 0;
    for (const auto& b : s["oneOf"]) n += validate(v, b, root, at).empty();
    if (n != 1) return at + ": " + std::to_string(n) + " oneOf branches match";
  }
  if (s.contains("const") && v != s["const"]) return at + ": not the const";
  if (s.contains("enum")) {
    bool found = false;
    for (const auto& e : s["enum"]) found = found || e == v;
    if (!found) return at + ": not in enum";
  }
  if (s.contains("type")) {
    bool ok = false;
    if (s["type"].is_array()) {
      for (const auto& t : s["type"]) ok = ok || type_ok(t.get<std::string>(), v);
    } else {
      ok = type_ok(s["type"].get<std::string>(), v);
    }
    if (!ok && !(v.is_null() && s.value("nullable", false))) return at + ": wrong type " + std::string(v.type_name());
  }
  if (v.is_string()) {
    const std::string str = v.get<std::string>();
    const size_t len = to_u32(str).size();
    if (s.contains("minLength") && len < s["minLength"].get<size_t>()) return at + ": shorter than minLength";
    if (s.contains("maxLength") && len > s["maxLength"].get<size_t>()) return at + ": longer than maxLength";
    if (s.contains("pattern") && !regex_search_utf8(s["pattern"].get<std::string>(), str))
      return at + ": does not match pattern " + s["pattern"].get<std::string>();
    if (s.contains("format") && !format_ok(s["format"].get<std::string>(), str)) return at + ": bad format";
  }
  if (v.is_number()) {
    const double x = v.get<double>();
    if (s.contains("minimum") && x < s["minimum"].get<double>()) return at + ": below minimum";
    if (s.contains("maximum") && x > s["maximum"].get<double>()) return at + ": above maximum";
    if (s.contains("exclusiveMinimum") && s["exclusiveMinimum"].is_number() && x <= s["exclusiveMinimum"].get<double>())
      return at + ": not above exclusiveMinimum";
    if (s.contains("exclusiveMaximum") && s["exclusiveMaximum"].is_number() && x >= s["exclusiveMaximum"].get<double>())
      return at + ": not below exclusiveMaximum";
  }
  if (v.is_object()) {
    if (s.contains("required"))
      for (const auto& r : s["required"])
        if (!v.contains(r.get<std::string>())) return at + ": missing required " + r.get<std::string>();
    for (auto it = v.begin(); it != v.end(); ++it) {
      const std::string p = at + "." + it.key();
      if (s.contains("properties") && s["properties"].contains(it.key())) {
        if (auto e = validate(it.value(), s["properties"][it.key()], root, p); !e.empty()) return e;
      } else if (s.contains("additionalProperties")) {
        if (auto e = validate(it.value(), s["additionalProperties"], root, p); !e.empty()) return e;
      }
    }
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return at + ": fewer than minItems";
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return at + ": more than maxItems";
    size_t np = 0;
    if (s.contains("prefixItems")) {
      np = s["prefixItems"].size();
      for (size_t i = 0; i < std::min(np, v.size()); ++i)
        if (auto e = validate(v[i], s["prefixItems"][i], root, at + "[" + std::to_string(i) + "]"); !e.empty()) return e;
    }
    if (s.contains("items"))
      for (size_t i = np; i < v.size(); ++i)
        if (auto e = validate(v[i], s["items"], root, at + "[" + std::to_string(i) + "]"); !e.empty()) return e;
  }
  return "";
}

// ---- prefix viability

struct Skip {};  // a schema outside what viable_prefix decides

class PrefixChecker {
 public:
  PrefixChecker(std::string_view text, const Json& root) : t_(text), root_(root) {}
  bool viable(const Json& schema) {
    return value(schema, 0, [&](size_t p) { return p == t_.size(); });
  }

 private:
  using K = std::function<bool(size_t)>;
  bool end(size_t p) const { return p >= t_.size(); }

  // -1 mismatch, -2 the text ends inside the literal, else the position after it.
  long lit(size_t p, std::string_view s) const {
    for (size_t i = 0; i < s.size(); ++i) {
      if (p + i >= t_.size()) return -2;
      if (t_[p + i] != s[i]) return -1;
    }
    return long(p + s.size());
  }
  bool then_lit(size_t p, std::string_view s, const K& k) const {
    const long r = lit(p, s);
    return r == -2 ? true : r == -1 ? false : k(size_t(r));
  }
  bool opt_space(size_t p, const K& k) const {
    if (end(p)) return true;
    if (t_[p] == ' ' && k(p + 1)) return true;
    return k(p);
  }

  static std::set<std::string> types_of(const Json& s) {
    std::set<std::string> t;
    if (s.contains("type")) {
      if (s["type"].is_array())
        for (const auto& x : s["type"]) t.insert(x.get<std::string>());
      else
        t.insert(s["type"].get<std::string>());
    } else if (s.contains("properties") || s.contains("required")) {
      t.insert("object");
    } else if (s.contains("items")) {
      t.insert("array");
    } else {
      t = {"null", "boolean", "number", "string", "object", "array"};
    }
    if (s.value("nullable", false)) t.insert("null");
    return t;
  }

  bool value(const Json& s, size_t p, const K& k) {
    if (end(p)) return true;
    if (s.is_boolean()) return value(Json::object(), p, k);
    for (const char* bad : {"pattern", "format", "allOf", "prefixItems"})
      if (s.contains(bad)) throw Skip{};
    if (s.contains("$ref")) {
      if (s.size() > 1 && !(s.size() == 2 && s.contains("description"))) throw Skip{};
      return value(resolve(root_, s["$ref"].get<std::string>()), p, k);
    }
    for (const char* kw : {"anyOf", "oneOf"})
      if (s.contains(kw)) {
        for (const auto& b : s[kw])
          if (value(b, p, k)) return true;
        return false;
      }
    if (s.contains("enum") || s.contains("const")) {
      std::vector<Json> vals;
      if (s.contains("const")) vals.push_back(s["const"]);
      if (s.contains("enum"))
        for (const auto& v : s["enum"]) vals.push_back(v);
      for (const auto& v : vals)
        if (then_lit(p, v.dump(), k)) return true;
      return false;
    }
    for (const auto& t : types_of(s)) {
      if (t == "null" && then_lit(p, "null", k)) return true;
      if (t == "boolean" && (then_lit(p, "true", k) || then_lit(p, "false", k))) return true;
      if (t == "string" && string(s, p, k)) return true;
      if (t == "integer" && integer(s, p, k)) return true;
      if (t == "number" && number(s, p, k)) return true;
      if (t == "object" && object(s, p, k)) return true;
      if (t == "array" && array(s, p, k)) return true;
    }
    return false;
  }

  // One UTF-8 character at p: its length, 0 if invalid, -1 if the text ends inside a valid start.
  int utf8(size_t p) const {
    const unsigned char c = static_cast<unsigned char>(t_[p]);
    int n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else return 0;
    for (int i = 1; i < n; ++i) {
      if (p + size_t(i) >= t_.size()) return -1;
      const unsigned char d = static_cast<unsigned char>(t_[p + size_t(i)]);
      if (i == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return 0;
    }
    return n;
  }

  bool string(const Json& s, size_t p, const K& k) {
    if (t_[p] != '"') return false;
    const size_t mn = s.value("minLength", size_t(0)), mx = s.value("maxLength", size_t(1) << 40);
    size_t q = p + 1, count = 0;
    for (;;) {
      if (end(q)) return true;
      const unsigned char c = static_cast<unsigned char>(t_[q]);
      if (c == '"') return count >= mn && k(q + 1);
      if (count >= mx) return false;
      if (c < 0x20) return false;
      if (c == '\\') {
        if (end(q + 1)) return true;
        const char e = t_[q + 1];
        if (std::string_view("\"\\/bfnrt").find(e) != std::string_view::npos) {
          q += 2;
        } else if (e == 'u') {
          for (int i = 0; i < 4; ++i) {
            if (end(q + 2 + size_t(i))) return true;
            const char h = t_[q + 2 + size_t(i)];
            if (!isxdigit(static_cast<unsigned char>(h))) return false;
            if (i == 0 && (h == 'd' || h == 'D') && !end(q + 3) && t_[q + 3] >= '8') return false;  // surrogate
          }
          q += 6;
        } else {
          return false;
        }
        ++count;
        continue;
      }
      const int n = utf8(q);
      if (n == -1) return true;
      if (n == 0) return false;
      q += size_t(n);
      ++count;
    }
  }

  // Digits at p: [p, e); whether the text ended inside them.
  size_t digits(size_t p) const {
    while (!end(p) && isdigit(static_cast<unsigned char>(t_[p]))) ++p;
    return p;
  }

  bool integer(const Json& s, size_t p, const K& k) {
    long double lo = -999999999999999.0L, hi = 999999999999999.0L;
    if (s.contains("minimum")) lo = std::max<long double>(lo, std::ceil(s["minimum"].get<double>()));
    if (s.contains("maximum")) hi = std::min<long double>(hi, std::floor(s["maximum"].get<double>()));
    if (s.contains("exclusiveMinimum") && s["exclusiveMinimum"].is_number())
      lo = std::max<long double>(lo, std::floor(s["exclusiveMinimum"].get<double>()) + 1);
    if (s.contains("exclusiveMaximum") && s["exclusiveMaximum"].is_number())
      hi = std::min<long double>(hi, std::ceil(s["exclusiveMaximum"].get<double>()) - 1);
    size_t q = p;
    const bool neg = t_[q] == '-';
    if (neg) ++q;
    if (end(q)) return neg ? lo <= -1 : true;
    const size_t e = digits(q);
    if (e == q) return false;
    const std::string d(t_.substr(q, e - q));
    if (d.size() > 15 || (d[0] == '0' && d.size() > 1)) return false;
    const long double v = std::stold(d) * (neg ? -1 : 1);
    if (end(e)) {  // more digits may follow: is some integer in range spelled with this prefix?
      if (d == "0") return !neg && lo <= 0 && 0 <= hi;  // "-0" is -0 = 0 for the validator: avoid
      for (size_t L = d.size(); L <= 15; ++L) {
        const long double scale = std::pow(10.0L, (long double)(L - d.size()));
        long double a = std::stold(d) * scale, b = a + scale - 1;
        if (neg) std::swap(a = -a, b = -b);
        if (std::max(a, lo) <= std::min(b, hi)) return true;
      }
      return false;
    }
    if (neg && d == "0") return false;
    return lo <= v && v <= hi && k(e);
  }

  bool number(const Json& s, size_t p, const K& k) {
    for (const char* b : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
      if (s.contains(b)) throw Skip{};
    size_t q = p;
    if (t_[q] == '-') ++q;
    if (end(q)) return true;
    size_t e = digits(q);
    if (e == q || e - q > 15 || (t_[q] == '0' && e - q > 1)) return false;
    auto after_exp = [&](size_t r) -> bool {
      if (end(r)) return true;
      if (t_[r] != 'e' && t_[r] != 'E') return k(r);
      if (k(r)) return true;
      ++r;
      if (end(r)) return true;
      if (t_[r] == '+' || t_[r] == '-') ++r;
      if (end(r)) return true;
      const size_t x = digits(r);
      if (x == r || x - r > 2) return false;
      return end(x) || k(x);
    };
    if (end(e)) return true;
    if (t_[e] == '.') {
      if (end(e + 1)) return true;
      const size_t f = digits(e + 1);
      if (f == e + 1 || f - e - 1 > 15) return false;
      return end(f) || after_exp(f);
    }
    return after_exp(e);
  }

  bool object(const Json& s, size_t p, const K& k) {
    if (t_[p] != '{') return false;
    std::vector<std::pair<std::string, const Json*>> props;
    std::set<std::string> req;
    if (s.contains("required"))
      for (const auto& r : s["required"]) req.insert(r.get<std::string>());
    static const Json kAny = Json::object();
    if (s.contains("properties"))
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) props.push_back({it.key(), &it.value()});
    for (const auto& r : req) {
      bool f = false;
      for (const auto& pr : props) f = f || pr.first == r;
      if (!f) props.push_back({r, &kAny});
    }
    const Json* extra = nullptr;
    if (s.contains("additionalProperties")) {
      if (s["additionalProperties"] != false) extra = s["additionalProperties"].is_boolean() ? &kAny : &s["additionalProperties"];
    } else if (!s.contains("properties")) {
      extra = &kAny;
    }
    std::function<bool(size_t, size_t, bool)> members = [&](size_t i, size_t q, bool wrote) -> bool {
      if (end(q)) return true;
      bool req_left = false;
      for (size_t j = i; j < props.size(); ++j) req_left = req_left || req.count(props[j].first);
      if (!req_left && t_[q] == '}' && k(q + 1)) return true;
      auto sep_then = [&](const K& kk) { return wrote ? then_lit(q, ",", [&](size_t r) { return opt_space(r, kk); }) : kk(q); };
      for (size_t j = i; j < props.size(); ++j) {
        const auto& [name, sch] = props[j];
        if (sep_then([&](size_t r) {
              return then_lit(r, Json(name).dump() + ":", [&](size_t r2) {
                return opt_space(r2, [&](size_t r3) { return value(*sch, r3, [&](size_t r4) { return members(j + 1, r4, true); }); });
              });
            }))
          return true;
        if (req.count(name)) break;  // a required one cannot be skipped
      }
      if (extra && !req_left)
        return sep_then([&](size_t r) {
          if (end(r)) return true;
          if (t_[r] != '"') return false;
          size_t e = r + 1;  // extra keys: no escapes, not a declared name
          while (!end(e) && t_[e] != '"') {
            if (t_[e] == '\\' || static_cast<unsigned char>(t_[e]) < 0x20) return false;
            const int n = utf8(e);
            if (n == -1) return true;
            if (n == 0) return false;
            e += size_t(n);
          }
          if (end(e)) return true;
          const std::string key(t_.substr(r + 1, e - r - 1));
          for (const auto& pr : props)
            if (pr.first == key) return false;
          return then_lit(e, "\":", [&](size_t r2) {
            return opt_space(r2, [&](size_t r3) { return value(*extra, r3, [&](size_t r4) { return members(props.size(), r4, true); }); });
          });
        });
      return false;
    };
    return members(0, p + 1, false);
  }

  bool array(const Json& s, size_t p, const K& k) {
    if (t_[p] != '[') return false;
    const size_t mn = s.value("minItems", size_t(0)), mx = s.value("maxItems", size_t(1) << 40);
    static const Json kAny = Json::object();
    const Json& item = s.contains("items") ? s["items"] : kAny;
    std::function<bool(size_t, size_t)> elems = [&](size_t n, size_t q) -> bool {
      if (end(q)) return true;
      if (n >= mn && t_[q] == ']' && k(q + 1)) return true;
      if (n >= mx) return false;
      auto el = [&](size_t r) { return value(item, r, [&](size_t r2) { return elems(n + 1, r2); }); };
      if (n == 0) return el(q);
      return then_lit(q, ",", [&](size_t r) { return opt_space(r, el); });
    };
    return elems(0, p + 1);
  }

  std::string_view t_;
  const Json& root_;
};

inline bool viable_prefix(std::string_view text, const Json& schema, const Json& root) {
  return PrefixChecker(text, root).viable(schema);
}

}  // namespace schema_test
