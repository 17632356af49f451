// The generation driver on a scripted generator: reasoning / content / tool-call split, stop strings only on
// content, finish reasons, n > 1, logprobs, and aborts.
#include "server/generation.h"

#include <gtest/gtest.h>

#include "server_test_support.h"

using namespace dsv4;
using namespace dsv4::server;
using namespace dsv4::server::testing;
using namespace std::chrono_literals;

namespace {

GenerationRequest chat_request(const Tokenizer& tok, ThinkingMode mode, bool tools, int max_tokens = 200) {
  GenerationRequest r;
  r.prompts.push_back(tok.encode(std::string("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>") +
                                 (mode == ThinkingMode::Thinking ? "<think>" : "</think>")));
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.chat = true;
  r.thinking = mode;
  r.tools = tools;
  return r;
}

struct Outcome {
  std::vector<GenEvent> events;
  std::string reasoning, content;
};

Outcome run(Generation& g) {
  Outcome r;
  for (int i = 0; i < 10000 && !g.done(); ++i) g.poll(r.events, 100ms);
  EXPECT_TRUE(g.done());
  for (const auto& e : r.events) {
    if (e.kind == GenEvent::Kind::Reasoning) r.reasoning += e.text;
    if (e.kind == GenEvent::Kind::Content) r.content += e.text;
  }
  return r;
}

}  // namespace

TEST(ServerGeneration, StopStringsFireInContentButNeverInReasoning) {
  DSV4_NEED_TOKENIZER();
  Scripted s("I might say STOP here.</think>The answer STOP is hidden");
  auto req = chat_request(*tokenizer(), ThinkingMode::Thinking, false);
  req.params.stop = {"STOP"};
  Generation g(s.ctx, std::move(req));
  Outcome r = run(g);
  EXPECT_EQ(r.reasoning, "I might say STOP here.");
  EXPECT_EQ(r.content, "The answer ");
  EXPECT_EQ(g.result(0).finish_reason, "stop");
  EXPECT_EQ(g.result(0).stop_reason, "STOP");
  EXPECT_EQ(r.events.back().kind, GenEvent::Kind::Finished);
  EXPECT_EQ(s.generator.stats().running, 0) << "the engine request is aborted when the stop string fires";
}

TEST(ServerGeneration, IncludeStopStringAndEosFinish) {
  DSV4_NEED_TOKENIZER();
  Scripted s("alpha beta gamma");
  auto req = chat_request(*tokenizer(), ThinkingMode::Chat, false);
  req.params.stop = {"beta"};
  req.params.include_stop_str_in_output = true;
  Generation g(s.ctx, std::move(req));
  EXPECT_EQ(run(g).content, "alpha beta");

  Generation g2(s.ctx, chat_request(*tokenizer(), ThinkingMode::Chat, false));
  EXPECT_EQ(run(g2).content, "alpha beta gamma");
  EXPECT_EQ(g2.result(0).finish_reason, "stop") << "EOS";
  EXPECT_TRUE(g2.result(0).stop_reason.is_null());
  EXPECT_EQ(g2.completion_tokens(), int64_t(tokenizer()->encode("alpha beta gamma").size()) + 1) << "EOS counts";
}

TEST(ServerGeneration, ToolCallsAreParsedAndFinishAsToolCalls) {
  DSV4_NEED_TOKENIZER();
  Scripted s(kToolCallText);
  auto req = chat_request(*tokenizer(), ThinkingMode::Chat, true);
  req.params.stop = {"Paris"};  // inside the tool call: must not fire
  Generation g(s.ctx, std::move(req));
  Outcome r = run(g);
  EXPECT_EQ(r.content, "Let me check.");
  ASSERT_EQ(g.result(0).tool_calls.size(), 1u);
  const auto& call = g.result(0).tool_calls[0];
  EXPECT_EQ(call.name, "get_weather");
  EXPECT_EQ(Json::parse(call.arguments), Json::parse(R"({"city":"Paris","days":3})"));
  EXPECT_EQ(call.id.rfind("call_", 0), 0u);
  EXPECT_EQ(g.result(0).finish_reason, "tool_calls");
  int tool_events = 0;
  for (const auto& e : r.events) tool_events += e.kind == GenEvent::Kind::ToolCall;
  EXPECT_EQ(tool_events, 1);
}

