// The HTTP layer in-process on a loopback port with a scripted generator: auth, body limit, error shapes, the
// OpenAI and Anthropic event streams with tool calls, and client disconnects.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sstream>
#include <thread>

#include "server/api_error.h"
#include "server_test_support.h"

using namespace dsv4;
using namespace dsv4::server;
using namespace dsv4::server::testing;
using namespace std::chrono_literals;

namespace {

struct LiveServer {
  explicit LiveServer(const std::string& reply, int delay_ms = 0, ServerOptions opt = {})
      : s(reply, delay_ms, std::move(opt)), http(s.ctx, 8) {
    port = http.bind("127.0.0.1", 0);
    thread = std::thread([this] { http.run(); });
    httplib::Client c("127.0.0.1", port);
    for (int i = 0; i < 200 && !c.Get("/health"); ++i) std::this_thread::sleep_for(10ms);
  }
  ~LiveServer() {
    http.stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(20, 0);
    return c;
  }
  Scripted s;
  HttpServer http;
  int port = 0;
  std::thread thread;
};

// The JSON payloads of `data:` lines, and the names of `event:` lines, in order.
std::vector<std::string> sse_data(const std::string& body, std::vector<std::string>* names = nullptr) {
  std::vector<std::string> out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("data: ", 0) == 0)
      out.push_back(line.substr(6));
    else if (names && line.rfind("event: ", 0) == 0)
      names->push_back(line.substr(7));
  }
  return out;
}

}  // namespace

TEST(ServerHttp, ConstantTimeCompare) {
  EXPECT_TRUE(constant_time_equal("secret", "secret"));
  EXPECT_FALSE(constant_time_equal("secreT", "secret"));
  EXPECT_FALSE(constant_time_equal("secret-and-more", "secret"));
  EXPECT_FALSE(constant_time_equal("", "secret"));
  EXPECT_FALSE(constant_time_equal("sec", "secret"));
}

