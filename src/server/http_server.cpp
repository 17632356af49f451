#include "server/http_server.h"

#include <fmt/format.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

#include <boost/asio.hpp>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "runtime/rank_identity.h"
#include "server/handlers.h"
#include "server/http_request.h"
#include "server/openai_common.h"
#include "server/json_fields.h"

namespace dsv4::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool constant_time_equal(std::string_view given, std::string_view secret) {
  unsigned char diff = given.size() != secret.size();
  for (size_t i = 0; i < secret.size(); ++i) diff |= uint8_t(i < given.size() ? given[i] : 0) ^ uint8_t(secret[i]);
  return diff == 0;
}

namespace {

// Handlers block (tokenizing, waiting on the engine), so they run here, never on an event-loop thread.
// A task goes to the most recently idle worker: under light load the same few threads do all the work, so
// per-thread memory (the tokenizer's word cache, a malloc arena: a few MB each) exists in a few threads
// rather than in every one of the pool.
class WorkerPool {
 public:
  WorkerPool(size_t threads, size_t max_queued) : workers_(threads), max_queued_(max_queued) {
    for (auto& w : workers_) w.thread = std::thread([this, &w] { loop(w); });
  }
  ~WorkerPool() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    for (auto& w : workers_) w.cv.notify_one();
    for (auto& w : workers_) w.thread.join();
  }
  // False when the queue is full: the caller answers 503 instead of queueing without bound.
  bool submit(std::function<void()> f) {
    std::unique_lock lk(mu_);
    if (!idle_.empty()) {
      Worker* w = idle_.back();
      idle_.pop_back();
      w->task = std::move(f);
      ++busy_;
      lk.unlock();
      w->cv.notify_one();
      return true;
    }
    if (q_.size() >= max_queued_) return false;
    q_.push_back(std::move(f));
    ++busy_;
    return true;
  }
  // Waits until nothing runs or waits; false at `until` with work left.
  bool wait_idle(Clock::time_point until) {
    std::unique_lock lk(mu_);
    return idle_cv_.wait_until(lk, until, [&] { return busy_ == 0; });
  }

 private:
  struct Worker {
    std::thread thread;
    std::condition_variable cv;
    std::function<void()> task;
  };
  void loop(Worker& w) {
    std::unique_lock lk(mu_);
    for (;;) {
      if (!w.task && !q_.empty()) {
        w.task = std::move(q_.front());
        q_.pop_front();
      }
      if (!w.task) {
        if (stop_) return;
        idle_.push_back(&w);
        w.cv.wait(lk, [&] { return stop_ || w.task; });
        if (!w.task) return;  // stopping (it is still listed as idle; nobody submits any more)
      }
      std::function<void()> f = std::move(w.task);
      w.task = nullptr;
      lk.unlock();
      f();
      f = nullptr;  // what the task captured goes before the task counts as done
      lk.lock();
      if (--busy_ == 0) idle_cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable idle_cv_;
  std::deque<Worker> workers_;
  std::vector<Worker*> idle_;  // most recently idle last
  std::deque<std::function<void()>> q_;
  size_t busy_ = 0, max_queued_;
  bool stop_ = false;
};

std::string reason_phrase(int status) {
  if (status == 499) return "Client Closed Request";
  const auto r = bhttp::obsolete_reason(bhttp::int_to_status(unsigned(status)));
  return std::string(r.data(), r.size());
}

Reply dispatch(ServerContext& ctx, Route route, const HttpRequest& hr) {
  switch (route) {
    case Route::ChatCompletions:
      return handle_chat_completions(ctx, hr);
    case Route::Completions:
      return handle_completions(ctx, hr);
    case Route::Messages:
      return handle_messages(ctx, hr);
    case Route::CountTokens:
      return handle_count_tokens(ctx, hr);
    case Route::Tokenize:
      return handle_tokenize(ctx, hr);
    case Route::Detokenize:
      return handle_detokenize(ctx, hr);
    case Route::Models:
      return handle_models(ctx);
    case Route::Responses:
      return handle_responses(ctx, hr);
    case Route::ResponseGet:
      return handle_get_response(ctx, hr);
    case Route::ResponseDelete:
      return handle_delete_response(ctx, hr);
    case Route::ResponseCancel:
      return handle_cancel_response(ctx, hr);
    case Route::Metrics: {
      Reply r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = ctx.metrics.render(ctx.generator.stats());
      return r;
    }
    case Route::ExpertLoad: {
      const ExpertLoadSnapshot el = ctx.generator.stats().expert_load;
      if (!el.enabled()) throw ApiError(404, "expert load statistics are off (serve with --expert-load-window N)");
      return Reply{200, "application/json", el.to_json().dump(), {}, {}};
    }
    case Route::Health:
      if (auto f = ctx.generator.fatal_error())
        return Reply{503, "application/json", nlohmann::json{{"status", "unhealthy"}, {"error", *f}}.dump(), {}, {}};
      return Reply{200, "application/json", "", {}, {}};
    case Route::Version:
      return Reply{200, "application/json", nlohmann::json{{"version", dsv4_version()}}.dump(), {}, {}};
  }
  throw ApiError(404, "not found");
}

}  // namespace

class Connection;

struct HttpServer::Impl {
  Impl(ServerContext& c, int threads, std::function<void()> abort)
      : ctx(c),
        lim(c.opt.http),
        acceptor(io),
        retry(io),
        pool(size_t(std::max(threads, 4)), size_t(std::max(threads, 4)) * 16),
        abort_running(std::move(abort)) {}

