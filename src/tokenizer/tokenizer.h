// DeepSeek-V4's tokenizer: byte-level BPE loaded from a HF tokenizer.json (spec §6.1), producing the same ids
// as HF `tokenizers` with add_special_tokens=false. Immutable after loading and safe to share between threads
// (word caches and scratch buffers are per thread).
//
// Pipeline: added tokens are matched literally on the raw text first (non-normalized ones, then normalized
// ones on what is left, as HF does); the rest goes through the Split pre-tokenizer cascade and BPE. Text is
// bytes: invalid UTF-8 is accepted, and every byte maps through the byte-level alphabet, so
// decode(encode(x)) == x for any byte string x.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/added_tokens.h"

namespace dsv4 {

class Tokenizer {
 public:
  // Loads tokenizer.json. If the file has no V4 added tokens (the V3 base file used for tests and the demo),
  // V4's table from id 128800 up is applied over it; a file that already has them is used as is.
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_json(std::string_view json_text, const std::string& origin = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text) const;
  void encode_append(std::string_view text, std::vector<int32_t>& out) const;
  // Without added-token matching: text that must not be able to produce control tokens.
  void encode_ordinary_append(std::string_view text, std::vector<int32_t>& out) const;

  // Raw bytes (not necessarily valid UTF-8 on their own). Throws dsv4::Error on an id that is not a token.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  void decode_append(int32_t id, std::string& out, bool skip_special_tokens = false) const;
  // The bytes one id decodes to (empty for an id that is not a token).
  std::string_view token_bytes(int32_t id) const;

  int32_t vocab_size() const;  // highest id + 1 (129280 for V4)
  bool is_token(int32_t id) const;
  bool is_added(int32_t id) const;
  bool is_special(int32_t id) const;  // dropped by skip_special_tokens
  // An added token's content, or a BPE token in its byte-level spelling ("Ġthe").
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;  // sorted by id
  bool v4_overlay_applied() const;                      // true when the V4 table was added at load time

  static constexpr int32_t kBos = 0;        // <｜begin▁of▁sentence｜>
  static constexpr int32_t kEos = 1;        // <｜end▁of▁sentence｜>
  static constexpr int32_t kThinkEnd = 128822;  // </think>

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  void encode_between(std::string_view text, std::vector<int32_t>& out) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv4
