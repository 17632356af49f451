#include "tokenizer/added_tokens.h"

#include <algorithm>
#include <fmt/format.h>
#include <map>

namespace dsv4 {

const std::vector<std::pair<int32_t, std::string>>& v4_added_tokens_from_128800() {
  // Spec §6.1 table; names of the repo/file markers (128815-128820) and of the vision/table/grounding tokens
  // (129262-129279) as published for V4-Flash. "<｜/table>｜" (sic) is the real token's spelling.
  static const auto table = [] {
    std::vector<std::pair<int32_t, std::string>> t;
    const char* named_low[] = {
        "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜User｜>", "<｜Assistant｜>", "<|EOT|>",
        "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
        "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
        "<｜tool▁sep｜>",  // 128814: the last id of the V3 file
        "<｜begin▁of▁repo▁name｜>", "<｜end▁of▁repo▁name｜>", "<｜begin▁of▁file▁name｜>", "<｜end▁of▁file▁name｜>",
        "<｜begin▁of▁file｜>", "<｜end▁of▁file｜>", "<think>", "</think>", "<｜place▁holder▁for▁copy｜>",
        "<｜place▁holder▁for▁pointer▁replace｜>", "｜DSML｜", "<｜begin▁sys｜>", "<｜end▁sys｜>",
        "<｜latest_reminder｜>", "<｜action｜>", "<｜query｜>", "<｜authority｜>", "<｜domain｜>", "<｜task｜>",
        "<｜political｜>", "<｜entity｜>", "<｜title｜>", "<｜safety｜>", "<｜answer｜>", "<｜search｜>", "<dsml:",
        "</dsml:", "<｜search▁begin｜>", "<｜search▁end｜>", "<｜extracted_url｜>", "<｜read_url｜>",
        "<｜end_of_query｜>"};  // 128846
    int32_t id = 128800;
    for (const char* s : named_low) t.emplace_back(id++, s);
    for (int n = 21; n <= 435; ++n) t.emplace_back(id++, fmt::format("<|place_holder_mm_span_{:04d}|>", n));
    const char* named_high[] = {"<｜rl_image_pad｜>", "<｜rl_image_start｜>", "<｜image2｜>", "<｜/table>｜",
                                "<｜table｜>", "<｜/td｜>", "<｜td｜>", "<｜/tr｜>", "<｜tr｜>", "<｜/polygon｜>",
                                "<｜polygon｜>", "<｜/point｜>", "<｜point｜>", "<｜/box｜>", "<｜box｜>",
                                "<｜/ref｜>", "<｜ref｜>", "<｜image｜>"};  // 129262..129279
    for (const char* s : named_high) t.emplace_back(id++, s);
    return t;
  }();
  return table;
}

bool looks_like_control_token(std::string_view c) {
  auto starts = [&](std::string_view p) { return c.substr(0, p.size()) == p; };
  return starts("<｜") || (starts("<|") && c.size() >= 4 && c.substr(c.size() - 2) == "|>") || c == "<think>" ||
         c == "</think>" || c == "｜DSML｜" || c == "<dsml:" || c == "</dsml:";
}

void AddedTokenMatcher::build(const std::vector<const AddedToken*>& tokens) {
  // Build a pointer trie first, then flatten it into sorted edge arrays for cache-friendly matching.
  struct TmpNode {
    std::map<uint8_t, size_t> kids;
    int32_t id = -1;
  };
  std::vector<TmpNode> tmp(1);
  std::fill(std::begin(first_byte_), std::end(first_byte_), false);
  for (const AddedToken* t : tokens) {
    if (t->content.empty()) continue;
    size_t cur = 0;
    for (unsigned char b : t->content) {
      auto it = tmp[cur].kids.find(b);
      if (it == tmp[cur].kids.end()) {
        tmp.emplace_back();
        it = tmp[cur].kids.emplace(b, tmp.size() - 1).first;
      }
      cur = it->second;
    }
    tmp[cur].id = t->id;
    first_byte_[static_cast<unsigned char>(t->content[0])] = true;
  }
  nodes_.assign(tmp.size(), Node{});
  edges_.clear();
  for (size_t i = 0; i < tmp.size(); ++i) {
    nodes_[i].id = tmp[i].id;
    nodes_[i].first_edge = uint32_t(edges_.size());
    nodes_[i].num_edges = uint32_t(tmp[i].kids.size());
    for (const auto& [b, child] : tmp[i].kids) edges_.push_back(Edge{b, uint32_t(child)});
  }
}

bool AddedTokenMatcher::match_at(std::string_view text, size_t at, size_t& len, int32_t& id) const {
  uint32_t cur = 0;
  bool found = false;
  for (size_t i = at; i < text.size(); ++i) {
    const Node& n = nodes_[cur];
    const uint8_t b = static_cast<uint8_t>(text[i]);
    const Edge* e = edges_.data() + n.first_edge;
    const Edge* end = e + n.num_edges;
    e = std::lower_bound(e, end, b, [](const Edge& x, uint8_t v) { return x.byte < v; });
    if (e == end || e->byte != b) break;
    cur = e->child;
    if (nodes_[cur].id >= 0) {
      found = true;
      len = i + 1 - at;
      id = nodes_[cur].id;
    }
  }
  return found;
}

bool AddedTokenMatcher::find(std::string_view text, size_t from, size_t& pos, size_t& len, int32_t& id) const {
  if (empty()) return false;
  for (size_t i = from; i < text.size(); ++i) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) continue;
    if (match_at(text, i, len, id)) {
      pos = i;
      return true;
    }
  }
  return false;
}

}  // namespace dsv4
