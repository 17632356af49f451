// The PCRE2 pre-tokenizer against Oniguruma (HF's regex engine): character classes for every code point, and
// the Split cascade on examples whose pieces differ from a single fused regex.
#include <gtest/gtest.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <fstream>
#include <random>
#include <nlohmann/json.hpp>

#include "tokenizer/bpe_model.h"
#include "tokenizer/pre_tokenizer.h"

using namespace dsv4;
using Pieces = std::vector<std::string_view>;

namespace {

const std::vector<std::string>& deepseek_patterns() { return deepseek_split_patterns(); }

std::string utf8(uint32_t cp) {
  std::string s;
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
  return s;
}

}  // namespace

TEST(PreTokenizer, CharacterClassesEqualOnigurumasForEveryCodePoint) {
  std::ifstream f(std::string(DSV4_SOURCE_DIR) + "/tests/tokenizer/data/onig_unicode_classes.json");
  ASSERT_TRUE(f) << "tests/tokenizer/data/onig_unicode_classes.json";
  const auto onig = nlohmann::json::parse(f);
  for (const char* cls : {"L", "M", "N", "P", "S", "s"}) {
    std::vector<uint8_t> want(0x110000, 0);
    for (const auto& r : onig.at(cls))
      for (uint32_t c = r[0].get<uint32_t>(); c <= r[1].get<uint32_t>(); ++c) want[c] = 1;
    const std::string onig_pattern = cls == std::string("s") ? "\\s" : std::string("\\p{") + cls + "}";
    std::string pat = "^";
    pat += PreTokenizer::translate_pattern(onig_pattern);
    pat += "$";
    int err;
    PCRE2_SIZE off;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.data()), pat.size(), PCRE2_UTF | PCRE2_UCP,
                                     &err, &off, nullptr);
    ASSERT_NE(code, nullptr) << pat;
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    int wrong = 0;
    for (uint32_t c = 0; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      const std::string s = utf8(c);
      const bool got = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, 0, md, nullptr) > 0;
      if (got != bool(want[c]) && ++wrong <= 5)
        ADD_FAILURE() << "\\p{" << cls << "} U+" << std::hex << c << ": onig " << int(want[c]) << ", ours " << got;
    }
    EXPECT_EQ(wrong, 0) << cls;
    pcre2_match_data_free(md);
    pcre2_code_free(code);
  }
}

TEST(PreTokenizer, TranslatesOnlyOutsideEscapes) {
  EXPECT_EQ(PreTokenizer::translate_pattern("a+"), "a+");
  EXPECT_EQ(PreTokenizer::translate_pattern(R"(\\s)"), R"(\\s)");  // an escaped backslash, then 's'
  EXPECT_NE(PreTokenizer::translate_pattern(R"(\s)").find(R"(\x{3000})"), std::string::npos);
  EXPECT_EQ(PreTokenizer::translate_pattern(R"(\S)").substr(0, 2), "[^");
  EXPECT_NE(PreTokenizer::translate_pattern(R"([^\p{L}])").find(R"(\x{31350})"), std::string::npos);
  EXPECT_EQ(PreTokenizer::translate_pattern(R"([\]\s])").substr(0, 4), R"([\]\)");
}

TEST(PreTokenizer, CascadeKeepsLookaheadInsidePieces) {
  const PreTokenizer pre(deepseek_patterns());
  // "  1": the digit is split off first, so both spaces form one piece (a fused regex would give " ", " ").
  EXPECT_EQ(pre.split("  1"), (Pieces{"  ", "1"}));
  EXPECT_EQ(pre.split("a  b"), (Pieces{"a", " ", " b"}));
  EXPECT_EQ(pre.split("12345"), (Pieces{"123", "45"}));
  EXPECT_EQ(pre.split("中文abc"), (Pieces{"中文", "abc"}));
  EXPECT_EQ(pre.split("カ・カ"), (Pieces{"カ", "・", "カ"}));
  EXPECT_EQ(pre.split("x\r\n\ny"), (Pieces{"x", "\r\n\n", "y"}));
  EXPECT_EQ(pre.split("don't!?"), (Pieces{"don", "'t", "!?"}));
  EXPECT_EQ(pre.split(""), Pieces{});
}

TEST(PreTokenizer, PiecesTileAnyBytes) {
  const PreTokenizer pre(deepseek_patterns());
  std::string s;
  for (int b = 0; b < 256; ++b) s += char(b);
  s += "中\xe4\xbd文 \x80 12\xf0\x9f\x98";
  std::vector<PreTokenizer::Piece> pieces;
  pre.split_into(s, pieces);
  size_t at = 0;
  for (const auto& p : pieces) {
    EXPECT_EQ(p.begin, at);
    EXPECT_LT(p.begin, p.end);
    at = p.end;
  }
  EXPECT_EQ(at, s.size());
}

TEST(PreTokenizer, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ascii text, long enough for the 8-byte path"));
  EXPECT_TRUE(is_valid_utf8("中文 😀 é"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("abc\xe4\xbd"));       // truncated
  EXPECT_FALSE(is_valid_utf8("\x80"));
}

TEST(PreTokenizer, FastPathsEqualThePlainCascade) {
  const PreTokenizer fast(deepseek_patterns()), slow(deepseek_patterns(), false);
  // Biased towards the characters the alternatives distinguish; non-ASCII and invalid UTF-8 send a line to
  // the fused regex path, which exercises the line cutting too.
  const std::string alphabet[] = {"a", "Z", "xy", "1", "12345", " ", "  ", "\t", "\n", "\r", "\r\n", "\v", "\f",
                                  "'", "!", ".", "-", "_", "(", "\x01", "\x7f", "\x1f", "\n\n", " \n", "'s",
                                  // non-ASCII: used in half of the cases
                                  "é", "中", "中文", "カ", "・", "１２", "٣", "Ⅻ", "。", "\u0301", "\u3000", "\u00a0",
                                  "\xff", "\xc3", "\xe4\xbd", "😀", "🪿" /* U+1FABF: Unicode 15 */,
                                  "\U0001E5D0" /* Unicode 16 letter */};
  constexpr size_t kAsciiOnly = 25;
  std::mt19937 rng(99);
  for (int i = 0; i < 30000; ++i) {
    std::string s;
    const int n = int(rng() % 30);
    for (int k = 0; k < n; ++k) {
      const size_t limit = i % 2 ? std::size(alphabet) : kAsciiOnly;  // half the cases pure ASCII
      s += alphabet[rng() % limit];
    }
    ASSERT_EQ(fast.split(s), slow.split(s))
        << nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}
