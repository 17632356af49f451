// Loading, the V4 overlay, special tokens, decode options, invalid UTF-8 and thread safety.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer_test_support.h"

using namespace dsv4;
using Ids = std::vector<int32_t>;

namespace {

std::string file_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string load_error(const std::string& json_text) {
  try {
    Tokenizer::from_json(json_text, "t.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Tokenizer, V4SpecialTokenIdsFromTheSpec) {
  DSV4_REQUIRE_TOKENIZER(tok);
  EXPECT_TRUE(tok.v4_overlay_applied());
  EXPECT_EQ(tok.vocab_size(), 129280);
  const std::pair<const char*, int32_t> want[] = {
      {"<｜begin▁of▁sentence｜>", 0}, {"<｜end▁of▁sentence｜>", 1}, {"<｜▁pad▁｜>", 2},
      {"<｜place▁holder▁no▁0｜>", 128000}, {"<｜place▁holder▁no▁799｜>", 128799}, {"<｜fim▁hole｜>", 128800},
      {"<｜User｜>", 128803}, {"<｜Assistant｜>", 128804}, {"<|EOT|>", 128805}, {"<｜tool▁sep｜>", 128814},
      {"<think>", 128821}, {"</think>", 128822}, {"｜DSML｜", 128825}, {"<｜begin▁sys｜>", 128826},
      {"<｜latest_reminder｜>", 128828}, {"<｜action｜>", 128829}, {"<｜query｜>", 128830}, {"<｜title｜>", 128836},
      {"<dsml:", 128840}, {"</dsml:", 128841}, {"<｜end_of_query｜>", 128846},
      {"<|place_holder_mm_span_0021|>", 128847}, {"<|place_holder_mm_span_0435|>", 129261},
      {"<｜ref｜>", 129278}, {"<｜image｜>", 129279}};
  for (const auto& [s, id] : want) {
    EXPECT_EQ(tok.token_to_id(s), id) << s;
    EXPECT_EQ(tok.encode(s), Ids{id}) << s;
    EXPECT_EQ(tok.decode(Ids{id}), s);
    EXPECT_TRUE(tok.is_special(id)) << s;
  }
  EXPECT_EQ(Tokenizer::kThinkEnd, *tok.token_to_id("</think>"));
}

TEST(Tokenizer, SpecExamples) {
  DSV4_REQUIRE_TOKENIZER(tok);
  // spec §6.1: a DSML tag tokenizes as "<" + ｜DSML｜ + text.
  EXPECT_EQ(tok.encode("<｜DSML｜invoke name=\"f\">"), (Ids{30, 128825, 40148, 5406, 2329, 1281, 72, 3320}));
  // dependencies.md §3: the documented V4 example.
  const auto ids = tok.encode("Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ");
  ASSERT_GE(ids.size(), 8u);
  EXPECT_EQ(Ids(ids.begin(), ids.begin() + 8), (Ids{19923, 3, 223, 5464, 5008, 1175, 19, 940}));
  EXPECT_EQ(Ids(ids.end() - 3, ids.end()), (Ids{76589, 131, 98}));
}

TEST(Tokenizer, AddedTokensAreMatchedLeftmostLongest) {
  DSV4_REQUIRE_TOKENIZER(tok);
  // "<｜/table>｜" (129265) ends with the start of "｜DSML｜": the earlier token wins.
  EXPECT_EQ(tok.encode("<｜/table>｜DSML｜").front(), 129265);
  EXPECT_EQ(tok.encode("a<think>b</think>c"), (Ids{67, 128821, 68, 128822, 69}));
  EXPECT_EQ(tok.encode("<think><think>").size(), 2u);
  // Not a token: the text is split normally.
  const auto ids = tok.encode("<thin k>");
  for (int32_t id : ids) EXPECT_FALSE(tok.is_added(id));
}

TEST(Tokenizer, OrdinaryEncodingNeverProducesControlTokens) {
  DSV4_REQUIRE_TOKENIZER(tok);
  Ids ids;
  tok.encode_ordinary_append("<｜User｜>hi<think></think>｜DSML｜<|EOT|>", ids);
  for (int32_t id : ids) EXPECT_FALSE(tok.is_added(id)) << id;
  EXPECT_EQ(tok.decode(ids), "<｜User｜>hi<think></think>｜DSML｜<|EOT|>");
}

TEST(Tokenizer, SkipSpecialTokensDropsControlTokensOnly) {
  DSV4_REQUIRE_TOKENIZER(tok);
  const auto ids = tok.encode("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>r</think>ok<｜end▁of▁sentence｜>");
  EXPECT_EQ(tok.decode(ids, true), "hirok");
  EXPECT_EQ(tok.decode(tok.encode("<tool_result>x</tool_result>"), true), "<tool_result>x</tool_result>");
  for (const auto& t : tok.added_tokens()) EXPECT_TRUE(t.special) << t.content;  // all V4 added tokens
  EXPECT_FALSE(tok.is_special(19923));
}

TEST(Tokenizer, DecodeRejectsUnknownIds) {
  DSV4_REQUIRE_TOKENIZER(tok);
  EXPECT_THROW(tok.decode(Ids{5, -1}), Error);
  EXPECT_THROW(tok.decode(Ids{129280}), Error);
  EXPECT_EQ(tok.token_bytes(129280), "");
  EXPECT_FALSE(tok.id_to_token(-3).has_value());
  EXPECT_EQ(tok.id_to_token(223), "Ġ");
  EXPECT_EQ(tok.token_to_id("Ġ"), 223);
}

TEST(Tokenizer, InvalidUtf8RoundTripsAsBytes) {
  DSV4_REQUIRE_TOKENIZER(tok);
  for (std::string s : {std::string("\xff"), std::string("a\xff" "b"), std::string("\xe4\xbd"),
                        std::string("中\xe4\xbd文 \x80\x80 x"), std::string("\xc0\xaf\xed\xa0\x80"),
                        std::string("12\xf0\x9f\x98 3"), std::string("<think>\xfe</think>"), std::string(1, '\0')}) {
    const auto ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s);
  }
  // An invalid byte never joins a pre-token: "a" and "b" are split around it.
  const auto ids = tok.encode("ab\xff" "ab");
  EXPECT_EQ(ids.front(), tok.encode("ab").front());
}

TEST(Tokenizer, CachedAndUncachedWordsAgree) {
  DSV4_REQUIRE_TOKENIZER(tok);
  // Words of every length through the cache, the small-word scan and the heap path (> 64 bytes).
  std::mt19937 rng(7);
  const std::string alphabet = "abcdefghij etaoin shrdlu  \n0123中文é";
  for (int i = 0; i < 2000; ++i) {
    std::string s;
    const int n = 1 + int(rng() % 200);
    for (int k = 0; k < n; ++k) s += alphabet[rng() % alphabet.size()];
    const auto a = tok.encode(s), b = tok.encode(s);
    ASSERT_EQ(a, b);
    ASSERT_EQ(tok.decode(a), s);
  }
}

TEST(Tokenizer, LongWordsMergeAsShortOnes) {
  // The heap procedure (long words) and the linear scan (short words) give the same merges.
  DSV4_REQUIRE_TOKENIZER(tok);
  for (const std::string unit : {"a", "ab", " ", "  x", "的", "Hello", "=="}) {
    std::string s;
    while (s.size() <= 64) s += unit;  // just over the small-word limit
    std::string t = s + s + s;
    const auto ids = tok.encode(t);
    EXPECT_EQ(tok.decode(ids), t);
  }
  const std::string spaces(1000, ' ');
  EXPECT_EQ(tok.decode(tok.encode(spaces)), spaces);
  EXPECT_LT(tok.encode(spaces).size(), 100u);
}

TEST(Tokenizer, SharedAcrossThreads) {
  DSV4_REQUIRE_TOKENIZER(tok);
  const auto& cases = test::golden_cases().cases;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = t; i < cases.size(); i += 2)
        if (tok.encode(cases[i].text) != cases[i].ids) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(Tokenizer, FileWithV4TokensIsUsedAsIs) {
  if (!test::real_tokenizer()) GTEST_SKIP() << "no tokenizer.json";
  auto j = nlohmann::json::parse(file_text(test::tokenizer_json_path()));
  // A V4-style file: its own token at 128821 with another spelling; nothing is overlaid.
  j["added_tokens"].push_back({{"id", 128821}, {"content", "<mine>"}, {"special", true}, {"normalized", false}});
  const Tokenizer t = Tokenizer::from_json(j.dump());
  EXPECT_FALSE(t.v4_overlay_applied());
  EXPECT_EQ(t.vocab_size(), 128822);
  EXPECT_EQ(t.encode("x<mine>"), (Ids{90, 128821}));
  EXPECT_FALSE(t.token_to_id("｜DSML｜").has_value());
}

TEST(Tokenizer, OverlayReplacesADifferentV3String) {
  if (!test::real_tokenizer()) GTEST_SKIP() << "no tokenizer.json";
  auto j = nlohmann::json::parse(file_text(test::tokenizer_json_path()));
  for (auto& a : j["added_tokens"])
    if (a["id"] == 128803) a["content"] = "<｜OldUser｜>";
  const Tokenizer t = Tokenizer::from_json(j.dump());
  EXPECT_TRUE(t.v4_overlay_applied());
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 128803);
  EXPECT_FALSE(t.token_to_id("<｜OldUser｜>").has_value());
}

TEST(Tokenizer, LoadErrorsNameTheProblem) {
  EXPECT_NE(load_error("{").find("not valid JSON"), std::string::npos);
  EXPECT_NE(load_error("{}").find("unexpected tokenizer.json layout"), std::string::npos);
  const std::string base = R"({"normalizer": null, "decoder": {"type": "ByteLevel"},
     "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated"},
     "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  EXPECT_NE(load_error(base).find("lacks the token for byte"), std::string::npos);
  std::string bad_re = base;
  bad_re.replace(bad_re.find("\\\\s+"), 4, "(");
  EXPECT_NE(load_error(bad_re).find("does not compile"), std::string::npos);
  std::string wordpiece = base;
  wordpiece.replace(wordpiece.find("\"BPE\""), 5, "\"WordPiece\"");
  EXPECT_NE(load_error(wordpiece).find("model type must be BPE"), std::string::npos);
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), Error);
}

TEST(ByteLevel, AlphabetIsABijection) {
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const std::string enc = byte_level_encode(all);
  std::string dec;
  ASSERT_TRUE(byte_level_decode(enc, dec));
  EXPECT_EQ(dec, all);
  EXPECT_EQ(byte_to_unicode(' '), 0x120u);  // 'Ġ'
  EXPECT_EQ(byte_to_unicode('a'), uint32_t('a'));
  std::string out;
  EXPECT_FALSE(byte_level_decode("｜", out));
  EXPECT_FALSE(byte_level_decode(" ", out));
}