  ServerContext& ctx;
  const HttpLimits& lim;
  // Before io: connections the event loop still holds at its destruction unregister themselves.
  mutable std::mutex conns_mu;
  std::unordered_map<Connection*, std::weak_ptr<Connection>> conns;
  asio::io_context io;
  tcp::acceptor acceptor;
  asio::steady_timer retry;  // accept back-off when the process is out of descriptors
  // Declared after io: destroyed first, so no worker posts to a destroyed event loop.
  WorkerPool pool;
  std::function<void()> abort_running;
  std::atomic<bool> draining{false};
  std::once_flag stop_once;

  void accept();
  void reject_over_cap(tcp::socket s);
  void forget(Connection* c) {
    std::lock_guard lk(conns_mu);
    conns.erase(c);
  }
  size_t open() const {
    std::lock_guard lk(conns_mu);
    return conns.size();
  }
  void check_key(const RouteInfo& r, const std::string& auth, const std::string& xkey) const {
    const std::string& key = ctx.opt.api_key;
    if (key.empty() || !r.keyed) return;
    std::string given = xkey;
    if (auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
    if (!constant_time_equal(given, key))
      throw ApiError(401, given.empty() ? "missing API key" : "invalid API key", {}, "invalid_api_key");
  }
  void drain();
};

// One client connection. Everything but the handler runs on the connection's strand; the handler thread
// reaches it through post() and two atomics (gone_, unsent_).
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer::Impl& srv, tcp::socket s)
      : srv_(srv),
        lim_(srv.lim),
        sock_(std::move(s)),
        timer_(sock_.get_executor()),
        reader_(srv.lim, srv.ctx.opt.max_body_bytes, srv.ctx.opt.max_prompt_body_bytes) {
    boost::system::error_code ec;
    const auto ep = sock_.remote_endpoint(ec);
    peer_ = ec ? std::string("?") : fmt::format("{}:{}", ep.address().to_string(), ep.port());
  }
  ~Connection() { srv_.forget(this); }

  void start() {
    arm(Deadline::Idle, lim_.idle_timeout);
    read();
  }
  // Shutdown: a connection between requests (or still sending one) closes now; one being answered closes
  // after its response.
  void drain() {
    asio::post(sock_.get_executor(), [self = shared_from_this()] {
      if (self->phase_ == Phase::Reading) self->close();
      self->keep_alive_ = false;
    });
  }

