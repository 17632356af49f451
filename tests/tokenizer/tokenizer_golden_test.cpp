// Ids from HF's own implementation (tests/tokenizer/gen/make_golden.js, npm tokenizers) must be reproduced
// exactly, and decode must give the text back.
#include <gtest/gtest.h>

#include <map>

#include "tokenizer/added_tokens.h"
#include "tokenizer_test_support.h"

using namespace dsv4;

TEST(TokenizerGolden, FileHasEnoughCasesOfEveryKind) {
  const auto& g = test::golden_cases();
  ASSERT_GE(g.cases.size(), 3000u);
  std::map<std::string, int> per_cat;
  for (const auto& c : g.cases) per_cat[c.cat]++;
  for (const char* cat : {"edge", "prose", "code", "english", "zh", "ja", "emoji", "numbers", "whitespace",
                          "special", "unicode", "mixed"})
    EXPECT_GE(per_cat[cat], 100) << cat;
}

TEST(TokenizerGolden, OverlayEqualsTheOneTheGoldenCasesWereMadeWith) {
  const auto& g = test::golden_cases();
  const auto& want = g.header.at("added_tokens");
  const auto& have = v4_added_tokens_from_128800();
  ASSERT_EQ(want.size(), have.size());
  for (size_t i = 0; i < have.size(); ++i) {
    EXPECT_EQ(want[i][0].get<int32_t>(), have[i].first);
    EXPECT_EQ(want[i][1].get<std::string>(), have[i].second);
  }
}

TEST(TokenizerGolden, IdsIdenticalToHuggingFace) {
  DSV4_REQUIRE_TOKENIZER(tok);
  const auto& g = test::golden_cases();
  int mismatches = 0;
  size_t tokens = 0;
  for (const auto& c : g.cases) {
    const auto ids = tok.encode(c.text);
    tokens += ids.size();
    if (ids != c.ids && ++mismatches <= 20) {
      ADD_FAILURE() << "[" << c.cat << "] " << nlohmann::json(c.text).dump() << "\n  hf:  "
                    << nlohmann::json(c.ids).dump() << "\n  ours: " << nlohmann::json(ids).dump();
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << g.cases.size() << " cases, " << tokens << " tokens";
}

TEST(TokenizerGolden, DecodeGivesTheTextBack) {
  DSV4_REQUIRE_TOKENIZER(tok);
  for (const auto& c : test::golden_cases().cases) ASSERT_EQ(tok.decode(c.ids), c.text) << "[" << c.cat << "]";
}
