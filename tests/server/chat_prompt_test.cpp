// Rendering OpenAI / Anthropic chat requests into DeepSeek-V4 prompts, and their 400s.
#include "server/chat_prompt.h"

#include <gtest/gtest.h>

using namespace dsv4;
using namespace dsv4::server;

namespace {
Json parse(const char* s) { return Json::parse(s); }
bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}
int status_of(const Json& body, bool anthropic = false) {
  try {
    anthropic ? anthropic_chat_prompt(body, {}) : openai_chat_prompt(body, {});
  } catch (const ApiError& e) {
    return e.status;
  }
  return 200;
}
}  // namespace

TEST(ServerChatPrompt, PlainChatEndsWithTheNonThinkingGenerationPrefix) {
  auto p = openai_chat_prompt(
      parse(R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]})"), {});
  EXPECT_EQ(p.text, "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜></think>");
  EXPECT_EQ(p.thinking, ThinkingMode::Chat);
  EXPECT_FALSE(p.tools);
}

TEST(ServerChatPrompt, ThinkingSwitchesAndEffort) {
  const char* msgs = R"("messages":[{"role":"user","content":"Hi"}])";
  for (const std::string extra :
       {R"("chat_template_kwargs":{"thinking":true})", R"("chat_template_kwargs":{"enable_thinking":true})",
        R"("thinking":{"type":"enabled"})", R"("chat_template_kwargs":{"thinking_mode":"thinking"})"}) {
    auto p = openai_chat_prompt(Json::parse("{" + std::string(msgs) + "," + extra + "}"), {});
    EXPECT_TRUE(ends_with(p.text, "<｜Assistant｜><think>")) << extra << ": " << p.text;
    EXPECT_EQ(p.thinking, ThinkingMode::Thinking);
  }
  ChatEncodeOptions on;
  on.thinking_mode = ThinkingMode::Thinking;
  auto off =
      openai_chat_prompt(Json::parse("{" + std::string(msgs) + R"(,"chat_template_kwargs":{"thinking":false}})"), on);
  EXPECT_EQ(off.thinking, ThinkingMode::Chat) << "the request overrides the server default";
  auto max = openai_chat_prompt(
      Json::parse("{" + std::string(msgs) + R"(,"chat_template_kwargs":{"thinking":true,"reasoning_effort":"max"}})"),
      {});
  EXPECT_NE(max.text.find("Reasoning Effort: Absolute maximum"), std::string::npos);
  EXPECT_EQ(parse_effort_field("medium", "x"), ReasoningEffort::High);
  EXPECT_EQ(parse_effort_field("xhigh", "x"), ReasoningEffort::Max);
  EXPECT_THROW(parse_effort_field("extreme", "x"), ApiError);
}

TEST(ServerChatPrompt, DeveloperIsSystemAndUnknownFieldsDoNotReachTheEncoder) {
  auto a = openai_chat_prompt(
      parse(R"({"messages":[{"role":"developer","content":"Rules."},{"role":"user","content":"Hi","task":"bogus"}]})"),
      {});
  auto b = openai_chat_prompt(
      parse(R"({"messages":[{"role":"system","content":"Rules."},{"role":"user","content":"Hi"}]})"), {});
  EXPECT_EQ(a.text, b.text);
}

TEST(ServerChatPrompt, ToolsToolCallsAndToolResultsRender) {
  auto p = openai_chat_prompt(parse(R"({
    "messages":[{"role":"user","content":"Weather in Paris?"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"sunny, 21 C"}],
    "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]})"),
                              {});
  EXPECT_TRUE(p.tools);
  EXPECT_NE(p.text.find("## Tools"), std::string::npos);
  EXPECT_NE(p.text.find("<｜DSML｜invoke name=\"get_weather\">"), std::string::npos);
  EXPECT_NE(p.text.find("<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>"),
            std::string::npos);
  EXPECT_NE(p.text.find("<tool_result>sunny, 21 C</tool_result>"), std::string::npos);
  EXPECT_TRUE(ends_with(p.text, "<｜Assistant｜></think>"));
}

TEST(ServerChatPrompt, ToolChoice) {
  const std::string base =
      R"("messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a"}},{"type":"function","function":{"name":"b"}}])";
  auto none = openai_chat_prompt(Json::parse("{" + base + R"(,"tool_choice":"none"})"), {});
  EXPECT_FALSE(none.tools);
  EXPECT_EQ(none.text.find("## Tools"), std::string::npos);
  auto named = openai_chat_prompt(
      Json::parse("{" + base + R"(,"tool_choice":{"type":"function","function":{"name":"b"}}})"), {});
  EXPECT_TRUE(named.tools);
  EXPECT_EQ(named.text.find("\"name\": \"a\""), std::string::npos);
  EXPECT_NE(named.text.find("\"name\": \"b\""), std::string::npos);
  EXPECT_EQ(status_of(Json::parse("{" + base + R"(,"tool_choice":{"type":"function","function":{"name":"zzz"}}})")),
            400);
  EXPECT_TRUE(openai_chat_prompt(Json::parse("{" + base + R"(,"tool_choice":"required"})"), {}).tools);
}

TEST(ServerChatPrompt, ResponseFormatRendersIntoTheSystemPart) {
  auto p = openai_chat_prompt(
      parse(R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})"), {});
  EXPECT_NE(p.text.find("## Response Format"), std::string::npos);
  auto t = openai_chat_prompt(
      parse(R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}})"), {});
  EXPECT_EQ(t.text.find("## Response Format"), std::string::npos);
  EXPECT_EQ(status_of(parse(R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}})")), 400);
}

