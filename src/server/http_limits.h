// Every limit the HTTP layer enforces, with the `dsv4 serve` flag that sets it (docs/security.md lists them
// with their reasons). Times are in seconds.
#pragma once
#include <cstddef>

namespace dsv4::server {

struct HttpLimits {
  size_t max_connections = 4096;              // --max-connections: open sockets; more are answered 503 and closed
  size_t max_header_bytes = 16384;            // --max-header-bytes: request line + headers (431 beyond)
  double header_timeout = 10;                 // --http-header-timeout: the whole head, from its first byte (slow-loris)
  double body_timeout = 60;                   // --http-body-timeout: the whole body, from the end of the head
  double idle_timeout = 30;                   // --http-idle-timeout: keep-alive wait for the next request's first byte
  double write_timeout = 10;                  // --http-write-timeout: a response write that makes no progress this long
                                              // means the client stopped reading; its generation is aborted
  size_t max_stream_buffer_bytes = 4u << 20;  // --max-stream-buffer-bytes: unsent stream output per client
  size_t max_pipeline_bytes = 1u << 20;       // pipelined bytes read ahead while a request is handled
  double shutdown_grace = 10;                 // --shutdown-grace-period: running requests may finish this long
  int io_threads = 2;                         // event-loop threads (handlers run on the worker pool)
};

}  // namespace dsv4::server