 private:
  enum class Phase { Reading, Handling, Closing, Closed };
  enum class Deadline { None, Idle, Head, Body, Write, Linger };
  friend class StreamWriter;

  void arm(Deadline d, double seconds) {
    deadline_ = d;
    timer_.expires_after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
    timer_.async_wait([self = shared_from_this(), gen = ++timer_gen_](boost::system::error_code ec) {
      if (!ec && gen == self->timer_gen_) self->on_deadline();
    });
  }
  void disarm() {
    ++timer_gen_;
    deadline_ = Deadline::None;
    timer_.cancel();
  }

  void on_deadline() {
    switch (deadline_) {
      case Deadline::Head:
      case Deadline::Body: {
        // Slow-loris: the deadline covers the whole head (body), however the bytes trickle in.
        const bool head = deadline_ == Deadline::Head;
        spdlog::info("{} request {} not received within {} s: closing", peer_, head ? "head" : "body",
                     head ? lim_.header_timeout : lim_.body_timeout);
        respond_error(reader_.route().route ? reader_.route().route->api : Api::OpenAI,
                      ApiError(408, fmt::format("the request {} did not arrive within {} s (--http-{}-timeout)",
                                                head ? "head" : "body", head ? lim_.header_timeout : lim_.body_timeout,
                                                head ? "header" : "body")));
        return;
      }
      case Deadline::Write:
        spdlog::warn("{} made no progress reading its response for {} s: closing (--http-write-timeout)", peer_,
                     lim_.write_timeout);
        close();
        return;
      default:
        close();
    }
  }

