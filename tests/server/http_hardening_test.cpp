// Issue 9: the HTTP layer against hostile and careless clients. Each test reproduces one attack at a bounded
// size over a raw socket (so nothing in a client library smooths it over) and asserts the fix. The numbers in
// the test names are the issue's items.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <thread>

#include "server/http_request.h"
#include "server/http_server.h"
#include "server/json_fields.h"
#include "server/tracked_generator.h"
#include "server_test_support.h"

using namespace dsv4;
using namespace dsv4::server;
using namespace dsv4::server::testing;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A server as `dsv4 serve` builds it (TrackedGenerator, abort on shutdown) over a scripted generator.
struct Server {
  explicit Server(ServerOptions opt = {}, const std::string& reply = "Hello there, this is a reply.", int delay_ms = 0,
                  int64_t max_len = 4096)
      : backend(*tokenizer(), {{"", reply}}, max_len, std::chrono::milliseconds(delay_ms)),
        tracked(backend),
        ctx(std::move(opt), *tokenizer(), tracked),
        http(ctx, 8, [this] { tracked.abort_all(); }) {
    port = http.bind("127.0.0.1", 0);
    thread = std::thread([this] { http.run(); });
  }
  ~Server() {
    http.stop();
    thread.join();
  }
  ScriptedGenerator backend;
  TrackedGenerator tracked;
  ServerContext ctx;
  HttpServer http;
  int port = 0;
  std::thread thread;
};

ServerOptions opts(std::function<void(ServerOptions&)> f) {
  ServerOptions o;
  f(o);
  return o;
}

class Sock {
 public:
  explicit Sock(int port, int rcvbuf = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Sock() { ::close(fd_); }
  bool ok() const { return ok_; }
  bool send(std::string_view s) { return ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size()); }
  // Reads until `needle` appears, the peer closes, or `timeout` passes; returns all it read.
  std::string read_until(std::string_view needle, double timeout = 10) {
    const auto t0 = Clock::now();
    while (since(t0) < timeout && (needle.empty() || got_.find(needle) == std::string::npos)) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      got_.append(buf, size_t(n));
    }
    return got_;
  }
  std::string read_to_close(double timeout = 10) { return read_until("", timeout); }
  bool closed() const { return closed_; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool ok_ = false, closed_ = false;
  std::string got_;
};

std::string post(const std::string& path, const std::string& body, const std::string& extra = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

int status_of(const std::string& resp) { return resp.size() > 12 ? std::atoi(resp.c_str() + 9) : 0; }
std::string body_of(const std::string& resp) {
  const auto p = resp.find("\r\n\r\n");
  return p == std::string::npos ? "" : resp.substr(p + 4);
}

// One request on a fresh connection; the whole response (the server closes after "Connection: close").
std::string roundtrip(int port, const std::string& req, double timeout = 10) {
  Sock s(port);
  s.send(req);
  return s.read_until("\r\n\r\n", timeout), s.read_to_close(timeout);
}

const std::string kChat = R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":5})";

}  // namespace

// 1: an object with many keys parses in linear time; the key cap and the depth cap answer 400 naming where.
TEST(Http9, 1_ObjectKeysParseInLinearTimeAndAreCapped) {
  std::string big = R"({"messages":[],"metadata":{)";
  const int n = 200000;
  for (int i = 0; i < n; ++i) big += fmt::format("{}\"k{}\":{}", i ? "," : "", i, i);
  big += "}}";
  JsonLimits lim;
  lim.max_object_keys = 1000000;
  auto t0 = Clock::now();
  Json j = parse_body(big, lim);
  const double s = since(t0);
  EXPECT_EQ(j["metadata"].size(), size_t(n));
  EXPECT_EQ(j["metadata"].begin().key(), "k0") << "order is kept";
  EXPECT_LT(s, 2.0) << "200K keys took " << s << " s (quadratic insertion?)";
  try {
    parse_body(big, JsonLimits{});
    ADD_FAILURE() << "the default key cap did not apply";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("'metadata'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--max-json-object-keys"), std::string::npos) << e.what();
  }
  // Duplicate keys keep the last value, in the first one's place, past the hash-index threshold too.
  std::string dup = "{";
  for (int i = 0; i < 100; ++i) dup += fmt::format("\"k{}\":{},", i, i);
  dup += R"("k3":"last","k99":"end"})";
  Json d = parse_body(dup);
  EXPECT_EQ(d.size(), 100u);
  EXPECT_EQ(d["k3"], "last");
  EXPECT_EQ(d["k99"], "end");
  // The value cap bounds the memory of a body of short values ("0,0,0,..." takes 16+ bytes per 2 of text).
  JsonLimits few;
  few.max_values = 1000;
  std::string arr = R"({"tokens":[0)";
  for (int i = 0; i < 2000; ++i) arr += ",0";
  arr += "]}";
  try {
    parse_body(arr, few);
    ADD_FAILURE() << "the value cap did not apply";
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("--max-json-values"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'tokens[998]'"), std::string::npos) << e.what();
  }
  std::string deep = std::string(100, '[') + std::string(100, ']');
  try {
    parse_body(R"({"a":)" + deep + "}");
    ADD_FAILURE() << "the depth cap did not apply";
  } catch (const ApiError& e) {
    EXPECT_NE(std::string(e.what()).find("--max-json-depth"), std::string::npos) << e.what();
  }
}