TEST(ServerHttp, ApiKeyBodyLimitAndErrorShapes) {
  DSV4_NEED_TOKENIZER();
  ServerOptions opt;
  opt.api_key = "sekret";
  opt.max_body_bytes = 2000;
  LiveServer srv("ok", 0, opt);
  auto c = srv.client();
  auto r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(Json::parse(r->body)["error"]["type"], "authentication_error");
  r = c.Post("/v1/messages", {{"x-api-key", "wrong"}}, R"({"model":"dsv4","max_tokens":3,"messages":[]})",
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(Json::parse(r->body)["type"], "error");
  EXPECT_EQ(Json::parse(r->body)["error"]["type"], "authentication_error");
  r = c.Get("/v1/models", {{"Authorization", "Bearer sekret"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(Json::parse(r->body)["data"][0]["id"], "dsv4");
  r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << "health needs no key";

  const std::string big = R"({"messages":[{"role":"user","content":")" + std::string(5000, 'x') + "\"}]}";
  r = c.Post("/v1/chat/completions", {{"x-api-key", "sekret"}}, big, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(Json::parse(r->body)["error"]["type"], "invalid_request_error");
  r = c.Post("/v1/messages", {{"x-api-key", "sekret"}}, big, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(Json::parse(r->body)["error"]["type"], "request_too_large");
}

TEST(ServerHttp, OpenAIStreamWithToolCall) {
  DSV4_NEED_TOKENIZER();
  LiveServer srv(kToolCallText);
  auto c = srv.client();
  auto r = c.Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"weather?"}],"stream":true,
      "stream_options":{"include_usage":true},
      "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  auto data = sse_data(r->body);
  ASSERT_GE(data.size(), 5u);
  EXPECT_EQ(data.back(), "[DONE]");
  Json first = Json::parse(data[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string content, args, name, id, finish;
  Json usage;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    Json j = Json::parse(data[i]);
    if (j["choices"].empty()) {
      usage = j["usage"];
      continue;
    }
    const Json& ch = j["choices"][0];
    if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
    if (ch["delta"].contains("tool_calls")) {
      const Json& tc = ch["delta"]["tool_calls"][0];
      EXPECT_EQ(tc["index"], 0);
      if (tc.contains("id")) id = tc["id"];
      if (tc["function"].contains("name")) name = tc["function"]["name"];
      args += tc["function"]["arguments"].get<std::string>();
    }
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(content, "Let me check.");
  EXPECT_EQ(name, "get_weather");
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(Json::parse(args), Json::parse(R"({"city":"Paris","days":3})"));
  EXPECT_EQ(finish, "tool_calls");
  EXPECT_GT(usage["completion_tokens"].get<int>(), 10);
  EXPECT_EQ(usage["total_tokens"], usage["prompt_tokens"].get<int>() + usage["completion_tokens"].get<int>());
}

TEST(ServerHttp, AnthropicStreamEventSequenceWithThinkingAndToolUse) {
  DSV4_NEED_TOKENIZER();
  LiveServer srv(std::string("Plan it.</think>") + kToolCallText);
  auto c = srv.client();
  auto r = c.Post("/v1/messages",
                  R"({"model":"dsv4","max_tokens":300,"stream":true,"thinking":{"type":"enabled","budget_tokens":100},
      "messages":[{"role":"user","content":"weather?"}],
      "tools":[{"name":"get_weather","input_schema":{"type":"object"}}]})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  std::vector<std::string> names;
  auto data = sse_data(r->body, &names);
  ASSERT_EQ(names.size(), data.size());
  // Collapse runs of deltas to read the block structure.
  std::vector<std::string> seq;
  for (size_t i = 0; i < names.size(); ++i) {
    Json j = Json::parse(data[i]);
    EXPECT_EQ(j["type"], names[i]);
    std::string tag = names[i];
    if (names[i] == "content_block_start") tag += ":" + j["content_block"]["type"].get<std::string>();
    if (names[i] == "content_block_delta") tag += ":" + j["delta"]["type"].get<std::string>();
    if (seq.empty() || seq.back() != tag || names[i] != "content_block_delta") seq.push_back(tag);
    if (names[i] == "content_block_start" && j["content_block"]["type"] == "tool_use") {
      EXPECT_EQ(j["content_block"]["name"], "get_weather");
      EXPECT_EQ(j["content_block"]["id"].get<std::string>().rfind("toolu_", 0), 0u);
    }
    if (names[i] == "message_delta") {
      EXPECT_EQ(j["delta"]["stop_reason"], "tool_use");
      EXPECT_GT(j["usage"]["output_tokens"].get<int>(), 10);
    }
  }
  const std::vector<std::string> want = {"message_start",
                                         "ping",
                                         "content_block_start:thinking",
                                         "content_block_delta:thinking_delta",
                                         "content_block_stop",
                                         "content_block_start:text",
                                         "content_block_delta:text_delta",
                                         "content_block_stop",
                                         "content_block_start:tool_use",
                                         "content_block_delta:input_json_delta",
                                         "content_block_stop",
                                         "message_delta",
                                         "message_stop"};
  EXPECT_EQ(seq, want);
}

TEST(ServerHttp, AnthropicNonStreamingToolUse) {
  DSV4_NEED_TOKENIZER();
  LiveServer srv(kToolCallText);
  auto c = srv.client();
  auto r = c.Post("/v1/messages", R"({"model":"dsv4","max_tokens":300,"messages":[{"role":"user","content":"weather?"}],
      "tools":[{"name":"get_weather","input_schema":{"type":"object"}}]})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  Json j = Json::parse(r->body);
  EXPECT_EQ(j["type"], "message");
  EXPECT_EQ(j["stop_reason"], "tool_use");
  ASSERT_EQ(j["content"].size(), 2u);
  EXPECT_EQ(j["content"][0]["text"], "Let me check.");
  EXPECT_EQ(j["content"][1]["type"], "tool_use");
  EXPECT_EQ(j["content"][1]["input"], Json::parse(R"({"city":"Paris","days":3})"));
}

TEST(ServerHttp, StopStringsSkipReasoningAndACutToolCallIsLength) {
  DSV4_NEED_TOKENIZER();
  LiveServer srv("Say END twice: END.</think>The END is near.");
  auto c = srv.client();
  auto r = c.Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"stop":["END"],
      "chat_template_kwargs":{"thinking":true}})",
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  Json j = Json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["message"]["reasoning_content"], "Say END twice: END.");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "The ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][0]["stop_reason"], "END");

  LiveServer tools(kToolCallText);
  auto c2 = tools.client();
  r = c2.Post("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}],"max_tokens":12,"stream":true,
      "tools":[{"type":"function","function":{"name":"get_weather"}}]})",
              "application/json");
  ASSERT_TRUE(r);
  std::string finish;
  bool tool_delta = false;
  for (const auto& d : sse_data(r->body)) {
    if (d == "[DONE]") continue;
    Json ch = Json::parse(d)["choices"][0];
    tool_delta |= ch["delta"].contains("tool_calls");
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(finish, "length");
  EXPECT_FALSE(tool_delta) << "an unfinished call is not reported as a tool call";
}

TEST(ServerHttp, ClientDisconnectAbortsTheRequest) {
  DSV4_NEED_TOKENIZER();
  LiveServer srv(std::string(2000, 'z'), /*delay_ms=*/10);
  for (bool stream : {true, false}) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(srv.port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    const std::string body = std::string(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":1500,"stream":)") +
                             (stream ? "true" : "false") + "}";
    const std::string req =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    ASSERT_EQ(::send(fd, req.data(), req.size(), 0), ssize_t(req.size()));
    bool running = false;
    for (int i = 0; i < 300 && !running; ++i) {
      running = srv.s.generator.stats().running == 1;
      std::this_thread::sleep_for(10ms);
    }
    ASSERT_TRUE(running);
    if (stream) {
      char buf[512];
      ASSERT_GT(::recv(fd, buf, sizeof buf, 0), 0) << "the stream started";
    }
    ::close(fd);
    int left = 1;
    for (int i = 0; i < 300 && left; ++i) {
      std::this_thread::sleep_for(10ms);
      left = srv.s.generator.stats().running;
    }
    EXPECT_EQ(left, 0) << (stream ? "streaming" : "non-streaming") << " request still running after the client left";
  }
}