  void read() {
    if (reading_ || phase_ == Phase::Closed) return;
    if (phase_ == Phase::Handling && in_.size() >= lim_.max_pipeline_bytes) return;  // TCP pushes back
    reading_ = true;
    sock_.async_read_some(in_.prepare(16384), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      self->on_read(ec, n);
    });
  }

  void on_read(boost::system::error_code ec, size_t n) {
    reading_ = false;
    if (phase_ == Phase::Closed) return;
    if (ec) {
      // End of stream while a request is answered: HTTP clients do not half-close while waiting, so the
      // client is gone and its generation must stop.
      close();
      return;
    }
    in_.commit(n);
    if (phase_ == Phase::Closing) in_.consume(in_.size());
    if (phase_ == Phase::Reading) parse();
    read();
  }

  void parse() {
    if (deadline_ == Deadline::Idle && in_.size() > 0) arm(Deadline::Head, lim_.header_timeout);
    const auto st = reader_.feed(in_);
    if (reader_.take_continue()) queue("HTTP/1.1 100 Continue\r\n\r\n");
    switch (st) {
      case RequestReader::State::NeedMore:
        if (reader_.head_done() && !body_armed_) {
          body_armed_ = true;
          arm(Deadline::Body, lim_.body_timeout);
        }
        return;
      case RequestReader::State::Error:
        respond_error(reader_.route().route ? reader_.route().route->api : api_of_path(target_of_head()),
                      reader_.error());
        return;
      case RequestReader::State::Complete:
        on_request();
        return;
    }
  }

  std::string target_of_head() {
    if (!reader_.head_done()) return {};
    auto t = reader_.request().target();
    return std::string(t.data(), t.size());
  }

  void on_request() {
    phase_ = Phase::Handling;
    disarm();
    BeastRequest& req = reader_.request();
    http10_ = req.version() < 11;
    // Clients log these to correlate failures: the caller's X-Request-Id when it is short and printable
    // (it is echoed into our headers), else ours.
    rid_.assign(req["x-request-id"].data(), req["x-request-id"].size());
    if (rid_.empty() || rid_.size() > 128 ||
        std::any_of(rid_.begin(), rid_.end(), [](char ch) { return uint8_t(ch) < 0x21 || uint8_t(ch) > 0x7e; }))
      rid_ = random_id("req_");
    keep_alive_ = req.keep_alive() && !srv_.draining;
    method_.assign(req.method_string().data(), req.method_string().size());
    target_.assign(req.target().data(), req.target().size());
    const RouteInfo& route = *reader_.route().route;
    // A large body's buffer must not stay with the connection (nor its thread's malloc arena, below).
    if (in_.capacity() > (64u << 10)) in_.shrink_to_fit();
    if (route.route == Route::Health || route.route == Route::Version) {  // never queued behind handlers
      send_reply(dispatch(srv_.ctx, route.route, HttpRequest{}), route.api);
      return;
    }
    auto body = std::make_shared<std::string>(std::move(req.body()));
    large_ = body->size() > kLargeBytes;
    std::string auth(req[bhttp::field::authorization]), xkey(req["x-api-key"]);
    auto self = shared_from_this();
    std::string path_id = reader_.route().path_id;
    const bool queued = srv_.pool.submit([self, body, auth = std::move(auth), xkey = std::move(xkey), &route,
                                          path_id = std::move(path_id)] {
      self->handle(route, *body, path_id, auth, xkey);
      if (body->size() > kLargeBytes) {
        body->clear();
        body->shrink_to_fit();
        malloc_trim(0);  // glibc keeps freed pages in per-thread arenas; give a large request's back
      }
    });
    if (!queued) respond_error(route.api, ApiError(503, "the server is busy: too many requests queued"));
  }

  // On a worker thread.
  void handle(const RouteInfo& route, const std::string& body, const std::string& path_id, const std::string& auth,
              const std::string& xkey);

  void respond_error(Api api, const ApiError& e) {
    if (reader_.head_done() && method_.empty()) {
      method_.assign(reader_.request().method_string().data(), reader_.request().method_string().size());
      target_.assign(reader_.request().target().data(), reader_.request().target().size());
    }
    keep_alive_ = false;  // the request's framing may be lost (unread body, parse error)
    phase_ = Phase::Handling;
    disarm();
    send_reply(error_reply(api, e), api);
  }

  std::string head(int status, const std::string& content_type, const std::string& framing,
                   const std::vector<std::pair<std::string, std::string>>& extra = {}) const {
    std::string h =
        fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\n{}", status, reason_phrase(status), content_type, framing);
    for (const auto& [k, v] : extra) h += k + ": " + v + "\r\n";  // our own names and values (no CR/LF)
    if (!rid_.empty()) h += "x-request-id: " + rid_ + "\r\nrequest-id: " + rid_ + "\r\n";
    if (status == 405 && !reader_.route().allow.empty()) h += "Allow: " + reader_.route().allow + "\r\n";
    h += keep_alive_ ? (http10_ ? "Connection: keep-alive\r\n" : "") : "Connection: close\r\n";
    h += "\r\n";
    return h;
  }

  void log_request(int status) {
    srv_.ctx.metrics.record_http(method_label(method_), endpoint_label(target_.substr(0, target_.find('?'))), status);
    spdlog::info("{} \"{} {}\" {}", peer_, log_safe(method_.empty() ? "-" : method_, 32),
                 log_safe(target_.empty() ? "-" : target_), status);
  }

  void send_reply(const Reply& rep, Api api) {
    log_request(rep.status);  // also when the client is gone: its 499 belongs in the log
    if (phase_ == Phase::Closed) return;
    large_ = large_ || rep.body.size() > kLargeBytes;
    finish_after_write_ = true;
    queue(head(rep.status, rep.content_type, fmt::format("Content-Length: {}\r\n", rep.body.size()), rep.headers) +
          rep.body);
  }

  void start_stream(const std::string& content_type, const std::vector<std::pair<std::string, std::string>>& extra) {
    if (phase_ == Phase::Closed) return;
    log_request(200);
    if (http10_) keep_alive_ = false;  // HTTP/1.0 has no chunked coding: the end of the body is the close
    queue(head(200, content_type,
               std::string("Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") +
                   (http10_ ? "" : "Transfer-Encoding: chunked\r\n"),
               extra));
  }

  void end_stream() {
    if (phase_ == Phase::Closed) return;
    finish_after_write_ = true;
    if (!http10_)
      queue("0\r\n\r\n");
    else if (!writing_)
      after_response();
  }

  // counted: the bytes are in unsent_ already (stream output, counted where it was produced).
  void queue(std::string s, bool counted = false) {
    if (phase_ == Phase::Closed) return;
    if (!counted) unsent_ += s.size();
    queued_ += s;
    write();
  }

  void write() {
    if (writing_ || queued_.empty() || phase_ == Phase::Closed) return;
    wbuf_.swap(queued_);
    queued_.clear();
    woff_ = 0;
    writing_ = true;
    write_some();
  }

  // One write_some at a time so that every bit of progress re-arms the write deadline: a slow reader is
  // fine, a client that stopped reading is not.
  void write_some() {
    arm(Deadline::Write, lim_.write_timeout);
    sock_.async_write_some(
        asio::buffer(wbuf_.data() + woff_, wbuf_.size() - woff_),
        [self = shared_from_this()](boost::system::error_code ec, size_t n) { self->on_write(ec, n); });
  }

  void on_write(boost::system::error_code ec, size_t n) {
    if (phase_ == Phase::Closed) return;
    if (ec) {
      close();
      return;
    }
    woff_ += n;
    unsent_ -= n;
    if (woff_ < wbuf_.size()) {
      write_some();
      return;
    }
    writing_ = false;
    wbuf_.clear();
    if (wbuf_.capacity() > (1u << 20)) wbuf_.shrink_to_fit();
    if (!queued_.empty()) {
      write();
      return;
    }
    if (deadline_ == Deadline::Write) disarm();
    if (finish_after_write_) after_response();
  }

  void after_response() {
    finish_after_write_ = false;
    if (large_) {
      // The event-loop thread built the large body and frees the large response: its arena keeps the pages
      // unless asked (the worker trims its own after the handler).
      large_ = false;
      malloc_trim(0);
    }
    if (srv_.draining) keep_alive_ = false;
    if (!keep_alive_ || gone_) {
      linger();
      return;
    }
    phase_ = Phase::Reading;
    reader_.reset();
    body_armed_ = false;
    method_.clear();
    target_.clear();
    arm(Deadline::Idle, lim_.idle_timeout);
    if (in_.size() > 0) parse();  // a pipelined request already read
    read();
  }

  // Half-close and drain what the client still sends for a moment: closing with unread input would reset
  // the connection and could destroy the response before the client read it.
  void linger() {
    phase_ = Phase::Closing;
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_send, ec);
    in_.consume(in_.size());
    arm(Deadline::Linger, 2);
    read();
  }

  void close() {
    if (phase_ == Phase::Closed) return;
    phase_ = Phase::Closed;
    gone_ = true;
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
    disarm();
    srv_.forget(this);
  }

  HttpServer::Impl& srv_;
  const HttpLimits& lim_;
  tcp::socket sock_;
  asio::steady_timer timer_;
  uint64_t timer_gen_ = 0;
  Deadline deadline_ = Deadline::None;
  Phase phase_ = Phase::Reading;
  RequestReader reader_;
  boost::beast::flat_buffer in_;
  bool reading_ = false, writing_ = false, finish_after_write_ = false;
  bool keep_alive_ = true, http10_ = false, body_armed_ = false;
  bool large_ = false;  // this request or its response passed kLargeBytes: give the memory back after it
  static constexpr size_t kLargeBytes = 1u << 20;
  std::string wbuf_, queued_;
  size_t woff_ = 0;
  std::string peer_, method_, target_;
  std::string rid_;  // this request's id: the client's X-Request-Id when it sent a sane one, else ours
  std::atomic<bool> gone_{false};  // closed, or the client stopped reading: abort what it asked for
  std::atomic<size_t> unsent_{0};  // stream bytes handed over but not yet written
};