TEST(ServerGeneration, MaxTokensInsideAToolCallIsLength) {
  DSV4_NEED_TOKENIZER();
  Scripted s(kToolCallText);
  const int cut = int(tokenizer()->encode("Let me check.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke").size()) + 3;
  Generation g(s.ctx, chat_request(*tokenizer(), ThinkingMode::Chat, true, cut));
  Outcome r = run(g);
  EXPECT_EQ(g.result(0).finish_reason, "length");
  EXPECT_TRUE(g.result(0).tool_calls.empty());
  EXPECT_EQ(r.content.rfind("Let me check.", 0), 0u) << "the cut block comes back as content: " << r.content;
}

TEST(ServerGeneration, WithoutToolsTheDsmlTextIsContent) {
  DSV4_NEED_TOKENIZER();
  Scripted s(kToolCallText);
  Generation g(s.ctx, chat_request(*tokenizer(), ThinkingMode::Chat, false));
  Outcome r = run(g);
  EXPECT_EQ(r.content, kToolCallText);
  EXPECT_TRUE(g.result(0).tool_calls.empty());
  EXPECT_EQ(g.result(0).finish_reason, "stop");
}

TEST(ServerGeneration, SeveralChoicesAndLogprobs) {
  DSV4_NEED_TOKENIZER();
  Scripted s("one two three");
  auto req = chat_request(*tokenizer(), ThinkingMode::Chat, false);
  req.n = 3;
  req.params.logprobs = 2;
  req.params.seed = 7;
  Generation g(s.ctx, std::move(req));
  run(g);
  ASSERT_EQ(g.num_choices(), 3);
  const int64_t per = int64_t(tokenizer()->encode("one two three").size()) + 1;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(g.result(i).content, "one two three");
    EXPECT_EQ(int64_t(g.result(i).logprobs.size()), per);
    EXPECT_EQ(g.result(i).logprobs[0].top.size(), 2u);
  }
  EXPECT_EQ(g.completion_tokens(), 3 * per);
  EXPECT_EQ(g.prompt_tokens(), int64_t(g.prompt(0).size())) << "the prompt counts once";
}

TEST(ServerGeneration, RawModeSkipsSpecialTokensAndAppliesStops) {
  DSV4_NEED_TOKENIZER();
  Scripted s("x<｜User｜>y END z");
  GenerationRequest req;
  req.prompts.push_back(tokenizer()->encode("hello"));
  req.params.max_tokens = 50;
  req.params.stop = {" END"};
  Generation g(s.ctx, std::move(req));
  EXPECT_EQ(run(g).content, "xy");
}

TEST(ServerGeneration, DestroyingARunningGenerationAbortsIt) {
  DSV4_NEED_TOKENIZER();
  Scripted s(std::string(400, 'a'), /*delay_ms=*/5);
  {
    Generation g(s.ctx, chat_request(*tokenizer(), ThinkingMode::Chat, false));
    std::vector<GenEvent> ev;
    g.poll(ev, 50ms);
    EXPECT_EQ(s.generator.stats().running, 1);
  }
  EXPECT_EQ(s.generator.stats().running, 0);
}

TEST(ServerGeneration, BackendRejectionIsA400AndLeavesNothingRunning) {
  DSV4_NEED_TOKENIZER();
  Scripted s("x");
  auto req = chat_request(*tokenizer(), ThinkingMode::Chat, false);
  req.params.top_p = 0;  // invalid
  try {
    Generation g(s.ctx, std::move(req));
    FAIL() << "expected a 400";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos);
  }
  EXPECT_EQ(s.generator.stats().running, 0);
}