// 1 over HTTP: the capped object is refused quickly, never parsed for seconds.
TEST(Http9, 1_ManyKeysOverHttpIsA400) {
  DSV4_NEED_TOKENIZER();
  Server srv;
  std::string body = R"({"messages":[{"role":"user","content":"x"}],"metadata":{)";
  for (int i = 0; i < 50000; ++i) body += fmt::format("{}\"k{}\":0", i ? "," : "", i);
  body += "}}";
  const auto t0 = Clock::now();
  const std::string r = roundtrip(srv.port, post("/v1/chat/completions", body, "Connection: close\r\n"));
  EXPECT_EQ(status_of(r), 400) << r.substr(0, 300);
  EXPECT_NE(r.find("--max-json-object-keys"), std::string::npos);
  EXPECT_LT(since(t0), 2.0);
}

// 2: slow-loris. Connections trickling a header byte by byte hold no thread and are closed at the header
// deadline (which does not restart with each byte); /health answers throughout; stop() is not held up.
TEST(Http9, 2_SlowLorisIsCutAtTheHeaderDeadline) {
  DSV4_NEED_TOKENIZER();
  auto srv = std::make_unique<Server>(opts([](ServerOptions& o) { o.http.header_timeout = 1.0; }));
  std::vector<std::unique_ptr<Sock>> loris;
  for (int i = 0; i < 150; ++i) loris.push_back(std::make_unique<Sock>(srv->port));
  const std::string head = "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Slow: ";
  const auto t0 = Clock::now();
  double worst_health = 0;
  for (size_t k = 0; since(t0) < 2.0; ++k) {
    for (auto& s : loris) s->send(std::string(1, head[k % head.size()]));
    const auto h0 = Clock::now();
    const std::string r = roundtrip(srv->port, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 2);
    EXPECT_EQ(status_of(r), 200);
    worst_health = std::max(worst_health, since(h0));
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_LT(worst_health, 1.0);
  int closed = 0;
  for (auto& s : loris) {
    const std::string r = s->read_to_close(1.0);
    closed += s->closed();
    if (!r.empty()) EXPECT_EQ(status_of(r), 408) << r.substr(0, 200);
  }
  EXPECT_EQ(closed, 150) << "trickling connections outlived the 1 s header deadline";
  // Half a header sent once: closed at the deadline too, and shutdown is not held up by such sockets.
  std::vector<std::unique_ptr<Sock>> half;
  for (int i = 0; i < 50; ++i) {
    half.push_back(std::make_unique<Sock>(srv->port));
    half.back()->send("GET /health HTTP/1.1\r\nHo");
  }
  const auto s0 = Clock::now();
  srv.reset();
  EXPECT_LT(since(s0), 1.5) << "stop() waited on half-open requests";
}

// 3: a body that cannot fit the context is refused from its Content-Length (before tokenizing), and
// /tokenize and /detokenize need the key when one is set.
TEST(Http9, 3_ContextScaledBodyLimitAndTokenizeAuth) {
  DSV4_NEED_TOKENIZER();
  Server srv(opts([](ServerOptions& o) {
    o.api_key = "k3y";
    o.max_prompt_body_bytes = prompt_body_limit(64, 16);  // a 64-token model: a few hundred KiB at most
  }));
  std::string big = R"({"prompt":")" + std::string(2u << 20, 'a') + R"("})";
  const auto t0 = Clock::now();
  std::string r = roundtrip(srv.port, post("/tokenize", big, "Authorization: Bearer k3y\r\n"));
  EXPECT_EQ(status_of(r), 413) << r.substr(0, 300);
  EXPECT_NE(r.find("context"), std::string::npos);
  EXPECT_LT(since(t0), 1.0);
  const std::string close = "Connection: close\r\n";
  EXPECT_EQ(status_of(roundtrip(srv.port, post("/tokenize", R"({"prompt":"x"})", close))), 401);
  EXPECT_EQ(status_of(roundtrip(srv.port, post("/detokenize", R"({"tokens":[1]})", close))), 401);
  EXPECT_EQ(status_of(roundtrip(srv.port, post("/tokenize", R"({"prompt":"x"})", close + "x-api-key: k3y\r\n"))), 200);
  EXPECT_EQ(status_of(roundtrip(srv.port, "GET /health HTTP/1.1\r\nHost: t\r\n" + close + "\r\n")), 200);
}

// 4: SIGTERM's path (stop): a short request finishes within the grace period; streams still running when it
// ends get a final event saying why — OpenAI finish_reason "abort" then [DONE], Anthropic an error event.
TEST(Http9, 4_ShutdownEndsStreamsWithAFinalEvent) {
  DSV4_NEED_TOKENIZER();
  auto srv = std::make_unique<Server>(
      opts([](ServerOptions& o) { o.http.shutdown_grace = 0.6; }),
      [] {
        std::string r;
        for (int i = 0; i < 300; ++i) r += "slow words keep coming ";
        return r;
      }(),
      20);
  Sock oa(srv->port), an(srv->port), quick(srv->port);
  oa.send(post("/v1/chat/completions",
               R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2000,"ignore_eos":true,"stream":true})"));
  an.send(post("/v1/messages",
               R"({"model":"dsv4","max_tokens":2000,"messages":[{"role":"user","content":"x"}],"stream":true})"));
  ASSERT_NE(oa.read_until("\"content\":\"slow", 5).find("slow"), std::string::npos);
  ASSERT_NE(an.read_until("text_delta", 5).find("text_delta"), std::string::npos);
  // 10 tokens x 20 ms: done well inside the grace period.
  quick.send(post("/v1/chat/completions",
                  R"({"messages":[{"role":"user","content":"x"}],"max_tokens":10,"ignore_eos":true,"stream":true})"));
  quick.read_until("data:", 5);
  const auto t0 = Clock::now();
  std::thread stopper([&] { srv->http.stop(); });
  std::this_thread::sleep_for(100ms);
  const std::string q = quick.read_to_close(5);
  EXPECT_NE(q.find("\"finish_reason\":\"length\""), std::string::npos) << "the short request did not finish";
  const std::string o = oa.read_to_close(5);
  const std::string a = an.read_to_close(5);
  stopper.join();
  EXPECT_GT(since(t0), 0.5) << "streams were cut before the grace period";
  EXPECT_LT(since(t0), 4.0);
  EXPECT_NE(o.find("\"finish_reason\":\"abort\""), std::string::npos) << o.substr(o.size() > 600 ? o.size() - 600 : 0);
  EXPECT_NE(o.find("data: [DONE]"), std::string::npos);
  EXPECT_NE(o.find("\r\n0\r\n\r\n"), std::string::npos) << "the chunked body was not terminated";
  EXPECT_NE(a.find("event: error"), std::string::npos) << a.substr(a.size() > 600 ? a.size() - 600 : 0);
  EXPECT_NE(a.find("shutting down"), std::string::npos);
  EXPECT_EQ(a.find("message_stop"), std::string::npos) << "a cut message must not look complete";
  srv->http.stop();  // idempotent
}

// 5: several requests in one write are all answered, in order.
TEST(Http9, 5_PipelinedRequestsAreAllAnsweredInOrder) {
  DSV4_NEED_TOKENIZER();
  Server srv;
  Sock s(srv.port);
  s.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n" + post("/tokenize", R"({"prompt":"hello"})") +
         "GET /version HTTP/1.1\r\nHost: t\r\n\r\n" + post("/v1/chat/completions", kChat) +
         "GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  const std::string r = s.read_to_close(10);
  std::vector<size_t> at;
  for (size_t p = r.find("HTTP/1.1 "); p != std::string::npos; p = r.find("HTTP/1.1 ", p + 1)) at.push_back(p);
  ASSERT_EQ(at.size(), 5u) << r;
  for (size_t p : at) EXPECT_EQ(r.substr(p + 9, 3), "200");
  const size_t tok = r.find("\"tokens\""), ver = r.find("\"version\""), chat = r.find("chat.completion"),
               models = r.find("\"object\":\"list\"");
  EXPECT_TRUE(tok < ver && ver < chat && chat < models) << r;
}

// 6: numbers beyond double range and wrong-typed nested fields are 400s naming the field, never 500.
TEST(Http9, 6_ClientInputIsNeverA500) {
  DSV4_NEED_TOKENIZER();
  Server srv;
  const std::vector<std::pair<std::string, std::string>> oai = {
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":1e999})", "temperature"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":-1e999})", "max_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":5,"function":{"name":"f"}}]})", "tools[0].type"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],
          "tool_choice":{"type":"function","function":{"name":5}}})",
       "tool_choice.function.name"},
      {R"({"messages":[{"role":"user","content":"x"}],"tool_choice":{"type":7}})", "tool_choice.type"},
      {R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":[1]}})", "response_format.type"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551615})", "max_tokens"},
  };
  for (const auto& [body, field] : oai) {
    const std::string r = roundtrip(srv.port, post("/v1/chat/completions", body, "Connection: close\r\n"));
    EXPECT_EQ(status_of(r), 400) << body << "\n" << r.substr(0, 400);
    EXPECT_NE(body_of(r).find(field), std::string::npos) << "the error does not name " << field << ": " << r;
    EXPECT_EQ(body_of(r).find("json.exception"), std::string::npos) << r;
  }
  const std::vector<std::pair<std::string, std::string>> anth = {
      {R"({"type":5,"text":"x"})", "content[0].type"},
      {R"({"type":"tool_result","tool_use_id":9,"content":"r"})", "content[0].tool_use_id"},
      {R"({"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":3}]})",
       "content[0].content[0].text"},
  };
  for (const auto& [block, field] : anth) {
    const std::string body =
        R"({"model":"dsv4","max_tokens":5,"messages":[{"role":"user","content":[)" + block + "]}]}";
    const std::string r = roundtrip(srv.port, post("/v1/messages", body, "Connection: close\r\n"));
    EXPECT_EQ(status_of(r), 400) << body << "\n" << r.substr(0, 400);
    EXPECT_NE(body_of(r).find(field), std::string::npos) << field << ": " << r;
    EXPECT_NE(body_of(r).find("invalid_request_error"), std::string::npos) << r;
  }
  const std::string asst =
      R"({"model":"dsv4","max_tokens":5,"messages":[{"role":"user","content":"q"},
          {"role":"assistant","content":[{"type":"text","text":{"a":1}}]},{"role":"user","content":"q"}]})";
  const std::string r = roundtrip(srv.port, post("/v1/messages", asst, "Connection: close\r\n"));
  EXPECT_EQ(status_of(r), 400) << r;
  EXPECT_NE(r.find("messages[1].content[0].text"), std::string::npos) << r;
}

