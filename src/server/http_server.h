// The HTTP front, event-driven (Boost.Asio, Boost.Beast's request parser): a few event-loop threads own every
// socket and enforce per-connection deadlines (idle, whole head, whole body, write progress), a connection
// cap, pipelining in order and HTTP/1.0 framing; handlers run on a worker pool, so an open connection holds
// no thread until a whole request has arrived. Routes, API-key check, body limits, error shapes, access log
// and metrics live here; the handlers (handlers.h) know nothing of sockets.
//
// Shutdown (stop): stop accepting, close connections with no request in progress, let running requests
// finish for the grace period, then end the rest through `abort_running` (each open stream then writes its
// final event: finish_reason "abort" + [DONE], or Anthropic's error event), flush, and return from run().
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "server/server_context.h"

namespace dsv4::server {

class HttpServer {
 public:
  // threads: workers running handlers (each running request holds one). abort_running ends every running
  // generation so that streams finish with a final event; without it, shutdown just stops them.
  HttpServer(ServerContext& ctx, int threads, std::function<void()> abort_running = {});
  ~HttpServer();
  int bind(const std::string& host, int port);  // port 0 picks a free one; returns the bound port
  void run();                                   // serves until stop() finished draining
  void stop();                                  // thread-safe, idempotent; blocks while it drains
  size_t open_connections() const;

 private:
  friend class Connection;
  friend class StreamWriter;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Equal-length-independent comparison whose time depends only on the secret's length.
bool constant_time_equal(std::string_view given, std::string_view secret);

}  // namespace dsv4::server
