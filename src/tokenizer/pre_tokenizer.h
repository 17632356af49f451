// The pre-tokenizer of HF `tokenizers` for a Sequence of regex Splits (behaviour "Isolated"), as DeepSeek's
// tokenizer.json declares it, run with PCRE2 (JIT, UTF + UCP). A piece produced by split k is split again by
// split k+1 only inside its own bounds, which changes lookahead results (`\s+(?!\S)`), so the cascade is kept
// rather than fused into one regex.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4 {

class PreTokenizer {
 public:
  // `patterns` are the Split regexes in tokenizer.json's (Oniguruma) syntax, applied in order. For DeepSeek's
  // own patterns, ASCII text takes a hand-written path and other text a fused first pass, with the same
  // results (`fast_paths` false: the plain cascade, for tests).
  explicit PreTokenizer(const std::vector<std::string>& patterns, bool fast_paths = true);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  struct Piece {
    size_t begin, end;  // byte offsets into the text
  };
  // Appends the pieces of `text`, which tile it exactly, to `out`. Invalid UTF-8 is allowed: an invalid byte
  // never matches any pattern, so it ends up in a gap piece (HF cannot be asked; this is our definition).
  void split_into(std::string_view text, std::vector<Piece>& out) const;
  std::vector<std::string_view> split(std::string_view text) const;  // convenience for tests and tools

  // The pattern translated from Oniguruma to PCRE2 syntax (exposed for tests).
  static std::string translate_pattern(std::string_view onig);

 private:
  struct Regex;
  static std::string translate(std::string_view onig, bool unicode_additions);
  void split_regex(std::string_view text, size_t begin, size_t end, std::vector<Piece>& out) const;
  void split_level(std::string_view text, size_t begin, size_t end, size_t level, int variant,
                   std::vector<Piece>& out) const;
  std::vector<std::unique_ptr<Regex>> regexes_;
  std::unique_ptr<Regex> fused_;  // DeepSeek's first two Splits as one regex
  bool fast_paths_ = false;
};

// DeepSeek's three Split patterns, as its tokenizer.json spells them.
const std::vector<std::string>& deepseek_split_patterns();

// True if `s` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace dsv4
