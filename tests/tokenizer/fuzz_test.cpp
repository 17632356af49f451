// Bounded fuzzing with fixed seeds: encode/decode round trips on random bytes and random Unicode, and the
// DSML output parser on random mixes of markup fragments (no crash, no lost bytes, streaming == whole).
#include <gtest/gtest.h>

#include <random>

#include "tokenizer/dsml_parser.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer_test_support.h"

using namespace dsv4;

namespace {

void put_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
}

uint32_t random_code_point(std::mt19937& rng) {
  static const uint32_t ranges[][2] = {{0x20, 0x7E},     {0x00, 0x1F},     {0xA0, 0x2FF},   {0x300, 0x36F},
                                       {0x400, 0x4FF},   {0x600, 0x6FF},   {0x900, 0x97F},  {0x2000, 0x206F},
                                       {0x3000, 0x30FF}, {0x4E00, 0x9FFF}, {0xAC00, 0xD7A3}, {0xFF00, 0xFFEF},
                                       {0x1F300, 0x1FAFF}, {0x10000, 0x10FFFF}};
  const auto& r = ranges[rng() % std::size(ranges)];
  uint32_t cp = r[0] + rng() % (r[1] - r[0] + 1);
  if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';
  return cp;
}

}  // namespace

TEST(Fuzz, EncodeDecodeRoundTripOnRandomBytesAndUnicode) {
  DSV4_REQUIRE_TOKENIZER(tok);
  std::mt19937 rng(20261129);
  const char* fragments[] = {"<think>", "</think>", "｜DSML｜", "<｜User｜>", "<|EOT|>", "<｜", " ", "\n", "  ", "12345"};
  constexpr int kCases = 120000;
  std::vector<int32_t> ids;
  std::string s;
  for (int i = 0; i < kCases; ++i) {
    s.clear();
    const int len = int(rng() % 48);
    switch (i % 3) {
      case 0:  // random bytes: invalid UTF-8 goes through the byte-level alphabet
        for (int k = 0; k < len; ++k) s += char(rng() & 0xFF);
        break;
      case 1:  // random code points from many scripts and planes
        for (int k = 0; k < len / 2; ++k) put_utf8(s, random_code_point(rng));
        break;
      default:  // text mixed with added-token fragments
        for (int k = 0; k < len / 4; ++k) {
          if (rng() % 3 == 0) s += fragments[rng() % std::size(fragments)];
          else put_utf8(s, random_code_point(rng));
        }
    }
    ids.clear();
    tok.encode_append(s, ids);
    for (int32_t id : ids) ASSERT_TRUE(tok.is_token(id));
    ASSERT_EQ(tok.decode(ids), s) << "case " << i;
    if (i % 16 == 0) {  // streaming detokenization adds up to the lossy decode
      IncrementalDetokenizer d(tok);
      std::string streamed;
      for (int32_t id : ids) d.push(id, streamed);
      d.finish(streamed);
      ASSERT_EQ(streamed, utf8_lossy(s)) << "case " << i;
    }
  }
}

TEST(Fuzz, DsmlParserNeverLosesBytes) {
  std::mt19937 rng(4242);
  const std::string fragments[] = {
      "</think>", "</thi", "\n\n<｜DSML｜tool_calls", ">\n", "<｜DSML｜invoke", " name=\"f\">\n", "name=\"g\"",
      "<｜DSML｜parameter", " name=\"a\" string=\"true\">", " name=\"b\" string=\"false\">", "[1, 2]", "x<",
      "/｜DSML｜parameter", "</｜DSML｜parameter>", "</｜DSML｜invoke", "</｜DSML｜invoke>\n", "</｜DSML｜tool_calls>",
      "\n", "\n\n", "<", "｜", "DSML", "text", "中文", "\xff", "\"", " ", "{\"k\": 1}"};
  // A well-formed call, so that random cases also contain valid blocks.
  const std::string good = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"a\" "
                           "string=\"true\">v</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  constexpr int kCases = 100000;
  int with_calls = 0, malformed = 0, truncated = 0;
  for (int i = 0; i < kCases; ++i) {
    std::string text;
    const int n = int(rng() % 24);
    for (int k = 0; k < n; ++k) {
      const unsigned r = rng() % 40;
      if (r == 0) text += good;
      else if (r == 1 && !good.empty()) text += good.substr(0, rng() % good.size());
      else text += fragments[rng() % std::size(fragments)];
    }
    const ThinkingMode mode = i % 2 ? ThinkingMode::Thinking : ThinkingMode::Chat;
    const ParsedOutput whole = parse_output(text, mode, 9);

    StreamingOutputParser p(mode, 9);
    std::vector<OutputEvent> ev;
    for (size_t at = 0; at < text.size();) {
      const size_t step = 1 + rng() % 9;
      p.feed(std::string_view(text).substr(at, step), ev);
      at += step;
    }
    p.finish(ev);
    std::string raw, reasoning, content, previewed;
    size_t calls = 0;
    bool previewing = false;
    for (const auto& e : ev) {
      raw += e.raw;
      // Previews: a start, argument pieces that never hold markup, and (when the call completes) pieces
      // that add up to its arguments exactly.
      if (e.kind == OutputEvent::Kind::ToolCallStart) {
        ASSERT_TRUE(e.raw.empty());
        previewing = true;
        previewed.clear();
      }
      if (e.kind == OutputEvent::Kind::ToolCallArguments) {
        ASSERT_TRUE(previewing) << "case " << i;
        previewed += e.text;
        // A value ends at the first `/｜DSML｜parameter`, so the marker (or its `<` start) never leaks.
        ASSERT_EQ(previewed.find("/｜DSML｜parameter"), std::string::npos) << "case " << i << ": " << previewed;
      }
      if (e.kind == OutputEvent::Kind::ToolCall) {
        ASSERT_TRUE(previewing) << "case " << i;
        ASSERT_EQ(previewed, e.call.arguments) << "case " << i;
        previewing = false;
      }
      if (e.kind == OutputEvent::Kind::Reasoning) reasoning += e.text;
      if (e.kind == OutputEvent::Kind::Content) content += e.text;
      if (e.kind == OutputEvent::Kind::ToolCall) {
        ASSERT_TRUE(nlohmann::json::accept(e.call.arguments)) << e.call.arguments;
        ++calls;
      }
    }
    ASSERT_EQ(raw, text) << "case " << i;
    ASSERT_EQ(reasoning, whole.reasoning) << "case " << i;
    ASSERT_EQ(content, whole.content) << "case " << i;
    ASSERT_EQ(calls, whole.tool_calls.size()) << "case " << i;
    with_calls += calls > 0;
    malformed += whole.summary.tool_call_malformed;
    truncated += whole.summary.tool_call_truncated;
  }
  // The generator must reach every outcome, or the test proves little.
  EXPECT_GT(with_calls, 1000);
  EXPECT_GT(malformed, 1000);
  EXPECT_GT(truncated, 1000);
}