TEST(ServerChatPrompt, BadMessagesAre400) {
  for (const char* bad :
       {R"({})", R"({"messages":[]})", R"({"messages":"hi"})", R"({"messages":[{"content":"x"}]})",
        R"({"messages":[{"role":"robot","content":"x"}]})", R"({"messages":[{"role":"user","content":5}]})",
        R"({"messages":[{"role":"user","content":[{"text":"no type"}]}]})",
        R"({"messages":[{"role":"assistant","content":"","tool_calls":[{"function":{}}]}]})",
        R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})",
        R"({"messages":[{"role":"user","content":"x"}],"tools":"all"})",
        R"({"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"thinking":"maybe"}})"})
    EXPECT_EQ(status_of(Json::parse(bad)), 400) << bad;
}

TEST(ServerChatPrompt, AnthropicConvertsToOpenAIShapes) {
  Json conv = anthropic_to_openai(parse(R"({
    "system":[{"type":"text","text":"Sys A"},{"type":"text","text":"Sys B"}],
    "messages":[{"role":"user","content":"Weather?"},
      {"role":"assistant","content":[{"type":"thinking","thinking":"need tool","signature":"x"},{"type":"text","text":"Checking."},
                                      {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
      {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"sunny"}]},{"type":"text","text":"Thanks"}]}],
    "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object"}}]})"));
  const Json& m = conv["messages"];
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0]["role"], "system");
  EXPECT_EQ(m[0]["content"], "Sys A\n\nSys B");
  EXPECT_EQ(m[2]["reasoning_content"], "need tool");
  EXPECT_EQ(m[2]["content"], "Checking.");
  EXPECT_EQ(m[2]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(m[2]["tool_calls"][0]["function"]["arguments"]["city"], "Paris");
  EXPECT_EQ(m[3]["role"], "tool");
  EXPECT_EQ(m[3]["tool_call_id"], "toolu_1");
  EXPECT_EQ(m[4]["role"], "user");
  EXPECT_EQ(conv["tools"][0]["function"]["parameters"]["type"], "object");
}

TEST(ServerChatPrompt, AnthropicAndOpenAIRenderTheSameConversationAlike) {
  auto a = anthropic_chat_prompt(
      parse(
          R"({"system":"S","messages":[{"role":"user","content":"Hi"}],"thinking":{"type":"enabled","budget_tokens":64}})"),
      {});
  auto o = openai_chat_prompt(
      parse(
          R"({"messages":[{"role":"system","content":"S"},{"role":"user","content":"Hi"}],"chat_template_kwargs":{"thinking":true}})"),
      {});
  EXPECT_EQ(a.text, o.text);
  EXPECT_EQ(a.thinking, ThinkingMode::Thinking);
  EXPECT_EQ(status_of(parse(R"({"messages":[{"role":"robot","content":"S"}]})"), true), 400);
  EXPECT_EQ(status_of(parse(R"({"messages":[{"role":"user","content":[{"type":"image"}]}]})"), true), 400)
      << "a text-only model refuses non-text user blocks instead of dropping them";
  EXPECT_EQ(
      status_of(
          parse(
              R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]})"),
          true),
      400);
}

TEST(ServerChatPrompt, AnthropicSystemTurnsRenderWhereTheyStand) {
  // Claude Code puts its environment block in a system turn inside messages (issue 18).
  auto a = anthropic_chat_prompt(parse(R"({"system":"S","messages":[{"role":"user","content":"Hi"},
      {"role":"system","content":[{"type":"text","text":"Env A"},{"type":"text","text":"Env B"}]},
      {"role":"user","content":"Go"}]})"),
                                 {});
  auto o = openai_chat_prompt(parse(R"({"messages":[{"role":"system","content":"S"},{"role":"user","content":"Hi"},
      {"role":"system","content":"Env A\n\nEnv B"},{"role":"user","content":"Go"}]})"),
                              {});
  EXPECT_EQ(a.text, o.text);
  EXPECT_NE(a.text.find("<｜User｜>HiEnv A\n\nEnv B<｜User｜>Go"), std::string::npos) << a.text;
  // Claude Code's order: the environment after the user turn; the model must still be asked to answer.
  auto last = anthropic_chat_prompt(
      parse(R"({"messages":[{"role":"user","content":"Hi"},{"role":"system","content":"Env"}],"thinking":{"type":"adaptive"}})"),
      {});
  EXPECT_TRUE(ends_with(last.text, "<｜User｜>HiEnv<｜Assistant｜><think>")) << last.text;
  try {
    anthropic_chat_prompt(parse(R"({"messages":[{"role":"user","content":"Hi"},{"role":"system","content":[{"type":"image"}]}]})"),
                          {});
    FAIL() << "expected a 400";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "messages[1].content");
  }
}

TEST(ServerChatPrompt, ReasoningEffortWithoutASwitchTurnsThinkingOn) {
  auto on = openai_chat_prompt(parse(R"({"messages":[{"role":"user","content":"Hi"}],"reasoning_effort":"low"})"), {});
  EXPECT_EQ(on.thinking, ThinkingMode::Thinking);
  auto none = openai_chat_prompt(parse(R"({"messages":[{"role":"user","content":"Hi"}],"reasoning_effort":"none"})"), {});
  EXPECT_EQ(none.thinking, ThinkingMode::Chat);
  auto off = openai_chat_prompt(
      parse(R"({"messages":[{"role":"user","content":"Hi"}],"reasoning_effort":"max","chat_template_kwargs":{"thinking":false}})"),
      {});
  EXPECT_EQ(off.thinking, ThinkingMode::Chat) << "an explicit switch wins";
}
