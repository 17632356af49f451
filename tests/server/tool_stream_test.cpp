// Streamed tool calls through the real HTTP layer, for all three APIs (OpenAI chat, Anthropic Messages,
// Responses): arguments leave the server as they are generated, not when the call closes (timed with a slow
// scripted model), and at random chunk boundaries the streams add up to exactly what the whole-text parser
// finds, with no DSML markup in content or arguments.
#include <gtest/gtest.h>
#include <httplib.h>

#include <random>
#include <sstream>
#include <thread>

#include "server/http_server.h"
#include "server_test_support.h"
#include "tokenizer/dsml_parser.h"

using namespace dsv4;
using namespace dsv4::server;
using namespace dsv4::server::testing;
using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

struct Live {
  explicit Live(const std::string& reply, int delay_ms = 0) : s(reply, delay_ms), http(s.ctx, 8) {
    port = http.bind("127.0.0.1", 0);
    thread = std::thread([this] { http.run(); });
    httplib::Client c("127.0.0.1", port);
    for (int i = 0; i < 200 && !c.Get("/health"); ++i) std::this_thread::sleep_for(10ms);
  }
  ~Live() {
    http.stop();
    thread.join();
  }
  Scripted s;
  HttpServer http;
  int port = 0;
  std::thread thread;
};

// One streamed SSE payload and when its bytes arrived.
struct Chunk {
  Json data;
  clk::time_point at;
};

std::vector<Chunk> stream_post(int port, const std::string& path, const Json& body) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30, 0);
  std::vector<Chunk> out;
  std::string buf;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.headers = {{"Content-Type", "application/json"}};
  req.body = body.dump();
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    const auto now = clk::now();
    buf.append(d, n);
    for (size_t e; (e = buf.find("\n\n")) != std::string::npos; buf.erase(0, e + 2)) {
      std::istringstream in(buf.substr(0, e));
      for (std::string line; std::getline(in, line);)
        if (line.rfind("data: ", 0) == 0 && line != "data: [DONE]") out.push_back({Json::parse(line.substr(6)), now});
    }
    return true;
  };
  auto res = c.send(req);
  EXPECT_TRUE(res && res->status == 200) << path;
  return out;
}

struct Streamed {
  std::string content;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
  clk::time_point first_argument{};
  clk::time_point end{};
};

const Json kOpenAITools = Json::parse(R"([{"type":"function","function":{"name":"f","parameters":{}}},
  {"type":"function","function":{"name":"g","parameters":{}}},{"type":"function","function":{"name":"run","parameters":{}}}])");

Streamed openai(int port) {
  Streamed r;
  Json body = {{"messages", Json::array({Json{{"role", "user"}, {"content", "go"}}})},
               {"tools", kOpenAITools},
               {"stream", true}};
  for (auto& ch : stream_post(port, "/v1/chat/completions", body)) {
    r.end = ch.at;
    if (!ch.data.contains("choices") || ch.data["choices"].empty()) continue;
    const Json& d = ch.data["choices"][0]["delta"];
    if (d.contains("content") && d["content"].is_string()) r.content += d["content"].get<std::string>();
    if (!d.contains("tool_calls")) continue;
    for (const auto& tc : d["tool_calls"]) {
      const size_t k = tc["index"].get<size_t>();
      if (r.calls.size() <= k) r.calls.resize(k + 1);
      if (tc["function"].contains("name")) r.calls[k].first += tc["function"]["name"].get<std::string>();
      const std::string a = tc["function"].value("arguments", "");
      if (!a.empty() && r.first_argument == clk::time_point{}) r.first_argument = ch.at;
      r.calls[k].second += a;
    }
  }
  return r;
}

Streamed anthropic(int port) {
  Streamed r;
  Json body = {{"model", "dsv4"},
               {"max_tokens", 2048},
               {"messages", Json::array({Json{{"role", "user"}, {"content", "go"}}})},
               {"tools", Json::parse(R"([{"name":"f","input_schema":{}},{"name":"g","input_schema":{}},{"name":"run","input_schema":{}}])")},
               {"stream", true}};
  for (auto& ch : stream_post(port, "/v1/messages", body)) {
    r.end = ch.at;
    const std::string type = ch.data.value("type", "");
    if (type == "content_block_start" && ch.data["content_block"]["type"] == "tool_use")
      r.calls.push_back({ch.data["content_block"]["name"].get<std::string>(), ""});
    if (type != "content_block_delta") continue;
    const Json& d = ch.data["delta"];
    if (d["type"] == "text_delta") r.content += d["text"].get<std::string>();
    if (d["type"] == "input_json_delta") {
      if (r.first_argument == clk::time_point{}) r.first_argument = ch.at;
      r.calls.back().second += d["partial_json"].get<std::string>();
    }
  }
  return r;
}

Streamed responses(int port) {
  Streamed r;
  Json body = {{"model", "dsv4"},
               {"input", "go"},
               {"tools", Json::parse(R"([{"type":"function","name":"f"},{"type":"function","name":"g"},{"type":"function","name":"run"}])")},
               {"stream", true}};
  std::map<int, size_t> call_of;  // output_index -> calls index
  for (auto& ch : stream_post(port, "/v1/responses", body)) {
    r.end = ch.at;
    const std::string type = ch.data.value("type", "");
    if (type == "response.output_item.added" && ch.data["item"]["type"] == "function_call") {
      call_of[ch.data["output_index"].get<int>()] = r.calls.size();
      r.calls.push_back({ch.data["item"]["name"].get<std::string>(), ""});
    } else if (type == "response.output_text.delta") {
      r.content += ch.data["delta"].get<std::string>();
    } else if (type == "response.function_call_arguments.delta") {
      if (r.first_argument == clk::time_point{}) r.first_argument = ch.at;
      r.calls[call_of.at(ch.data["output_index"].get<int>())].second += ch.data["delta"].get<std::string>();
    }
  }
  return r;
}

