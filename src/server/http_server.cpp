#include "server/http_server.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>

#include "core/error.h"
#include "server/handlers.h"
#include "server/openai_common.h"

namespace dsv4::server {

namespace {

// The socket of a request's connection: httplib (0.11) does not hand it to handlers, so it is found by the
// connection's addresses among this process's sockets (cached per thread: keep-alive requests reuse it).
std::string numeric_host(const sockaddr_storage& a, socklen_t len, int& port) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return {};
  port = std::atoi(serv);
  return host;
}

bool is_connection(int fd, const httplib::Request& req) {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return false;
  int port = -1;
  if (numeric_host(a, len, port) != req.remote_addr || port != req.remote_port) return false;
  len = sizeof a;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return false;
  numeric_host(a, len, port);
  return port == req.local_port;
}

int connection_fd(const httplib::Request& req) {
  thread_local int cached = -1;
  if (cached >= 0 && is_connection(cached, req)) return cached;
  cached = -1;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d)) {
      const int fd = std::atoi(e->d_name);
      if (e->d_name[0] != '.' && fd != dirfd(d) && is_connection(fd, req)) {
        cached = fd;
        break;
      }
    }
    closedir(d);
  }
  return cached;
}

// True once the peer closed or reset the connection. HTTP clients do not half-close while waiting for a
// response, so end-of-stream on the read side means the client is gone.
bool peer_closed(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, short(POLLIN | POLLRDHUP), 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }
  return false;
}

class Sink final : public StreamSink {
 public:
  Sink(httplib::DataSink& s, int fd) : s_(s), fd_(fd) {}
  bool write(std::string_view d) override { return ok_ = ok_ && s_.write(d.data(), d.size()); }
  bool client_gone() override { return !ok_ || peer_closed(fd_); }
  bool ok() const { return ok_; }

 private:
  httplib::DataSink& s_;
  int fd_;
  bool ok_ = true;
};

void send(const Reply& rep, httplib::Response& res, int fd = -1) {
  res.status = rep.status;
  for (const auto& [k, v] : rep.headers) res.set_header(k.c_str(), v);
  if (!rep.stream) {
    res.set_content(rep.body, rep.content_type.c_str());
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // proxies must not buffer the stream
  auto fn = rep.stream;
  res.set_chunked_content_provider(rep.content_type, [fn, fd](size_t, httplib::DataSink& ds) {
    Sink sink(ds, fd);
    fn(sink);
    if (!sink.ok()) return false;
    ds.done();
    return true;
  });
}

}  // namespace

bool constant_time_equal(std::string_view given, std::string_view secret) {
  unsigned char diff = given.size() != secret.size();
  for (size_t i = 0; i < secret.size(); ++i) diff |= uint8_t(i < given.size() ? given[i] : 0) ^ uint8_t(secret[i]);
  return diff == 0;
}

struct HttpServer::Impl {
  ServerContext& ctx;
  httplib::Server svr;
  explicit Impl(ServerContext& c) : ctx(c) {}

