// Streaming detokenization: deltas are valid UTF-8, never repeat text, and add up to the lossy full decode.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer_test_support.h"

using namespace dsv4;

TEST(Utf8Lossy, ReplacesMaximalIllFormedSubparts) {
  EXPECT_EQ(utf8_lossy("abc"), "abc");
  EXPECT_EQ(utf8_lossy("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(utf8_lossy("\xe4\xbd"), "\xEF\xBF\xBD");            // truncated at the end: one replacement
  EXPECT_EQ(utf8_lossy("\xe0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // E0 needs A0..BF next: two
  EXPECT_EQ(utf8_lossy("\xed\xa0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_lossy("\xf0\x9f\x98x"), "\xEF\xBF\xBDx");
  std::string out;
  EXPECT_EQ(append_utf8_lossy("ok\xf0\x9f", out, false), 2u);  // the incomplete tail is left for later
  EXPECT_EQ(out, "ok");
}

TEST(IncrementalDetokenizer, HoldsSplitCharactersUntilComplete) {
  DSV4_REQUIRE_TOKENIZER(tok);
  // "😀" encodes to several byte tokens; nothing is emitted before the last one.
  const auto ids = tok.encode("a😀");
  ASSERT_GE(ids.size(), 3u);
  IncrementalDetokenizer d(tok);
  std::string all;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string delta = d.push(ids[i]);
    EXPECT_TRUE(is_valid_utf8(delta));
    if (i > 0 && i + 1 < ids.size()) {
      EXPECT_EQ(delta, "") << i;
    }
    all += delta;
  }
  EXPECT_EQ(d.pending_bytes(), 0u);
  EXPECT_EQ(all + d.finish(), "a😀");
}

TEST(IncrementalDetokenizer, IncompleteTailBecomesReplacementAtFinish) {
  DSV4_REQUIRE_TOKENIZER(tok);
  auto ids = tok.encode("x😀");
  ids.pop_back();
  IncrementalDetokenizer d(tok);
  std::string all;
  for (int32_t id : ids) all += d.push(id);
  EXPECT_EQ(all, "x");
  EXPECT_GT(d.pending_bytes(), 0u);
  EXPECT_EQ(d.finish(), "\xEF\xBF\xBD");
}

TEST(IncrementalDetokenizer, SkipsSpecialTokensWhenAsked) {
  DSV4_REQUIRE_TOKENIZER(tok);
  IncrementalDetokenizer keep(tok), skip(tok, true);
  std::string a, b;
  for (int32_t id : tok.encode("<think>hi</think>ok")) {
    a += keep.push(id);
    b += skip.push(id);
  }
  EXPECT_EQ(a, "<think>hi</think>ok");
  EXPECT_EQ(b, "hiok");
  EXPECT_THROW(keep.push(-1), Error);
}

TEST(IncrementalDetokenizer, DeltasAddUpToTheLossyDecodeForRandomTokens) {
  DSV4_REQUIRE_TOKENIZER(tok);
  std::mt19937 rng(11);
  for (int round = 0; round < 300; ++round) {
    std::vector<int32_t> ids;
    const int n = 1 + int(rng() % 60);
    for (int i = 0; i < n; ++i) {
      // Mostly byte-ish tokens (ids below 256 are single bytes and fragments), some whole words and specials.
      const int kind = int(rng() % 4);
      ids.push_back(kind == 0 ? int32_t(rng() % 128000) : kind == 1 ? int32_t(128800 + rng() % 480) : int32_t(rng() % 256));
    }
    IncrementalDetokenizer d(tok);
    std::string all;
    for (int32_t id : ids) {
      const size_t before = all.size();
      d.push(id, all);
      ASSERT_TRUE(is_valid_utf8(std::string_view(all).substr(before)));
    }
    d.finish(all);
    ASSERT_EQ(all, utf8_lossy(tok.decode(ids)));
  }
}
