// The API handlers, independent of the HTTP library: a handler gets the request body and a way to tell
// whether the client is still there, and returns a Reply; a streaming Reply carries a function that writes
// the event stream once the headers are out. http_server.cpp binds them to routes.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/api_error.h"
#include "server/server_context.h"

namespace dsv4::server {

class StreamSink {
 public:
  virtual ~StreamSink() = default;
  virtual bool write(std::string_view data) = 0;  // false: the client is gone
  virtual bool client_gone() = 0;
};

struct Reply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::function<void(StreamSink&)> stream;  // set: a text/event-stream response
  std::vector<std::pair<std::string, std::string>> headers;  // extra response headers
};

struct HttpRequest {
  std::string_view body;
  std::string path_id;  // the {id} of /v1/responses/{id} routes
  std::function<bool()> client_gone = [] { return false; };
};

Reply json_reply(const Json& j, int status = 200);
Reply error_reply(Api api, const ApiError& e);

// OpenAI-compatible (and vLLM's extras). Each throws ApiError for bad requests.
Reply handle_chat_completions(ServerContext& ctx, const HttpRequest& req);
Reply handle_completions(ServerContext& ctx, const HttpRequest& req);
Reply handle_models(ServerContext& ctx);
Reply handle_tokenize(ServerContext& ctx, const HttpRequest& req);
Reply handle_detokenize(ServerContext& ctx, const HttpRequest& req);
// Anthropic Messages API.
Reply handle_messages(ServerContext& ctx, const HttpRequest& req);
Reply handle_count_tokens(ServerContext& ctx, const HttpRequest& req);
// OpenAI Responses API (responses_api.cpp): create, and retrieve / cancel / delete stored responses.
Reply handle_responses(ServerContext& ctx, const HttpRequest& req);
Reply handle_get_response(ServerContext& ctx, const HttpRequest& req);
Reply handle_cancel_response(ServerContext& ctx, const HttpRequest& req);
Reply handle_delete_response(ServerContext& ctx, const HttpRequest& req);

}  // namespace dsv4::server
