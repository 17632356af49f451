#include "server/http_request.h"

#include <fmt/format.h>

#include <array>
#include <cctype>

namespace dsv4::server {

namespace {

constexpr std::array<RouteInfo, 15> kRoutes = {{
    {Route::ChatCompletions, "POST", "/v1/chat/completions", Api::OpenAI, true, true},
    {Route::Completions, "POST", "/v1/completions", Api::OpenAI, true, true},
    {Route::Messages, "POST", "/v1/messages", Api::Anthropic, true, true},
    {Route::CountTokens, "POST", "/v1/messages/count_tokens", Api::Anthropic, true, true},
    {Route::Tokenize, "POST", "/tokenize", Api::OpenAI, true, true},
    {Route::Detokenize, "POST", "/detokenize", Api::OpenAI, false, true},
    {Route::Models, "GET", "/v1/models", Api::OpenAI, false, true},
    {Route::Responses, "POST", "/v1/responses", Api::OpenAI, true, true},
    {Route::ResponseGet, "GET", "/v1/responses/{id}", Api::OpenAI, false, true},
    {Route::ResponseDelete, "DELETE", "/v1/responses/{id}", Api::OpenAI, false, true},
    {Route::ResponseCancel, "POST", "/v1/responses/{id}/cancel", Api::OpenAI, false, true},
    {Route::Health, "GET", "/health", Api::OpenAI, false, false},
    {Route::Version, "GET", "/version", Api::OpenAI, false, false},
    {Route::Metrics, "GET", "/metrics", Api::OpenAI, false, false},
    {Route::ExpertLoad, "GET", "/expert_load", Api::OpenAI, false, false},
}};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(uint8_t(a[i])) != std::tolower(uint8_t(b[i]))) return false;
  return true;
}

// The Content-Length value as the client wrote it (Beast rejects values it cannot hold without saying why).
// `head` is what Beast left unconsumed: it may start at any header line.
std::string_view raw_content_length(std::string_view head) {
  for (size_t p = 0; p < head.size();) {
    const size_t end = std::min(head.find('\n', p), head.size());
    std::string_view line = head.substr(p, end - p);
    p = end + 1;
    if (line.empty() || line == "\r") break;  // the end of the head
    if (line.size() > 15 && iequals(line.substr(0, 15), "content-length:")) {
      line.remove_prefix(15);
      while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
      return line;
    }
  }
  return {};
}

// Matches `path` against a route pattern; "{id}" takes one non-empty segment of [A-Za-z0-9_-].
bool match_path(std::string_view pattern, std::string_view path, std::string* id) {
  const size_t at = pattern.find("{id}");
  if (at == std::string_view::npos) return path == pattern;
  const std::string_view pre = pattern.substr(0, at), post = pattern.substr(at + 4);
  if (path.size() <= pre.size() + post.size() || path.substr(0, pre.size()) != pre ||
      path.substr(path.size() - post.size()) != post)
    return false;
  const std::string_view seg = path.substr(pre.size(), path.size() - pre.size() - post.size());
  for (char c : seg)
    if (!std::isalnum(uint8_t(c)) && c != '_' && c != '-') return false;
  *id = std::string(seg);
  return true;
}

}  // namespace

RouteLookup find_route(std::string_view method, std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  RouteLookup r;
  for (const auto& route : kRoutes) {
    std::string id;
    if (!match_path(route.path, path, &id)) continue;
    if (method == route.method) {
      r.route = &route;
      r.path_id = std::move(id);
      r.allow.clear();
      return r;
    }
    if (!r.allow.empty()) r.allow += ", ";
    r.allow += route.method;
  }
  return r;
}

RequestReader::RequestReader(const HttpLimits& lim, size_t body_limit, size_t prompt_body_limit)
    : lim_(lim), body_limit_(body_limit), prompt_body_limit_(prompt_body_limit) {
  reset();
}

void RequestReader::reset() {
  parser_.emplace();
  parser_->header_limit(uint32_t(std::min<size_t>(lim_.max_header_bytes, UINT32_MAX)));
  // No limit until the head names the route: check_head sets the route's (Beast would otherwise refuse a
  // large Content-Length before the route, and so the API's error shape, is known).
  parser_->body_limit(UINT64_MAX);
  applied_limit_ = body_limit_;
  parser_->eager(false);  // stop after the head, so that check_head runs before any body byte is taken
  route_ = {};
  error_.reset();
  started_ = head_checked_ = continue_ = false;
}

bool RequestReader::take_continue() {
  const bool c = continue_;
  continue_ = false;
  return c;
}

RequestReader::State RequestReader::fail(int status, std::string msg) {
  error_.emplace(status, std::move(msg));
  return State::Error;
}

