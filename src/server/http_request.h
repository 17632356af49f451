// Reading one HTTP/1.x request off a connection's bytes, independent of sockets (the connection code and the
// fuzz target share it): Boost.Beast's parser, plus the checks that must answer before a body is read —
// the route (404, or 405 with Allow for a wrong method), Content-Length present on POST (411), the body
// limit of the route (413 at once, from the header), transfer codings (only chunked), Expect: 100-continue.
#pragma once
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "server/api_error.h"
#include "server/http_limits.h"

namespace dsv4::server {

namespace bhttp = boost::beast::http;
using BeastRequest = bhttp::request<bhttp::string_body>;

enum class Route {
  ChatCompletions,
  Completions,
  Messages,
  CountTokens,
  Tokenize,
  Detokenize,
  Models,
  Responses,
  ResponseGet,
  ResponseDelete,
  ResponseCancel,
  Health,
  Version,
  Metrics,
  ExpertLoad
};

struct RouteInfo {
  Route route;
  const char* method;
  const char* path;  // "{id}" matches one path segment of [A-Za-z0-9_-] (RouteLookup::path_id)
  Api api;
  bool prompt_body;  // the body carries a prompt: capped by what the context can hold
  bool keyed;        // --api-key applies
};

struct RouteLookup {
  const RouteInfo* route = nullptr;  // null: no route for this method and path
  std::string allow;                 // the path exists for these methods (405), else 404
  std::string path_id;               // what "{id}" matched
};
RouteLookup find_route(std::string_view method, std::string_view target);  // target may carry ?query

class RequestReader {
 public:
  enum class State { NeedMore, Complete, Error };
  // body_limit: --max-request-body-bytes; prompt_body_limit (0: none) caps prompt routes further.
  RequestReader(const HttpLimits& lim, size_t body_limit, size_t prompt_body_limit);

  // Parses what `in` holds and consumes it. After Complete, request() is whole; after Error, error() says
  // what to answer (the connection must close: its framing is lost or the body was left unread).
  State feed(boost::beast::flat_buffer& in);
  bool started() const { return started_; }  // a byte of this request arrived
  bool head_done() const { return head_checked_; }
  bool take_continue();  // true once when the client waits for 100 Continue
  const RouteLookup& route() const { return route_; }
  BeastRequest& request() { return parser_->get(); }
  const ApiError& error() const { return *error_; }
  void reset();  // for the next request on a keep-alive connection

 private:
  State fail(int status, std::string msg);
  State check_head();
  const HttpLimits& lim_;
  size_t body_limit_, prompt_body_limit_, applied_limit_ = 0;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  RouteLookup route_;
  std::optional<ApiError> error_;
  bool started_ = false, head_checked_ = false, continue_ = false;
};

// Bytes a client controls (method, path), made safe for one log line: control bytes, quotes, backslashes
// and non-ASCII become \xNN, and the result is cut at `max` characters.
std::string log_safe(std::string_view s, size_t max = 256);
// A metrics label for a method: known methods as is, anything else "other" (label values stay bounded).
std::string method_label(std::string_view m);

// The largest body that could still carry a prompt fitting `max_model_len` tokens: each token covers at most
// `max_token_bytes` bytes of text, JSON escaping turns a byte into at most 6 (\u00XX), plus room for the
// request's other fields. A larger body is refused before it is parsed or tokenized.
size_t prompt_body_limit(int64_t max_model_len, size_t max_token_bytes);

}  // namespace dsv4::server