// The handler's view of a streaming response. Writes are framed here and posted to the strand; a client
// whose unsent output passes --max-stream-buffer-bytes counts as gone (it is not reading).
class StreamWriter final : public StreamSink {
 public:
  explicit StreamWriter(std::shared_ptr<Connection> c) : c_(std::move(c)) {}
  bool write(std::string_view d) override {
    if (c_->gone_) return false;
    std::string framed = c_->http10_ ? std::string(d) : fmt::format("{:x}\r\n{}\r\n", d.size(), d);
    if (c_->unsent_ + framed.size() > c_->lim_.max_stream_buffer_bytes) {
      spdlog::warn("{} is not reading its stream ({} bytes unsent): closing (--max-stream-buffer-bytes)", c_->peer_,
                   c_->unsent_.load());
      c_->gone_ = true;
      asio::post(c_->sock_.get_executor(), [c = c_] { c->close(); });
      return false;
    }
    c_->unsent_ += framed.size();
    asio::post(c_->sock_.get_executor(), [c = c_, f = std::move(framed)]() mutable { c->queue(std::move(f), true); });
    return true;
  }
  bool client_gone() override { return c_->gone_; }

 private:
  std::shared_ptr<Connection> c_;
};

void Connection::handle(const RouteInfo& route, const std::string& body, const std::string& path_id,
                        const std::string& auth, const std::string& xkey) {
  HttpRequest hr{body, path_id, [this] { return gone_.load(); }};
  Reply rep;
  try {
    srv_.check_key(route, auth, xkey);
    rep = dispatch(srv_.ctx, route.route, hr);
  } catch (const ApiError& e) {
    rep = error_reply(route.api, e);
  } catch (const Error& e) {
    rep = error_reply(route.api, ApiError(400, e.what()));
  } catch (const Json::exception& e) {
    // A field of the wrong type that a handler did not check by name: still the client's error.
    spdlog::warn("{} {}: unchecked JSON access: {}", log_safe(method_), log_safe(target_), e.what());
    rep = error_reply(route.api, ApiError(400, "a request field has the wrong type or is missing"));
  } catch (const std::bad_alloc&) {
    rep = error_reply(route.api, ApiError(503, "out of memory for this request"));
  } catch (const std::exception& e) {
    spdlog::error("{} {}: {}", log_safe(method_), log_safe(target_), e.what());
    rep = error_reply(route.api, ApiError(500, "internal error"));
  }
  auto self = shared_from_this();
  if (!rep.stream) {
    asio::post(sock_.get_executor(), [self, rep = std::move(rep), api = route.api] { self->send_reply(rep, api); });
    return;
  }
  asio::post(sock_.get_executor(), [self, ct = rep.content_type, hd = rep.headers] { self->start_stream(ct, hd); });
  StreamWriter sink(self);
  try {
    rep.stream(sink);
  } catch (const std::exception& e) {
    // Headers are out: all that is left is to end the stream; the client sees no terminating event.
    spdlog::error("{} {}: stream failed: {}", log_safe(method_), log_safe(target_), e.what());
  }
  asio::post(sock_.get_executor(), [self] { self->end_stream(); });
}

