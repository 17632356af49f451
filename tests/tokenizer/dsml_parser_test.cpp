// Output parsing: every reasoning / content / tool-call shape, whole and streamed (byte by byte and token by
// token), malformed and truncated blocks, and what the streaming parser holds back.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tokenizer/chat_encoding.h"
#include "tokenizer/dsml_parser.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer_test_support.h"

using namespace dsv4;
using Kind = OutputEvent::Kind;

namespace {

const std::string kCall1 =
    "<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"location\" string=\"true\">Beijing</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>";
const std::string kCall2 =
    "<｜DSML｜invoke name=\"search\">\n"
    "<｜DSML｜parameter name=\"q\" string=\"true\">a \"quoted\"\nline</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"opts\" string=\"false\">{\"k\": [1, 2.5, null]}</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>";
std::string block(const std::vector<std::string>& calls) {
  std::string s = "\n\n<｜DSML｜tool_calls>\n";
  for (size_t i = 0; i < calls.size(); ++i) s += calls[i] + "\n";
  return s + "</｜DSML｜tool_calls>";
}

// Streams `text` in pieces of `step` bytes; returns the aggregated result and checks the raw invariant.
ParsedOutput stream(std::string_view text, ThinkingMode mode, size_t step) {
  StreamingOutputParser p(mode, 1);
  std::vector<OutputEvent> ev;
  for (size_t i = 0; i < text.size(); i += step) p.feed(text.substr(i, step), ev);
  p.finish(ev);
  ParsedOutput out;
  std::string raw;
  for (auto& e : ev) {
    raw += e.raw;
    if (e.kind == Kind::Reasoning) out.reasoning += e.text;
    if (e.kind == Kind::Content) out.content += e.text;
    if (e.kind == Kind::ToolCall) out.tool_calls.push_back(e.call);
  }
  EXPECT_EQ(raw, text) << "events must account for every input byte";
  out.summary = p.summary();
  return out;
}

void expect_same(const ParsedOutput& a, const ParsedOutput& b) {
  EXPECT_EQ(a.reasoning, b.reasoning);
  EXPECT_EQ(a.content, b.content);
  ASSERT_EQ(a.tool_calls.size(), b.tool_calls.size());
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    EXPECT_EQ(a.tool_calls[i].name, b.tool_calls[i].name);
    EXPECT_EQ(a.tool_calls[i].arguments, b.tool_calls[i].arguments);
  }
  EXPECT_EQ(a.summary.reasoning_ended, b.summary.reasoning_ended);
  EXPECT_EQ(a.summary.tool_calls, b.summary.tool_calls);
  EXPECT_EQ(a.summary.tool_call_truncated, b.summary.tool_call_truncated);
  EXPECT_EQ(a.summary.tool_call_malformed, b.summary.tool_call_malformed);
}

// Whole text, byte by byte, and in 7-byte pieces must all agree.
ParsedOutput parse_all_ways(const std::string& text, ThinkingMode mode) {
  const ParsedOutput whole = parse_output(text, mode, 1);
  expect_same(whole, stream(text, mode, 1));
  expect_same(whole, stream(text, mode, 7));
  return whole;
}

}  // namespace

TEST(DsmlParser, ThinkingThenContent) {
  const auto r = parse_all_ways("Let me think.</think>The answer is 4.", ThinkingMode::Thinking);
  EXPECT_EQ(r.reasoning, "Let me think.");
  EXPECT_EQ(r.content, "The answer is 4.");
  EXPECT_TRUE(r.summary.reasoning_ended);
  EXPECT_TRUE(r.tool_calls.empty());
}

TEST(DsmlParser, ChatModeHasNoReasoning) {
  const auto r = parse_all_ways("Hello </think> there", ThinkingMode::Chat);
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "Hello </think> there");
}

TEST(DsmlParser, ReasoningCutOffByTheEnd) {
  const auto r = parse_all_ways("still thinking </thi", ThinkingMode::Thinking);
  EXPECT_EQ(r.reasoning, "still thinking </thi");
  EXPECT_FALSE(r.summary.reasoning_ended);
}

TEST(DsmlParser, ThinkingWithToolCalls) {
  const auto r = parse_all_ways("I should call tools.</think>Sure." + block({kCall1, kCall2}), ThinkingMode::Thinking);
  EXPECT_EQ(r.reasoning, "I should call tools.");
  EXPECT_EQ(r.content, "Sure.");
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"location": "Beijing", "days": 3})");
  EXPECT_EQ(r.tool_calls[1].name, "search");
  EXPECT_EQ(r.tool_calls[1].arguments, R"({"q": "a \"quoted\"\nline", "opts": {"k": [1, 2.5, null]}})");
  EXPECT_EQ(r.tool_calls[0].id.substr(0, 5), "call_");
  EXPECT_EQ(r.tool_calls[0].id.size(), 29u);
  EXPECT_NE(r.tool_calls[0].id, r.tool_calls[1].id);
  for (const auto& c : r.tool_calls) EXPECT_TRUE(nlohmann::json::accept(c.arguments));
  EXPECT_EQ(r.summary.tool_calls, 2);
  EXPECT_FALSE(r.summary.tool_call_truncated);
  EXPECT_FALSE(r.summary.tool_call_malformed);
}

