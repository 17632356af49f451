// Streaming detokenization: token ids in, text deltas out. A delta is always valid UTF-8: bytes of a character
// split across tokens are held until the character completes, and bytes that can never form a character are
// replaced by U+FFFD (one per maximal ill-formed subpart, as HF's from_utf8_lossy does). Text is emitted once:
// the concatenation of all deltas plus finish() equals the lossy decode of all ids.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv4 {

class Tokenizer;

class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special_tokens = false)
      : tok_(&tok), skip_special_(skip_special_tokens) {}

  // Appends the newly complete text to `out`; returns how many bytes were appended (0 while a character is
  // still incomplete). Throws dsv4::Error for an id that is not a token.
  size_t push(int32_t id, std::string& out);
  std::string push(int32_t id) {
    std::string s;
    push(id, s);
    return s;
  }
  // End of stream: an incomplete character becomes U+FFFD.
  size_t finish(std::string& out);
  std::string finish() {
    std::string s;
    finish(s);
    return s;
  }
  size_t pending_bytes() const { return pending_.size(); }
  void reset() { pending_.clear(); }

 private:
  const Tokenizer* tok_;
  bool skip_special_;
  std::string pending_;  // at most 3 bytes: the start of a character
};

// Appends the valid UTF-8 prefix of `in` to `out`, replacing ill-formed parts with U+FFFD. With `final` false,
// a trailing incomplete character is not consumed; returns the number of input bytes consumed.
size_t append_utf8_lossy(std::string_view in, std::string& out, bool final);
inline std::string utf8_lossy(std::string_view in) {
  std::string s;
  append_utf8_lossy(in, s, true);
  return s;
}

}  // namespace dsv4
