// RequestText, the one place that renders tokens to text and applies stop strings: raw text (stops on all of
// it) and chat output (stops on the content channel only; tool-call previews; markup never in content).
#include "runtime/request_text.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tokenizer/tokenizer.h"

using namespace dsv4;

namespace {
const std::string kTok = std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json";

const Tokenizer* tok() {
  static const std::unique_ptr<Tokenizer> t =
      std::filesystem::exists(kTok) ? std::make_unique<Tokenizer>(Tokenizer::from_file(kTok)) : nullptr;
  return t.get();
}

struct Out {
  std::string reasoning, content, previewed;
  std::vector<ParsedToolCall> calls;
  bool stopped = false;
};

// Feeds `text` token by token (its real tokenization) and gathers the events.
Out render(const std::string& text, std::vector<std::string> stops, TextOptions opt) {
  SamplingParams p;
  p.stop = std::move(stops);
  RequestText rt(*tok(), p, opt);
  std::vector<OutputEvent> ev;
  for (int32_t id : tok()->encode(text)) rt.add(id, false, ev);
  rt.finish(ev);
  Out o;
  for (auto& e : ev) {
    if (e.kind == OutputEvent::Kind::Reasoning) o.reasoning += e.text;
    if (e.kind == OutputEvent::Kind::Content) o.content += e.text;
    if (e.kind == OutputEvent::Kind::ToolCallArguments) o.previewed += e.text;
    if (e.kind == OutputEvent::Kind::ToolCall) o.calls.push_back(e.call);
  }
  o.stopped = rt.stopped();
  return o;
}

const std::string kCall =
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"q\" string=\"true\">STOP "
    "inside</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
}  // namespace

TEST(RequestText, RawTextStopsAnywhere) {
  if (!tok()) GTEST_SKIP() << "no tokenizer";
  const Out o = render("I think STOP.</think>more", {"STOP"}, {});
  EXPECT_EQ(o.content, "I think ");
  EXPECT_TRUE(o.stopped);
}

TEST(RequestText, ChatStopsOnlyOnContent) {
  if (!tok()) GTEST_SKIP() << "no tokenizer";
  TextOptions t;
  t.chat = ThinkingMode::Thinking;
  const Out o = render("I might say STOP here.</think>The answer STOP is hidden", {"STOP"}, t);
  EXPECT_EQ(o.reasoning, "I might say STOP here.");
  EXPECT_EQ(o.content, "The answer ");
  EXPECT_TRUE(o.stopped);
}

TEST(RequestText, StopStringsDoNotFireInsideToolCalls) {
  if (!tok()) GTEST_SKIP() << "no tokenizer";
  TextOptions t;
  t.chat = ThinkingMode::Chat;
  // "ST" before the block could start "STOP": held back, then released when the call begins.
  const Out o = render("Calling ST" + kCall + " then STOP after", {"STOP"}, t);
  EXPECT_EQ(o.content, "Calling ST then ");
  ASSERT_EQ(o.calls.size(), 1u);
  EXPECT_EQ(o.calls[0].arguments, R"({"q": "STOP inside"})");
  EXPECT_EQ(o.previewed, o.calls[0].arguments) << "previews add up to the call";
  EXPECT_TRUE(o.stopped);
}

TEST(RequestText, WithoutToolsTheBlockIsContent) {
  if (!tok()) GTEST_SKIP() << "no tokenizer";
  TextOptions t;
  t.chat = ThinkingMode::Chat;
  t.tool_calls = false;
  const Out o = render("Calling" + kCall, {}, t);
  EXPECT_EQ(o.content, "Calling" + kCall);
  EXPECT_TRUE(o.calls.empty());
  EXPECT_TRUE(o.previewed.empty());
}