TEST(DsmlParser, ChatModeToolCallWithoutContentOrParameters) {
  const auto r = parse_all_ways(block({"<｜DSML｜invoke name=\"now\">\n</｜DSML｜invoke>"}), ThinkingMode::Chat);
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].name, "now");
  EXPECT_EQ(r.tool_calls[0].arguments, "{}");
}

TEST(DsmlParser, EmptyBlockAndTextAfterTheBlock) {
  std::string text = "a";
  text += block({});
  text += " tail";
  const auto r = parse_all_ways(text, ThinkingMode::Chat);
  EXPECT_EQ(r.content, "a tail");
  EXPECT_TRUE(r.tool_calls.empty());
  EXPECT_FALSE(r.summary.tool_call_malformed);
}

TEST(DsmlParser, NonJsonValueOfAStringFalseParameterBecomesAString) {
  const auto r = parse_all_ways(
      block({"<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"n\" string=\"false\">forty two</｜DSML｜parameter>\n"
             "</｜DSML｜invoke>"}),
      ThinkingMode::Chat);
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"n": "forty two"})");
}

TEST(DsmlParser, TruncatedCallIsContentAndFlagged) {
  const std::string full = "ok" + block({kCall1, kCall2});
  // Cut everywhere inside the second invoke: the first call stays, the rest is content, flagged truncated.
  const size_t second = full.find("<｜DSML｜invoke name=\"search\"");
  for (size_t cut = second; cut < full.size() - std::string("</｜DSML｜tool_calls>").size(); cut += 5) {
    const std::string text = full.substr(0, cut);
    const auto r = parse_all_ways(text, ThinkingMode::Chat);
    ASSERT_EQ(r.tool_calls.size(), 1u) << cut;
    EXPECT_TRUE(r.summary.tool_call_truncated) << cut;
    EXPECT_EQ(r.content, "ok" + text.substr(full.find(kCall1) + kCall1.size() + 1)) << cut;
  }
  // Cut inside the first call: no call at all, the whole block is content.
  const std::string text = full.substr(0, full.find("Beijing"));
  const auto r = parse_all_ways(text, ThinkingMode::Chat);
  EXPECT_TRUE(r.tool_calls.empty());
  EXPECT_TRUE(r.summary.tool_call_truncated);
  EXPECT_EQ(r.content, text);
}

TEST(DsmlParser, MalformedBlocksAreReturnedAsContent) {
  const std::string bad[] = {
      "\n\n<｜DSML｜tool_callsX>\n",                                                 // garbage after the marker
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke nome=\"f\">\n</｜DSML｜invoke>\n",   // bad header
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"maybe\">1"
      "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>",                // bad string flag
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"true\">1"
      "</｜DSML｜parameter>\n<｜DSML｜parameter name=\"a\" string=\"true\">2</｜DSML｜parameter>\n"
      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>",                                     // duplicate parameter
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke> \n",   // junk between tags
  };
  for (const std::string& b : bad) {
    const std::string text = "pre" + b + "after";
    const auto r = parse_all_ways(text, ThinkingMode::Chat);
    EXPECT_TRUE(r.tool_calls.empty()) << b;
    EXPECT_TRUE(r.summary.tool_call_malformed) << b;
    EXPECT_EQ(r.content, text) << b;
  }
  // A good call, then garbage: the call is kept, the garbage is content.
  const std::string text = "x\n\n<｜DSML｜tool_calls>\n" + kCall1 + "\n<｜DSML｜oops>";
  const auto r = parse_all_ways(text, ThinkingMode::Chat);
  EXPECT_EQ(r.tool_calls.size(), 1u);
  EXPECT_TRUE(r.summary.tool_call_malformed);
  EXPECT_EQ(r.content, "x<｜DSML｜oops>");
}

TEST(DsmlParser, HoldsBackOnlyPossibleMarkerStarts) {
  StreamingOutputParser p(ThinkingMode::Thinking, 1);
  std::vector<OutputEvent> ev;
  p.feed("abc <", ev);  // "<" may start </think>
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "abc ");
  EXPECT_EQ(p.held_back(), 1u);
  p.feed("b>", ev);  // "<b>" cannot: emitted at once
  EXPECT_EQ(ev.back().text, "<b>");
  EXPECT_EQ(p.held_back(), 0u);
  p.feed("</think>hi\n", ev);
  EXPECT_EQ(ev.back().text, "hi");  // "\n" may start "\n\n<｜DSML｜tool_calls"
  EXPECT_EQ(p.held_back(), 1u);
  p.feed("\n<｜DSML｜tool", ev);
  EXPECT_EQ(p.held_back(), std::string("\n\n<｜DSML｜tool").size());
  p.feed("box", ev);  // not the marker after all
  EXPECT_EQ(ev.back().text, "\n\n<｜DSML｜toolbox");
  EXPECT_EQ(p.held_back(), 0u);
}

