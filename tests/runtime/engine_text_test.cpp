// The engine's text stream: detokenized deltas, stop strings across token boundaries (tiny-a's ids are
// valid ids of the real tokenizer, so its output decodes to real text pieces).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "runtime/engine.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

using namespace dsv4;

namespace {
const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";
const std::string kTok = std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json";

struct TextRun {
  std::string text;
  std::vector<int32_t> tokens;
  RequestOutput last;
};

TextRun run(const Tokenizer& tok, SamplingParams p) {
  EngineConfig c;
  c.model_dir = kTiny;
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.kv_cache_memory = 64ull << 20;
  Engine e(c, &tok);
  std::vector<int32_t> prompt{0, 100, 200, 300, 400, 500, 600, 700};
  e.add_request(prompt, p);
  TextRun r;
  while (e.has_work())
    for (auto& o : e.step()) {
      r.text += o.text;
      r.tokens.insert(r.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      if (o.finished()) r.last = o;
    }
  return r;
}
}  // namespace

TEST(EngineText, DeltasConcatenateToTheDecodedTextAndStopStringsCut) {
  if (!std::filesystem::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing";
  if (!std::filesystem::exists(kTok)) GTEST_SKIP() << "tokenizer missing (scripts/fetch_tokenizer.sh)";
  Tokenizer tok = Tokenizer::from_file(kTok);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 40;
  p.ignore_eos = true;
  TextRun full = run(tok, p);
  ASSERT_EQ(full.tokens.size(), 40u);
  EXPECT_EQ(full.text, utf8_lossy(tok.decode(full.tokens)));  // deltas are always valid UTF-8
  EXPECT_EQ(full.last.finish, FinishReason::Length);
  // A stop string made of the end of one token's text and the start of the next one's.
  std::string stop;
  size_t cut = 0, acc = 0;
  for (size_t i = 5; i + 1 < full.tokens.size() && stop.empty(); ++i) {
    std::string a(tok.token_bytes(full.tokens[i])), b(tok.token_bytes(full.tokens[i + 1]));
    acc = tok.decode(std::span<const int32_t>(full.tokens).subspan(0, i)).size();
    auto ascii = [](const std::string& t) {
      return std::all_of(t.begin(), t.end(), [](char ch) { return ch >= 0x20 && ch < 0x7f; });
    };
    if (a.size() >= 2 && b.size() >= 2 && ascii(a) && ascii(b)) {
      stop = a.substr(a.size() - 2) + b.substr(0, 2);
      cut = acc + a.size() - 2;
    }
  }
  ASSERT_FALSE(stop.empty());
  const size_t first = full.text.find(stop);
  ASSERT_NE(first, std::string::npos);
  p.stop = {stop};
  TextRun s = run(tok, p);
  EXPECT_EQ(s.text, full.text.substr(0, first)) << "stop '" << stop << "' planned at " << cut;
  EXPECT_EQ(s.last.finish, FinishReason::Stop);
  EXPECT_EQ(s.last.stop_reason, stop);
  EXPECT_LT(s.tokens.size(), full.tokens.size());
}

TEST(EngineText, StopTokenIsNotRendered) {
  if (!std::filesystem::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing";
  if (!std::filesystem::exists(kTok)) GTEST_SKIP() << "tokenizer missing (scripts/fetch_tokenizer.sh)";
  Tokenizer tok = Tokenizer::from_file(kTok);
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 40;
  p.ignore_eos = true;
  TextRun full = run(tok, p);
  p.stop_token_ids = {full.tokens[10]};
  TextRun s = run(tok, p);
  size_t k = 0;
  while (full.tokens[k] != full.tokens[10]) ++k;  // the first occurrence stops it
  EXPECT_EQ(s.tokens.size(), k + 1);
  EXPECT_EQ(s.text, utf8_lossy(tok.decode(std::span<const int32_t>(full.tokens).subspan(0, k))));
  EXPECT_EQ(s.last.finish, FinishReason::Stop);
  EXPECT_EQ(s.last.stop_reason, std::to_string(full.tokens[10]));
}
