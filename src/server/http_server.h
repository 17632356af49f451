// The HTTP front: routes, API-key check, body-size limit, error shapes, access log and metrics, streaming,
// and client-disconnect detection (an SSE stream or a blocked non-streaming request whose client went away
// aborts its generation, which frees its KV blocks at once).
#pragma once
#include <memory>
#include <string>

#include "server/server_context.h"

namespace dsv4::server {

class HttpServer {
 public:
  HttpServer(ServerContext& ctx, int threads);
  ~HttpServer();
  int bind(const std::string& host, int port);  // port 0 picks a free one; returns the bound port
  void run();                                   // serves until stop()
  void stop();                                  // thread-safe; running handlers abort their generations

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Equal-length-independent comparison whose time depends only on the secret's length.
bool constant_time_equal(std::string_view given, std::string_view secret);

}  // namespace dsv4::server
