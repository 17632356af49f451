#include "server/json_fields.h"

#include <fmt/format.h>

#include <cmath>
#include <memory>
#include <unordered_map>
#include <vector>

namespace dsv4::server {

namespace {

JsonLimits g_limits;

// The vector under ordered_map: indexing and emplace_back without ordered_map's key search.
using Entries = std::vector<Json::object_t::value_type>;
Entries& entries(Json::object_t& o) { return static_cast<Entries&>(o); }
const Entries& entries(const Json::object_t& o) { return static_cast<const Entries&>(o); }

// nlohmann SAX consumer that builds the Json: objects are appended to directly (no per-insert key search);
// duplicate keys keep the last value, as nlohmann and Python's json do, found through a hash index that
// only objects with many keys pay for.
class Builder {
 public:
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  explicit Builder(const JsonLimits& l) : lim_(l) {}

  bool null() { return put(Json(nullptr)); }
  bool boolean(bool v) { return put(Json(v)); }
  bool number_integer(number_integer_t v) { return put(Json(v)); }
  bool number_unsigned(number_unsigned_t v) { return put(Json(v)); }
  bool number_float(number_float_t v, const string_t&) { return put(Json(v)); }
  bool string(string_t& v) { return put(Json(std::move(v))); }
  bool binary(binary_t&) { return fail("binary values are not JSON"); }
  bool start_object(std::size_t) { return open(Json::object()); }
  bool start_array(std::size_t) { return open(Json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(string_t& k) {
    Frame& f = stack_.back();
    auto& obj = f.value->get_ref<Json::object_t&>();
    if (obj.size() >= lim_.max_object_keys)
      return fail(fmt::format("an object at '{}' has more than {} keys (--max-json-object-keys)", path(false),
                              lim_.max_object_keys));
    f.slot = find_existing(f, obj, k);
    if (f.slot == SIZE_MAX) {
      if (f.index) f.index->emplace(k, obj.size());
      f.slot = obj.size();
      entries(obj).emplace_back(std::move(k), nullptr);
    }
    return true;
  }

  bool parse_error(std::size_t pos, const std::string& token, const nlohmann::detail::exception& e) {
    if (!error_.empty()) return false;  // a cap already failed; keep its message
    if (e.id == 406) {                  // out_of_range: a number beyond double range
      error_ = fmt::format("the number {} at byte {}{} is outside the range of a double", token, pos,
                           stack_.empty() ? "" : fmt::format(" (field '{}')", path()));
    } else {
      // nlohmann's message names the byte offset; drop its "[json.exception.parse_error.101] " prefix.
      std::string m = e.what();
      if (auto p = m.find("] "); p != std::string::npos) m = m.substr(p + 2);
      error_ = m;
    }
    return false;
  }

  Json& result() { return root_; }
  const std::string& error() const { return error_; }

 private:
  struct Frame {
    Json* value;
    size_t slot = SIZE_MAX;  // objects: the entry the next value fills
    std::unique_ptr<std::unordered_map<std::string, size_t>> index;
  };
  static constexpr size_t kIndexFrom = 32;  // below this, a linear duplicate check is cheaper

  size_t find_existing(Frame& f, Json::object_t& obj, const std::string& k) {
    if (!f.index && obj.size() >= kIndexFrom) {
      f.index = std::make_unique<std::unordered_map<std::string, size_t>>();
      for (size_t i = 0; i < obj.size(); ++i) (*f.index)[entries(obj)[i].first] = i;
    }
    if (f.index) {
      auto it = f.index->find(k);
      return it == f.index->end() ? SIZE_MAX : it->second;
    }
    for (size_t i = 0; i < obj.size(); ++i)
      if (entries(obj)[i].first == k) return i;
    return SIZE_MAX;
  }

  Json* slot_for_value() {
    if (stack_.empty()) return &root_;
    Frame& f = stack_.back();
    if (f.value->is_array()) {
      auto& a = f.value->get_ref<Json::array_t&>();
      a.emplace_back(nullptr);
      return &a.back();
    }
    return &entries(f.value->get_ref<Json::object_t&>())[f.slot].second;
  }

  bool count() {
    if (++values_ <= lim_.max_values) return true;
    return fail(fmt::format("the JSON has more than {} values (--max-json-values): the next at '{}'",
                            lim_.max_values, path()));
  }

  bool put(Json v) {
    if (!count()) return false;
    *slot_for_value() = std::move(v);
    return true;
  }

  bool open(Json v) {
    if (!count()) return false;
    if (int(stack_.size()) >= lim_.max_depth)
      return fail(
          fmt::format("the JSON nests deeper than {} levels at '{}' (--max-json-depth)", lim_.max_depth, path()));
    Json* s = slot_for_value();
    *s = std::move(v);
    stack_.push_back(Frame{s, SIZE_MAX, nullptr});
    return true;
  }

  bool close() {
    stack_.pop_back();
    return true;
  }

  // The field path of the value being read (not yet stored), e.g. messages[3].content, for error messages;
  // without `inner`, of the innermost open container itself.
  std::string path(bool inner = true) const {
    std::string p;
    for (size_t i = 0; i < stack_.size(); ++i) {
      const Frame& f = stack_[i];
      const bool innermost = i + 1 == stack_.size();
      if (!inner && innermost) break;
      if (f.value->is_array()) {
        // An outer array's last element is the open child; the innermost one's next element is being read.
        p += fmt::format("[{}]", innermost ? f.value->size() : f.value->size() - 1);
      } else if (f.slot != SIZE_MAX) {
        if (!p.empty()) p += '.';
        p += entries(f.value->get_ref<const Json::object_t&>())[f.slot].first;
      }
    }
    return p.empty() ? "(top level)" : p;
  }

  bool fail(std::string m) {
    error_ = std::move(m);
    return false;
  }

  const JsonLimits& lim_;
  Json root_;
  std::vector<Frame> stack_;
  std::string error_;
  size_t values_ = 0;
};

}  // namespace

void set_json_limits(const JsonLimits& l) { g_limits = l; }
const JsonLimits& json_limits() { return g_limits; }

Json parse_body(std::string_view body) { return parse_body(body, g_limits); }

Json parse_body(std::string_view body, const JsonLimits& limits) {
  Builder b(limits);
  if (!Json::sax_parse(body.begin(), body.end(), &b)) {
    std::string m = b.error().empty() ? std::string("invalid JSON") : b.error();
    throw ApiError(400, "malformed JSON in the request body: " + m);
  }
  Json j = std::move(b.result());
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

const Json* find_field(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
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
  if (v->is_number_integer()) {
    // Unsigned values above INT64_MAX would wrap negative.
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
      throw ApiError(400, fmt::format("'{}' is too large", key), key);
    return v->get<int64_t>();
  }
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

std::string nested_string(const Json& obj, const char* key, const std::string& where, std::string def) {
  const Json* v = find_field(obj, key);
  if (!v) return def;
  if (!v->is_string()) {
    const std::string f = where.empty() ? std::string(key) : where + "." + key;
    throw ApiError(400, fmt::format("'{}' must be a string", f), f);
  }
  return v->get<std::string>();
}

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace dsv4::server
