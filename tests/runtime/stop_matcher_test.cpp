#include "runtime/stop_matcher.h"

#include <gtest/gtest.h>

#include <random>

using namespace dsv4;

namespace {

// Feeds pieces; returns what was emitted after each, plus the flush (when not stopped) as a last entry.
std::vector<std::string> run(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  for (auto& p : pieces) out.push_back(m.feed(p));
  out.push_back(m.flush());
  return out;
}

using Strs = std::vector<std::string>;

}  // namespace

TEST(StopMatcher, NoStopsPassesThrough) {
  StopMatcher m({});
  EXPECT_FALSE(m.active());
  EXPECT_EQ(run(m, {"ab", "c"}), (Strs{"ab", "c", ""}));
  StopMatcher e({"", ""});  // empty stop strings are ignored
  EXPECT_FALSE(e.active());
  EXPECT_EQ(e.feed("x"), "x");
}

TEST(StopMatcher, StopInsideOnePiece) {
  StopMatcher m({"wor"});
  EXPECT_EQ(m.feed("Hello world"), "Hello ");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.stop_index(), 0);
  EXPECT_EQ(m.stop_string(), "wor");
  EXPECT_EQ(m.feed("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopSplitAcrossTwoPieces) {
  StopMatcher m({"o wor"});
  EXPECT_EQ(m.feed("Hel"), "Hel");
  EXPECT_EQ(m.feed("lo wo"), "l");  // "o wo" could begin the stop: held
  EXPECT_EQ(m.held(), 4u);
  EXPECT_EQ(m.feed("rld"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.stop_string(), "o wor");
}

TEST(StopMatcher, StopSplitAcrossThreePieces) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.feed("xS"), "x");
  EXPECT_EQ(m.feed("T"), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.feed("OPy"), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, HeldPrefixReleasedWhenNotAStop) {
  StopMatcher m({"abc"});
  EXPECT_EQ(m.feed("xab"), "x");
  EXPECT_EQ(m.held(), 2u);
  EXPECT_EQ(m.feed("d"), "abd");
  EXPECT_EQ(m.held(), 0u);
  EXPECT_EQ(m.feed("a"), "");
  EXPECT_EQ(m.feed("a"), "a");  // "aa": only the last "a" can still start "abc"
  EXPECT_EQ(m.flush(), "a");    // end of generation releases the rest
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, SelfOverlappingStop) {
  StopMatcher m({"aab"});
  EXPECT_EQ(run(m, {"a", "a", "a", "b", "z"}), (Strs{"", "", "a", "", "", ""}));
  EXPECT_TRUE(m.stopped());
  StopMatcher n({"ababc"});
  EXPECT_EQ(n.feed("ababab"), "ab");  // "abab" could still start the stop
  EXPECT_EQ(n.feed("x"), "ababx");
}

TEST(StopMatcher, MultipleStopStrings) {
  StopMatcher m({"END", "\n\n"});
  EXPECT_EQ(m.feed("line one\n"), "line one");
  EXPECT_EQ(m.feed("E"), "\n");  // "\n" no longer a candidate, "E" is
  EXPECT_EQ(m.feed("ND"), "");
  EXPECT_EQ(m.stop_index(), 0);
  StopMatcher n({"END", "\n\n"});
  EXPECT_EQ(n.feed("a\n"), "a");
  EXPECT_EQ(n.feed("\nEND"), "");
  EXPECT_EQ(n.stop_index(), 1);
  EXPECT_EQ(n.stop_string(), "\n\n");
}

TEST(StopMatcher, FirstToCompleteWinsLongestOnSameByte) {
  StopMatcher a({"abcd", "bc"});  // "bc" completes first
  EXPECT_EQ(a.feed("xabcd"), "xa");
  EXPECT_EQ(a.stop_string(), "bc");
  StopMatcher b({"bc", "abc"});  // both complete on 'c': the longer one starts earlier
  EXPECT_EQ(b.feed("xabc"), "x");
  EXPECT_EQ(b.stop_string(), "abc");
  EXPECT_EQ(b.stop_index(), 1);
}

TEST(StopMatcher, StopAtVeryStart) {
  StopMatcher m({"###"});
  EXPECT_EQ(m.feed("###more"), "");
  EXPECT_TRUE(m.stopped());
  StopMatcher n({"###"});
  EXPECT_EQ(n.feed("#"), "");
  EXPECT_EQ(n.feed("##"), "");
  EXPECT_TRUE(n.stopped());
}

TEST(StopMatcher, IncludeStopString) {
  StopMatcher m({"o wor"}, /*include_stop_str=*/true);
  EXPECT_EQ(m.feed("Hello wo"), "Hell");
  EXPECT_EQ(m.feed("rld"), "o wor");
}

TEST(StopMatcher, Utf8StopString) {
  StopMatcher m({"世界"});
  EXPECT_EQ(m.feed("你好世"), "你好");
  EXPECT_EQ(m.feed("界!"), "");
  EXPECT_TRUE(m.stopped());
  StopMatcher n({"世界"});
  EXPECT_EQ(n.feed("你好世"), "你好");
  EXPECT_EQ(n.feed("纪"), "世纪");
}

// Any split of any text gives the same emitted text, and at every point the emitted text is exactly the
// text so far minus its longest tail that could start a stop string (nothing is held needlessly).
TEST(StopMatcher, SplitIndependentAgainstBruteForce) {
  std::mt19937 g(1234);
  const std::string alphabet = "abc";
  auto rand_str = [&](size_t lo, size_t hi) {
    std::string s(lo + g() % (hi - lo + 1), 'a');
    for (char& c : s) c = alphabet[g() % alphabet.size()];
    return s;
  };
  for (int iter = 0; iter < 3000; ++iter) {
    Strs stops;
    for (size_t k = 0, n = 1 + g() % 3; k < n; ++k) stops.push_back(rand_str(1, 4));
    std::string text = rand_str(0, 24);
    // Reference: the first stop to end in the text (longest on the same end), cut at its start.
    size_t cut = std::string::npos, best_end = std::string::npos, best_len = 0;
    for (auto& s : stops) {
      size_t pos = text.find(s);
      if (pos == std::string::npos) continue;
      size_t end = pos + s.size();
      if (end < best_end || (end == best_end && s.size() > best_len))
        best_end = end, best_len = s.size(), cut = pos;
    }
    std::string want = cut == std::string::npos ? text : text.substr(0, cut);

    StopMatcher m(stops);
    std::string got, so_far;
    size_t i = 0;
    while (i < text.size() && !m.stopped()) {
      size_t len = 1 + g() % 5;
      std::string piece = text.substr(i, len);
      i += piece.size();
      so_far += piece;
      got += m.feed(piece);
      if (!m.stopped()) {
        size_t hold = 0;
        for (auto& s : stops)
          for (size_t k = std::min(s.size() - 1, so_far.size()); k > hold; --k)
            if (so_far.compare(so_far.size() - k, k, s, 0, k) == 0) {
              hold = k;
              break;
            }
        ASSERT_EQ(got, so_far.substr(0, so_far.size() - hold)) << text;
      }
    }
    got += m.flush();
    ASSERT_EQ(got, want) << "text '" << text << "' stop[0] '" << stops[0] << "'";
    ASSERT_EQ(m.stopped(), cut != std::string::npos);
  }
}

// ---- token-level stop decision

TEST(TokenStop, EosStopTokensAndLength) {
  SamplingParams p;
  p.max_tokens = 3;
  p.stop_token_ids = {7, 8};
  std::vector<int32_t> eos{1};
  EXPECT_EQ(check_token_stop(p, 5, 1, eos), TokenStop::None);
  EXPECT_EQ(check_token_stop(p, 1, 1, eos), TokenStop::Eos);
  EXPECT_EQ(check_token_stop(p, 8, 2, eos), TokenStop::StopToken);
  EXPECT_EQ(check_token_stop(p, 5, 3, eos), TokenStop::Length);
  EXPECT_EQ(check_token_stop(p, 7, 3, eos), TokenStop::StopToken);  // the model ended there
  p.ignore_eos = true;
  EXPECT_EQ(check_token_stop(p, 1, 1, eos), TokenStop::None);
  EXPECT_STREQ(finish_reason_of(TokenStop::Eos), "stop");
  EXPECT_STREQ(finish_reason_of(TokenStop::StopToken), "stop");
  EXPECT_STREQ(finish_reason_of(TokenStop::Length), "length");
  EXPECT_EQ(finish_reason_of(TokenStop::None), nullptr);
}