// 7: a client that never reads its stream loses its sequence slot once its writes stall, not after a minute.
TEST(Http9, 7_AClientThatNeverReadsIsDropped) {
  DSV4_NEED_TOKENIZER();
  Server srv(opts([](ServerOptions& o) {
               o.http.write_timeout = 1.0;
               o.http.max_stream_buffer_bytes = 1u << 20;
             }),
             std::string(400, 'w') + " ", 0, 1 << 20);
  Sock s(srv.port, 4096);
  s.send(post("/v1/completions", R"({"prompt":"x","max_tokens":1000000,"ignore_eos":true,"stream":true})"));
  const auto t0 = Clock::now();
  for (int i = 0; i < 100 && srv.backend.stats().running == 0; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(srv.backend.stats().running, 1);
  while (srv.backend.stats().running > 0 && since(t0) < 15) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(srv.backend.stats().running, 0);
  EXPECT_LT(since(t0), 6.0) << "the slot was held " << since(t0) << " s by a client that reads nothing";
}

// 8: a JSON body sent as application/x-www-form-urlencoded (curl -d) is read as JSON, whatever its size.
TEST(Http9, 8_FormEncodedJsonBodyIsReadAsJson) {
  DSV4_NEED_TOKENIZER();
  Server srv;
  const std::string body = R"({"prompt":")" + std::string(100000, 'b') + R"("})";
  std::string req =
      "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
      "Connection: close\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  const std::string r = roundtrip(srv.port, req);
  EXPECT_EQ(status_of(r), 200) << r.substr(0, 300);
}

// 9: what a client puts in the method and path cannot forge log lines or reach the terminal raw.
TEST(Http9, 9_AccessLogEscapesClientBytes) {
  EXPECT_EQ(log_safe("a\r\nb\x1b[31m\"\\"), "a\\x0d\\x0ab\\x1b[31m\\x22\\x5c");
  EXPECT_EQ(log_safe(std::string(300, 'x'), 10), "xxxxxxxxxx...");
  DSV4_NEED_TOKENIZER();
  std::ostringstream captured;
  auto logger = std::make_shared<spdlog::logger>("cap", std::make_shared<spdlog::sinks::ostream_sink_mt>(captured));
  auto old = spdlog::default_logger();
  spdlog::set_default_logger(logger);
  {
    Server srv;
    // The path is logged as sent, never URL-decoded: %0d%0a stays text. Raw control and non-ASCII bytes
    // in the request line are refused by the parser (400) and never logged.
    roundtrip(srv.port, "GET /x%0d%0aFAKE%1b[31m\"q HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    roundtrip(srv.port, "GET /x\x7f\xc3\xa9\x1b[31m HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    roundtrip(srv.port, "GE\x01T / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  }
  spdlog::set_default_logger(old);
  const std::string log = captured.str();
  EXPECT_NE(log.find("\"GET /x%0d%0aFAKE%1b[31m\\x22q\" 404"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 3) << log;
  for (char c : log) EXPECT_TRUE(c == '\n' || (c >= 0x20 && c < 0x7f)) << "raw byte " << int(uint8_t(c)) << " logged";
}

// 10: HTTP/1.0 clients get a stream without chunked coding, ended by closing the connection.
TEST(Http9, 10_Http10StreamsAreNotChunked) {
  DSV4_NEED_TOKENIZER();
  Server srv;
  const std::string body = R"({"messages":[{"role":"user","content":"x"}],"max_tokens":5,"stream":true})";
  Sock s(srv.port);
  s.send("POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body);
  const std::string r = s.read_to_close(10);
  EXPECT_TRUE(s.closed());
  EXPECT_EQ(status_of(r), 200) << r;
  EXPECT_EQ(r.find("Transfer-Encoding"), std::string::npos) << r;
  EXPECT_NE(r.find("Connection: close"), std::string::npos) << r;
  EXPECT_EQ(body_of(r).rfind("data: ", 0), 0u) << "the body must start with the first event, no chunk size";
  EXPECT_NE(r.find("data: [DONE]\n\n"), std::string::npos);
  // And a non-streaming 1.0 request with keep-alive keeps its connection for the next one.
  Sock k(srv.port);
  k.send("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  EXPECT_NE(k.read_until("\r\n\r\n", 5).find("Connection: keep-alive"), std::string::npos);
  k.send("GET /version HTTP/1.0\r\n\r\n");
  EXPECT_NE(k.read_to_close(5).find("\"version\""), std::string::npos);
}

// 11: the smaller ones.
TEST(Http9, 11_SmallerOnes) {
  DSV4_NEED_TOKENIZER();
  Server srv({}, "ok", 0, 512);
  auto st = [&](const std::string& path, const std::string& body) {
    return status_of(roundtrip(srv.port, post(path, body, "Connection: close\r\n")));
  };
  // max_tokens beyond the context: 400, not clamped.
  const std::string r = roundtrip(
      srv.port, post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"max_tokens":100000})",
                     "Connection: close\r\n"));
  EXPECT_EQ(status_of(r), 400);
  EXPECT_NE(r.find("context_length_exceeded"), std::string::npos) << r;
  EXPECT_EQ(st("/v1/messages", R"({"model":"dsv4","max_tokens":100000,"messages":[{"role":"user","content":"x"}]})"),
            400);
  // Parts a text-only model cannot read.
  for (const char* part :
       {R"({"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}})",
        R"({"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}})", R"({"type":"hologram"})"})
    EXPECT_EQ(
        st("/v1/chat/completions",
           std::string(R"({"messages":[{"role":"user","content":[{"type":"text","text":"see"},)") + part + "]}]}"),
        400)
        << part;
  EXPECT_EQ(st("/v1/messages", R"({"model":"dsv4","max_tokens":5,"messages":[{"role":"user","content":[
                 {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAA"}}]}]})"),
            400);
  // tool_choice that demands a tool with no tools.
  EXPECT_EQ(st("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"required"})"),
            400);
  EXPECT_EQ(st("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],
                 "tool_choice":{"type":"function","function":{"name":"f"}}})"),
            400);
  EXPECT_EQ(st("/v1/messages", R"({"model":"dsv4","max_tokens":5,"messages":[{"role":"user","content":"x"}],
                 "tool_choice":{"type":"any"}})"),
            400);
  EXPECT_EQ(st("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"auto"})"), 200);
  // Content-Length missing or absurd: answered at once, not after a read timeout.
  auto t0 = Clock::now();
  EXPECT_EQ(status_of(roundtrip(srv.port, "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n\r\n", 3)), 411);
  EXPECT_EQ(status_of(roundtrip(
                srv.port,
                "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 3)),
            413);
  EXPECT_EQ(status_of(roundtrip(
                srv.port, "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n", 3)),
            413);
  EXPECT_LT(since(t0), 1.0);
  EXPECT_EQ(
      status_of(roundtrip(srv.port,
                          "POST /tokenize HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n"
                          "abc",
                          3)),
      400);
  // Wrong method: 405 with Allow; unknown path: 404.
  const std::string m = roundtrip(srv.port, "GET /v1/chat/completions HTTP/1.1\r\nHost: t\r\n\r\n", 3);
  EXPECT_EQ(status_of(m), 405);
  EXPECT_NE(m.find("Allow: POST"), std::string::npos) << m;
  EXPECT_EQ(status_of(roundtrip(srv.port, "DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n", 3)), 405);
  EXPECT_EQ(status_of(roundtrip(srv.port, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", 3)), 404);
  // A chunked body is read.
  EXPECT_EQ(
      status_of(roundtrip(srv.port,
                          "POST /tokenize HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                          "\r\n6\r\n{\"prom\r\na\r\npt\":\"abc\"}\r\n0\r\n\r\n",
                          3)),
      200);
  // Expect: 100-continue gets its interim response before the body is sent.
  Sock e(srv.port);
  e.send(
      "POST /tokenize HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 14\r\nConnection: close\r\n\r\n");
  EXPECT_NE(e.read_until("100 Continue", 2).find("HTTP/1.1 100 Continue"), std::string::npos);
  e.send(R"({"prompt":"a"})");
  EXPECT_NE(e.read_to_close(3).find("HTTP/1.1 200"), std::string::npos);
}

// The connection cap: beyond it, new connections get 503 at once; idle ones are closed at the idle deadline.
TEST(Http9, ConnectionCapAndIdleDeadline) {
  DSV4_NEED_TOKENIZER();
  Server srv(opts([](ServerOptions& o) {
    o.http.max_connections = 20;
    o.http.idle_timeout = 1.0;
  }));
  std::vector<std::unique_ptr<Sock>> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(std::make_unique<Sock>(srv.port));
  for (int i = 0; i < 100 && srv.http.open_connections() < 20; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(srv.http.open_connections(), 20u);
  Sock over(srv.port);
  const std::string r = over.read_to_close(2);
  EXPECT_EQ(status_of(r), 503) << r;
  EXPECT_NE(r.find("--max-connections"), std::string::npos);
  const auto t0 = Clock::now();
  for (auto& s : idle) s->read_to_close(3);
  EXPECT_LT(since(t0), 2.5);
  for (auto& s : idle) EXPECT_TRUE(s->closed());
  EXPECT_EQ(status_of(roundtrip(srv.port, "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")), 200);
}