void HttpServer::Impl::accept() {
  acceptor.async_accept(asio::make_strand(io), [this](boost::system::error_code ec, tcp::socket s) {
    // A connection accepted just before the acceptor closed is not served (its socket closes here).
    if (!acceptor.is_open() || ec == asio::error::operation_aborted || draining) return;
    if (ec) {
      // Out of descriptors (EMFILE) and the like: retry shortly instead of spinning.
      spdlog::warn("accept: {}", ec.message());
      retry.expires_after(100ms);
      retry.async_wait([this](boost::system::error_code e) {
        if (!e) accept();
      });
      return;
    }
    if (open() >= lim.max_connections) {
      reject_over_cap(std::move(s));
    } else {
      boost::system::error_code e;
      s.set_option(tcp::no_delay(true), e);
      auto c = std::make_shared<Connection>(*this, std::move(s));
      {
        std::lock_guard lk(conns_mu);
        conns.emplace(c.get(), c);
      }
      c->start();
    }
    accept();
  });
}

void HttpServer::Impl::reject_over_cap(tcp::socket s) {
  const std::string body = dump(error_json(Api::OpenAI, 503, "too many open connections (--max-connections)"));
  const std::string msg = fmt::format(
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      body.size(), body);
  boost::system::error_code ec;
  s.non_blocking(true, ec);
  s.write_some(asio::buffer(msg), ec);  // best effort: never wait on a client beyond the cap
  s.close(ec);
}