RequestReader::State RequestReader::check_head() {
  head_checked_ = true;
  const auto& req = parser_->get();
  const std::string_view method(req.method_string().data(), req.method_string().size());
  const std::string_view target(req.target().data(), req.target().size());
  route_ = find_route(method, target);
  if (!route_.route) {
    if (!route_.allow.empty())
      return fail(405, fmt::format("method {} is not allowed on {} (allowed: {})", log_safe(method, 32),
                                   log_safe(target.substr(0, target.find('?'))), route_.allow));
    return fail(404, fmt::format("not found: {} {}", log_safe(method, 32), log_safe(target)));
  }
  // Only chunked is understood; a request naming another coding (gzip, ...) cannot be read correctly.
  if (auto te = req.find(bhttp::field::transfer_encoding); te != req.end()) {
    if (!iequals(std::string_view(te->value().data(), te->value().size()), "chunked"))
      return fail(400, "Transfer-Encoding other than chunked is not supported");
  }
  const bool post = req.method() == bhttp::verb::post;
  const auto len = parser_->content_length();
  if (post && !len && !parser_->chunked())
    return fail(411, "a POST request needs a Content-Length header (or Transfer-Encoding: chunked)");
  const size_t limit =
      route_.route->prompt_body && prompt_body_limit_ ? std::min(body_limit_, prompt_body_limit_) : body_limit_;
  parser_->body_limit(limit);
  parser_->eager(true);
  applied_limit_ = limit;
  if (len && *len > limit) {
    if (route_.route->prompt_body && limit < body_limit_)
      return fail(413, fmt::format("the request body ({} bytes) cannot hold a prompt that fits this model's "
                                   "context ({} bytes at most)",
                                   *len, limit));
    return fail(413, fmt::format("the request body ({} bytes) exceeds the size limit of {} bytes "
                                 "(--max-request-body-bytes)",
                                 *len, limit));
  }
  if (auto ex = req.find(bhttp::field::expect); ex != req.end())
    continue_ = iequals(std::string_view(ex->value().data(), ex->value().size()), "100-continue") &&
                (parser_->chunked() || (len && *len > 0));
  return State::NeedMore;
}

RequestReader::State RequestReader::feed(boost::beast::flat_buffer& in) {
  if (error_) return State::Error;
  while (in.size() > 0 && !parser_->is_done()) {
    started_ = true;
    boost::beast::error_code ec;
    const size_t n = parser_->put(in.data(), ec);
    in.consume(n);
    if (ec == bhttp::error::need_more) break;
    if (ec == bhttp::error::header_limit)
      return fail(431, fmt::format("the request head exceeds {} bytes (--max-header-bytes)", lim_.max_header_bytes));
    if (ec == bhttp::error::body_limit)
      return fail(413, fmt::format("the request body exceeds the size limit of {} bytes{}", applied_limit_,
                                   applied_limit_ == body_limit_ ? " (--max-request-body-bytes)" : ""));
    if (ec == bhttp::error::bad_content_length) {
      const auto* p = static_cast<const char*>(in.data().data());
      const std::string_view v = raw_content_length(std::string_view(p, in.size()));
      // Only a number too large for 64 bits is a size problem; a repeated or conflicting value, or one sent
      // with Transfer-Encoding (request smuggling), is a malformed request.
      const bool huge = v.size() > 18 && v.find_first_not_of("0123456789") == std::string_view::npos;
      if (huge) return fail(413, fmt::format("Content-Length {} exceeds every limit", log_safe(v, 40)));
      return fail(400, "invalid Content-Length: malformed, repeated with another value, or sent with "
                       "Transfer-Encoding");
    }
    if (ec) return fail(400, "malformed HTTP request: " + ec.message());
    if (parser_->is_header_done() && !head_checked_)
      if (State s = check_head(); s != State::NeedMore) return s;
  }
  if (parser_->is_header_done() && !head_checked_)
    if (State s = check_head(); s != State::NeedMore) return s;
  return parser_->is_done() ? State::Complete : State::NeedMore;
}

std::string log_safe(std::string_view s, size_t max) {
  std::string r;
  for (unsigned char c : s) {
    if (r.size() >= max) {
      r += "...";
      break;
    }
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
      r += fmt::format("\\x{:02x}", c);
    else
      r += char(c);
  }
  return r;
}

std::string method_label(std::string_view m) {
  for (const char* k : {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
    if (m == k) return k;
  return "other";
}

size_t prompt_body_limit(int64_t max_model_len, size_t max_token_bytes) {
  const double b = double(max_model_len) * double(max_token_bytes) * 6.0 + double(256 << 10);
  return b > double(SIZE_MAX / 2) ? SIZE_MAX / 2 : size_t(b);
}

}  // namespace dsv4::server