  // --api-key guards /v1/* (as vLLM). Checked in the handler, after httplib read the body, so a rejected
  // keep-alive connection stays in sync for its next request.
  void check_key(const httplib::Request& req) const {
    const std::string& key = ctx.opt.api_key;
    if (key.empty() || req.path.rfind("/v1/", 0) != 0) return;
    std::string given = req.get_header_value("x-api-key");
    const std::string auth = req.get_header_value("Authorization");
    if (auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
    if (!constant_time_equal(given, key))
      throw ApiError(401, given.empty() ? "missing API key" : "invalid API key", {}, "invalid_api_key");
  }

  using Fn = std::function<Reply(ServerContext&, const HttpRequest&)>;
  httplib::Server::Handler wrap(Api api, Fn fn) {
    return [this, api, fn](const httplib::Request& req, httplib::Response& res) {
      const int fd = connection_fd(req);
      HttpRequest hr{req.body, req.matches.size() > 1 ? req.matches[1].str() : std::string(),
                     [fd] { return peer_closed(fd); }};
      // Clients log these to correlate failures: the caller's X-Request-Id when it sent one, else ours.
      std::string rid = req.get_header_value("x-request-id");
      if (rid.empty() || rid.size() > 128) rid = random_id("req_");
      Reply rep;
      try {
        check_key(req);
        rep = fn(ctx, hr);
      } catch (const ApiError& e) {
        rep = error_reply(api, e);
      } catch (const Error& e) {
        rep = error_reply(api, ApiError(400, e.what()));
      } catch (const std::exception& e) {
        spdlog::error("{} {}: {}", req.method, req.path, e.what());
        rep = error_reply(api, ApiError(500, std::string("internal error: ") + e.what()));
      }
      rep.headers.emplace_back("x-request-id", rid);
      rep.headers.emplace_back("request-id", rid);
      send(rep, res, fd);
    };
  }
};

HttpServer::HttpServer(ServerContext& ctx, int threads) : impl_(std::make_unique<Impl>(ctx)) {
  auto& svr = impl_->svr;
  auto* I = impl_.get();
  const size_t n = size_t(std::max(threads, 4));
  svr.new_task_queue = [n] { return new httplib::ThreadPool(n); };
  svr.set_payload_max_length(ctx.opt.max_body_bytes);
  svr.set_read_timeout(60, 0);
  svr.set_write_timeout(60, 0);
  svr.set_keep_alive_max_count(1000);
  svr.set_tcp_nodelay(true);

  // Statuses httplib sets itself (no route, body too large, bad request line) get the API's error shape.
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string msg = res.status == 404   ? "not found: " + req.method + " " + req.path
                      : res.status == 413 ? "the request body exceeds the size limit (--max-request-body-bytes)"
                                          : std::string("HTTP error ") + std::to_string(res.status);
    send(error_reply(api_of_path(req.path), ApiError(res.status, msg)), res);
  });
  svr.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("{} {}: {}", req.method, req.path, what);
    send(error_reply(api_of_path(req.path), ApiError(500, "internal error: " + what)), res);
  });
  svr.set_logger([I](const httplib::Request& req, const httplib::Response& res) {
    I->ctx.metrics.record_http(req.method, endpoint_label(req.path), res.status);
    spdlog::info("{}:{} \"{} {}\" {}", req.remote_addr, req.remote_port, req.method, req.path, res.status);
  });

  svr.Post("/v1/chat/completions", I->wrap(Api::OpenAI, handle_chat_completions));
  svr.Post("/v1/completions", I->wrap(Api::OpenAI, handle_completions));
  svr.Post("/v1/messages", I->wrap(Api::Anthropic, handle_messages));
  svr.Post("/v1/messages/count_tokens", I->wrap(Api::Anthropic, handle_count_tokens));
  svr.Post("/v1/responses", I->wrap(Api::OpenAI, handle_responses));
  svr.Get(R"(/v1/responses/([A-Za-z0-9_\-]+))", I->wrap(Api::OpenAI, handle_get_response));
  svr.Delete(R"(/v1/responses/([A-Za-z0-9_\-]+))", I->wrap(Api::OpenAI, handle_delete_response));
  svr.Post(R"(/v1/responses/([A-Za-z0-9_\-]+)/cancel)", I->wrap(Api::OpenAI, handle_cancel_response));
  svr.Post("/tokenize", I->wrap(Api::OpenAI, handle_tokenize));
  svr.Post("/detokenize", I->wrap(Api::OpenAI, handle_detokenize));
  svr.Get("/v1/models", I->wrap(Api::OpenAI, [](ServerContext& c, const HttpRequest&) { return handle_models(c); }));
  svr.Get("/health", [](const httplib::Request&, httplib::Response& res) { res.status = 200; });
  svr.Get("/version", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"version":"dsv4"})", "application/json");
  });
  svr.Get("/metrics", [I](const httplib::Request&, httplib::Response& res) {
    res.set_content(I->ctx.metrics.render(I->ctx.generator.stats()), "text/plain; version=0.0.4; charset=utf-8");
  });
}

HttpServer::~HttpServer() = default;

int HttpServer::bind(const std::string& host, int port) {
  auto& svr = impl_->svr;
  const int bound = port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) fail("cannot listen on {}:{} ({})", host, port, std::strerror(errno));
  return bound;
}

void HttpServer::run() { impl_->svr.listen_after_bind(); }

void HttpServer::stop() {
  impl_->ctx.stopping = true;
  impl_->svr.stop();
}

}  // namespace dsv4::server
