// DeepSeek-V4 prompt encoding: the four official golden pairs byte for byte, then each rule of
// encoding_dsv4.py on small inputs.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/python_json.h"

using namespace dsv4;
using json = nlohmann::ordered_json;

namespace {

std::string fixture(const std::string& name) {
  std::ifstream f(std::string(DSV4_SHARED_DIR) + "/fixtures/encoding/" + name, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ChatEncodeOptions thinking() {
  ChatEncodeOptions o;
  o.thinking_mode = ThinkingMode::Thinking;
  return o;
}

std::string error_of(const json& messages, ChatEncodeOptions o = {}) {
  try {
    encode_chat_messages(messages, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const std::string kBos = "<｜begin▁of▁sentence｜>", kEos = "<｜end▁of▁sentence｜>";

}  // namespace

// Cases 1-3 are thinking mode, case 4 chat mode (fixtures/encoding/README.md).
TEST(ChatEncoding, GoldenPairsByteExact) {
  for (int i = 1; i <= 4; ++i) {
    const auto request = json::parse(fixture("test_input_" + std::to_string(i) + ".json"));
    const std::string want = fixture("test_output_" + std::to_string(i) + ".txt");
    ASSERT_FALSE(want.empty()) << i;
    EXPECT_EQ(encode_chat_request(request, i <= 3 ? thinking() : ChatEncodeOptions{}), want) << "case " << i;
  }
}

TEST(ChatEncoding, GenerationPrefixes) {
  const json msgs = json::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_EQ(encode_chat_messages(msgs, {}), kBos + "<｜User｜>hi<｜Assistant｜></think>");
  EXPECT_EQ(encode_chat_messages(msgs, thinking()), kBos + "<｜User｜>hi<｜Assistant｜><think>");
  ChatEncodeOptions no_bos;
  no_bos.add_bos = false;
  EXPECT_EQ(encode_chat_messages(msgs, no_bos), "<｜User｜>hi<｜Assistant｜></think>");
}

TEST(ChatEncoding, ReasoningEffortMaxPrefixOnlyInThinkingMode) {
  const json msgs = json::array({{{"role", "system"}, {"content", "S"}}, {{"role", "user"}, {"content", "q"}}});
  ChatEncodeOptions o = thinking();
  o.reasoning_effort = ReasoningEffort::Max;
  const std::string p = encode_chat_messages(msgs, o);
  EXPECT_EQ(p.rfind(kBos + "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n", 0), 0u);
  EXPECT_NE(p.find("left unchecked.\n\nS<｜User｜>q<｜Assistant｜><think>"), std::string::npos);
  o.reasoning_effort = ReasoningEffort::High;
  EXPECT_EQ(encode_chat_messages(msgs, o), kBos + "S<｜User｜>q<｜Assistant｜><think>");
  o.thinking_mode = ThinkingMode::Chat;
  o.reasoning_effort = ReasoningEffort::Max;
  EXPECT_EQ(encode_chat_messages(msgs, o), kBos + "S<｜User｜>q<｜Assistant｜></think>");
}

TEST(ChatEncoding, ResponseFormatBlock) {
  const json req = {{"messages", json::array({{{"role", "user"}, {"content", "q"}}})},
                    {"response_format", {{"type", "json_object"}}}};
  EXPECT_EQ(encode_chat_request(req),
            kBos + "\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
                   "{\"type\": \"json_object\"}<｜User｜>q<｜Assistant｜></think>");
}

TEST(ChatEncoding, ToolResultsMergedAndReorderedToCallOrder) {
  const json msgs = json::parse(R"([
    {"role": "user", "content": "go"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1, \"s\": \"v\"}"}},
      {"id": "b", "type": "function", "function": {"name": "g", "arguments": {"k": [1, 2.5, null, true]}}}]},
    {"role": "tool", "tool_call_id": "b", "content": "B"},
    {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "A1"}, {"type": "image"}]},
    {"role": "user", "content": "and?"}
  ])");
  const std::string p = encode_chat_messages(msgs, {});
  EXPECT_EQ(p, kBos + "<｜User｜>go<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n"
                      "<｜DSML｜invoke name=\"f\">\n"
                      "<｜DSML｜parameter name=\"x\" string=\"false\">1</｜DSML｜parameter>\n"
                      "<｜DSML｜parameter name=\"s\" string=\"true\">v</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
                      "<｜DSML｜invoke name=\"g\">\n"
                      "<｜DSML｜parameter name=\"k\" string=\"false\">[1, 2.5, null, true]</｜DSML｜parameter>\n"
                      "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos +
                      "<｜User｜><tool_result>A1\n\n[Unsupported image]</tool_result>\n\n<tool_result>B</tool_result>"
                      "\n\nand?<｜Assistant｜></think>");
}