void HttpServer::Impl::drain() {
  std::vector<std::shared_ptr<Connection>> live;
  {
    std::lock_guard lk(conns_mu);
    for (auto& [p, w] : conns)
      if (auto c = w.lock()) live.push_back(std::move(c));
  }
  for (auto& c : live) c->drain();
}

HttpServer::HttpServer(ServerContext& ctx, int threads, std::function<void()> abort_running)
    : impl_(std::make_unique<Impl>(ctx, threads, std::move(abort_running))) {}

HttpServer::~HttpServer() { stop(); }

int HttpServer::bind(const std::string& host, int port) {
  auto& I = *impl_;
  boost::system::error_code ec;
  tcp::resolver res(I.io);
  auto eps = res.resolve(host, std::to_string(port), tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || eps.empty()) fail("cannot listen on {}:{} ({})", host, port, ec ? ec.message() : "no address");
  const tcp::endpoint ep = *eps.begin();
  I.acceptor.open(ep.protocol(), ec);
  if (!ec) I.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) I.acceptor.bind(ep, ec);
  if (!ec) I.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail("cannot listen on {}:{} ({})", host, port, ec.message());
  return I.acceptor.local_endpoint().port();
}

void HttpServer::run() {
  auto& I = *impl_;
  if (I.draining) return;
  auto guard = asio::make_work_guard(I.io);  // stop() ends the loop, not running out of work
  asio::post(I.io, [&I] { I.accept(); });
  std::vector<std::thread> loops;
  for (int i = 1; i < std::max(1, I.lim.io_threads); ++i) loops.emplace_back([&I] { I.io.run(); });
  I.io.run();
  for (auto& t : loops) t.join();
}

void HttpServer::stop() {
  auto& I = *impl_;
  std::call_once(I.stop_once, [&I] {
    I.draining = true;
    asio::post(I.io, [&I] {
      boost::system::error_code ec;
      I.acceptor.close(ec);
      I.retry.cancel();
      I.drain();
    });
    const auto grace_end =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(I.lim.shutdown_grace));
    if (!I.pool.wait_idle(grace_end)) {
      spdlog::info("shutdown: the grace period ({} s) ended with requests running; aborting them",
                   I.lim.shutdown_grace);
      // Streams end with a final event: the aborted generations report finish_reason "abort".
      if (I.abort_running) I.abort_running();
      I.pool.wait_idle(Clock::now() + 3s);
    }
    I.ctx.stopping = true;  // whatever still runs stops polling now
    I.pool.wait_idle(Clock::now() + 5s);
    // Let the last responses reach their clients (each connection closes itself once written).
    const auto flush_end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(I.lim.write_timeout + 2));
    while (I.open() > 0 && Clock::now() < flush_end) std::this_thread::sleep_for(10ms);
    I.io.stop();
  });
}

size_t HttpServer::open_connections() const { return impl_->open(); }

}  // namespace dsv4::server