TEST(DsmlParser, ToolCallEmittedWhenItsInvokeCloses) {
  StreamingOutputParser p(ThinkingMode::Chat, 1);
  std::vector<OutputEvent> ev;
  p.feed("\n\n<｜DSML｜tool_calls>\n" + kCall1, ev);
  for (const auto& e : ev) EXPECT_TRUE(e.kind == Kind::ToolCallStart || e.kind == Kind::ToolCallArguments);
  ev.clear();
  p.feed("\n", ev);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back().kind, Kind::ToolCall);
  p.feed("</｜DSML｜tool_calls>", ev);
  EXPECT_EQ(ev.back().kind, Kind::ToolCallsEnd);
  p.finish(ev);
  EXPECT_FALSE(p.summary().tool_call_truncated);
}

TEST(DsmlParser, StringArgumentsStreamBeforeTheCallCloses) {
  StreamingOutputParser p(ThinkingMode::Chat, 1);
  std::vector<OutputEvent> ev;
  std::string args;
  auto take = [&] {
    for (const auto& e : ev)
      if (e.kind == Kind::ToolCallArguments) args += e.text;
    ev.clear();
  };
  p.feed("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"run\">\n", ev);
  EXPECT_TRUE(ev.empty()) << "the name is known once the first parameter (or the invoke's end) begins";
  p.feed("<｜DSML｜parameter", ev);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].kind, Kind::ToolCallStart);
  EXPECT_EQ(ev[0].call.name, "run");
  const std::string id = ev[0].call.id;
  ev.clear();
  p.feed(" name=\"cmd\" string=\"true\">ls -l \"a\"", ev);
  take();
  EXPECT_EQ(args, R"({"cmd": "ls -l \"a\")");
  p.feed(" 中</｜DSML", ev);  // a possible end marker is held back, the character is not
  take();
  EXPECT_EQ(args, R"({"cmd": "ls -l \"a\" 中)");
  p.feed("｜parameter>\n<｜DSML｜parameter name=\"n\" string=\"false\">1", ev);
  take();
  EXPECT_EQ(args, R"({"cmd": "ls -l \"a\" 中")") << "a non-string value waits for its end";
  p.feed("2</｜DSML｜parameter>\n</｜DSML｜invoke>\n", ev);
  ASSERT_FALSE(ev.empty());
  const OutputEvent call = ev.back();
  take();
  ASSERT_EQ(call.kind, Kind::ToolCall);
  EXPECT_EQ(call.call.id, id);
  EXPECT_EQ(call.call.arguments, args);
  EXPECT_EQ(args, R"({"cmd": "ls -l \"a\" 中", "n": 12})");
}

TEST(DsmlParser, RoundTripsWhatTheEncoderWrites) {
  // The assistant turn of golden case 1, as the model would generate it after "<think>".
  std::ifstream f(std::string(DSV4_SHARED_DIR) + "/fixtures/encoding/test_output_1.txt", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string prompt = ss.str();
  const size_t start = prompt.find("<｜Assistant｜><think>") + std::string("<｜Assistant｜><think>").size();
  const size_t end = prompt.find("<｜end▁of▁sentence｜>", start);
  const auto r = parse_all_ways(prompt.substr(start, end - start), ThinkingMode::Thinking);
  EXPECT_EQ(r.reasoning, "The user wants to know the weather in Beijing. I should use the get_weather tool.");
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"location": "Beijing", "unit": "celsius"})");
}

TEST(DsmlParser, TokenByTokenThroughTheDetokenizer) {
  DSV4_REQUIRE_TOKENIZER(tok);
  const std::string text = "推理中😀…</think>答案：" + block({kCall1, kCall2});
  IncrementalDetokenizer detok(tok);
  StreamingOutputParser p(ThinkingMode::Thinking, 1);
  std::vector<OutputEvent> ev;
  for (int32_t id : tok.encode(text)) p.feed(detok.push(id), ev);
  p.feed(detok.finish(), ev);
  p.finish(ev);
  std::string reasoning, content;
  int calls = 0;
  for (const auto& e : ev) {
    if (e.kind == Kind::Reasoning) reasoning += e.text;
    if (e.kind == Kind::Content) content += e.text;
    calls += e.kind == Kind::ToolCall;
  }
  EXPECT_EQ(reasoning, "推理中😀…");
  EXPECT_EQ(content, "答案：");
  EXPECT_EQ(calls, 2);
}