TEST(ChatEncoding, ArgumentsThatAreNotAnObjectBecomeOneParameter) {
  const json msgs = json::parse(R"([{"role": "user", "content": "u"},
    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}]}])");
  EXPECT_NE(encode_chat_messages(msgs, {}).find(
                "<｜DSML｜parameter name=\"arguments\" string=\"true\">not json</｜DSML｜parameter>"),
            std::string::npos);
}

TEST(ChatEncoding, DropThinkingAndDeveloperMessages) {
  const json msgs = json::parse(R"([
    {"role": "developer", "content": "dev"},
    {"role": "assistant", "reasoning_content": "r1", "content": "a1"},
    {"role": "user", "content": "u2"},
    {"role": "assistant", "reasoning_content": "r2", "content": "a2"}])");
  // Earlier developer message dropped, earlier reasoning dropped, the last turn keeps its reasoning.
  EXPECT_EQ(encode_chat_messages(msgs, thinking()),
            kBos + "a1" + kEos + "<｜User｜>u2<｜Assistant｜><think>r2</think>a2" + kEos);
  ChatEncodeOptions keep = thinking();
  keep.drop_thinking = false;
  EXPECT_EQ(encode_chat_messages(msgs, keep), kBos + "<｜User｜>dev<｜Assistant｜><think>r1</think>a1" + kEos +
                                                   "<｜User｜>u2<｜Assistant｜><think>r2</think>a2" + kEos);
}

TEST(ChatEncoding, TasksAndWithoutEos) {
  const json msgs = json::parse(R"([{"role": "user", "content": "q", "task": "title"},
                                    {"role": "assistant", "content": "T", "wo_eos": true}])");
  EXPECT_EQ(encode_chat_messages(msgs, thinking()), kBos + "<｜User｜>q<｜title｜>T");
}

TEST(ChatEncoding, ContextShapesButIsNotRendered) {
  const json ctx = json::parse(R"([{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}])");
  const json msgs = json::parse(R"([{"role": "user", "content": "u2"}])");
  EXPECT_EQ(encode_chat_messages(msgs, thinking(), ctx), "<｜User｜>u2<｜Assistant｜><think>");
}

TEST(ChatEncoding, TopLevelToolsGoToASystemMessage) {
  const json tools = json::parse(R"([{"type": "function", "function": {"name": "f", "parameters": {}}}])");
  const json req = {{"messages", json::array({{{"role", "user"}, {"content", "q"}}})}, {"tools", tools}};
  const std::string p = encode_chat_request(req);
  EXPECT_EQ(p.rfind(kBos + "\n\n## Tools\n\n", 0), 0u);
  EXPECT_NE(p.find("### Available Tool Schemas\n\n{\"name\": \"f\", \"parameters\": {}}\n\nYou MUST"),
            std::string::npos);
  const json req2 = {{"messages", json::array({{{"role", "user"}, {"content", "q"}}})},
                     {"thinking", {{"type", "enabled"}}}, {"reasoning_effort", "max"}};
  EXPECT_EQ(parse_chat_request(req2).options.thinking_mode, ThinkingMode::Thinking);
  EXPECT_EQ(parse_chat_request(req2).options.reasoning_effort, ReasoningEffort::Max);
}

TEST(ChatEncoding, ErrorsWhereTheReferenceAsserts) {
  EXPECT_NE(error_of(json::parse(R"([{"role": "wizard", "content": "x"}])")).find("unknown role 'wizard'"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"([{"role": "user", "content": "x", "task": "nope"}])")).find("invalid task"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"([{"role": "developer", "content": ""}])")).find("developer message needs"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"role": "user"})")).find("must be a JSON array"), std::string::npos);
  EXPECT_THROW(parse_reasoning_effort("medium"), Error);
  EXPECT_THROW(parse_thinking_mode("fast"), Error);
  EXPECT_THROW(parse_chat_request(json::parse(R"({"msgs": []})")), Error);
}

TEST(PythonJson, MatchesJsonDumps) {
  EXPECT_EQ(python_json_dumps(json::parse(R"({"b": [1, -2, 3.0, 0.5, 1e16, 1e15, 1e-05, 0.0001, -0.0]})")),
            R"({"b": [1, -2, 3.0, 0.5, 1e+16, 1000000000000000.0, 1e-05, 0.0001, -0.0]})");
  EXPECT_EQ(python_json_dumps(json::parse(R"([1.5e300, 123456789.125, 2.5e-300, 0.1, 100.0, 1e22])")),
            "[1.5e+300, 123456789.125, 2.5e-300, 0.1, 100.0, 1e+22]");
  EXPECT_EQ(python_json_dumps(json::parse(R"({"s": "a\"b\\c\n\t\u0001\u007f中", "e": {}, "l": [], "n": null})")),
            "{\"s\": \"a\\\"b\\\\c\\n\\t\\u0001\x7f中\", \"e\": {}, \"l\": [], \"n\": null}");
  EXPECT_EQ(python_json_dumps(json::parse(R"({"z": 1, "a": 2})")), R"({"z": 1, "a": 2})");  // insertion order
}