// Random model output: prose, well-formed tool-call blocks with awkward values, and markup that breaks the
// grammar right at a block's start (which makes the rest content).
std::string random_output(std::mt19937& rng, bool& well_formed) {
  static const char* words[] = {"alpha", " ", "\n", "\"q\"", "\\", "<", "</", "中文", "😀", "｜", "x<y", "DSML", "</think>"};
  auto value = [&] {
    std::string v;
    for (int i = int(rng() % 8); i > 0; --i) v += words[rng() % std::size(words)];
    return v;
  };
  auto block = [&] {
    std::string b = "\n\n<｜DSML｜tool_calls>\n";
    for (int c = 1 + int(rng() % 2); c > 0; --c) {
      b += std::string("<｜DSML｜invoke name=\"") + (rng() % 2 ? "f" : "g") + "\">\n";
      const int params = 1 + int(rng() % 3);
      for (int p = 0; p < params; ++p) {
        const bool str = rng() % 3 != 0;
        b += "<｜DSML｜parameter name=\"p" + std::to_string(p) + "\" string=\"" + (str ? "true" : "false") + "\">";
        b += str ? value() : (rng() % 2 ? "[1, {\"k\": null}]" : "not json");
        b += "</｜DSML｜parameter>\n";
      }
      b += "</｜DSML｜invoke>\n";
    }
    return b + "</｜DSML｜tool_calls>";
  };
  std::string text;
  well_formed = true;
  for (int k = int(rng() % 4); k >= 0; --k) {
    switch (rng() % 4) {
      case 0: text += block(); break;
      case 1:
        text += "\n\n<｜DSML｜tool_calls>\n<｜DSML｜bogus>";
        well_formed = false;
        break;
      default: text += value() + " words";
    }
  }
  return text;
}

}  // namespace

TEST(ServerToolStream, RandomChunksAddUpToTheWholeTextParseInAllThreeApis) {
  DSV4_NEED_TOKENIZER();
  std::mt19937 rng(1818);
  int with_calls = 0, broken = 0;
  for (int i = 0; i < 40; ++i) {
    bool well_formed = true;
    const std::string text = random_output(rng, well_formed);
    const ParsedOutput want = parse_output(text, ThinkingMode::Chat, 1);
    Live srv(text);
    srv.s.generator.set_burst(1 + int(rng() % 6), uint64_t(i));
    with_calls += !want.tool_calls.empty();
    broken += !well_formed;
    int api = 0;
    for (const Streamed& got : {openai(srv.port), anthropic(srv.port), responses(srv.port)}) {
      SCOPED_TRACE(::testing::Message() << "case " << i << " api " << api++ << " text: " << text);
      ASSERT_EQ(got.content, want.content);
      ASSERT_EQ(got.calls.size(), want.tool_calls.size());
      for (size_t k = 0; k < got.calls.size(); ++k) {
        EXPECT_EQ(got.calls[k].first, want.tool_calls[k].name);
        EXPECT_EQ(got.calls[k].second, want.tool_calls[k].arguments);
        // Values may hold "｜DSML｜" as data (the random words do), never a parameter's end marker.
        EXPECT_EQ(got.calls[k].second.find("/｜DSML｜parameter"), std::string::npos);
      }
      if (well_formed) EXPECT_EQ(got.content.find("<｜DSML｜tool_calls"), std::string::npos);
    }
  }
  EXPECT_GT(with_calls, 10);
  EXPECT_GT(broken, 5);
}

TEST(ServerToolStream, FirstArgumentDeltaLeavesBeforeTheCallClosesInAllThreeApis) {
  DSV4_NEED_TOKENIZER();
  constexpr int kDelayMs = 15;
  std::string value;
  for (int i = 0; i < 30; ++i) value += "word" + std::to_string(i) + " ";
  const std::string close = "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  const std::string reply = "Running it.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"run\">\n"
                            "<｜DSML｜parameter name=\"cmd\" string=\"true\">" + value + close;
  // Tokens from the value's end to the end of output (EOS included): generated in the last k delays.
  const int64_t k = int64_t(tokenizer()->encode(close).size()) + 1;
  const int64_t value_tokens = int64_t(tokenizer()->encode(value).size());
  Live srv(reply, kDelayMs);
  int api = 0;
  for (const Streamed& got : {openai(srv.port), anthropic(srv.port), responses(srv.port)}) {
    SCOPED_TRACE(::testing::Message() << "api " << api++);
    ASSERT_EQ(got.calls.size(), 1u);
    EXPECT_EQ(got.calls[0].second, "{\"cmd\": \"" + value + "\"}");
    ASSERT_NE(got.first_argument, clk::time_point{});
    const double lead_ms = std::chrono::duration<double, std::milli>(got.end - got.first_argument).count();
    // The closing markup starts k tokens before the end; the first argument piece must have left well before
    // it, while most of the value was still to come.
    std::printf("first argument delta %.0f ms before the end of the stream (closing markup: last %lld tokens = "
                "%lld ms; value %lld tokens)\n",
                lead_ms, (long long)k, (long long)(k * kDelayMs), (long long)value_tokens);
    EXPECT_GT(lead_ms, double((k + value_tokens / 2) * kDelayMs));
  }
}
