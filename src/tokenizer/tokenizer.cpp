#include "tokenizer/tokenizer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/bpe_model.h"
#include "tokenizer/pre_tokenizer.h"

namespace dsv4 {

namespace {

enum : uint8_t { kKnown = 1, kAdded = 2, kSpecial = 4 };

std::vector<std::string> split_patterns(const nlohmann::json& pre, const std::string& origin) {
  // DeepSeek: Sequence[Split(Isolated) x3, ByteLevel(add_prefix_space=false, use_regex=false)].
  std::vector<std::string> patterns;
  auto add = [&](const nlohmann::json& p) {
    const std::string type = p.value("type", "");
    if (type == "Split") {
      if (p.value("behavior", "") != "Isolated" || p.value("invert", false))
        fail("{}: only Split with behavior Isolated is supported", origin);
      const auto& pat = p.at("pattern");
      if (!pat.contains("Regex")) fail("{}: only regex Split patterns are supported", origin);
      patterns.push_back(pat.at("Regex").get<std::string>());
    } else if (type == "ByteLevel") {
      if (p.value("add_prefix_space", false) || p.value("use_regex", true))
        fail("{}: ByteLevel pre-tokenizer must have add_prefix_space=false, use_regex=false", origin);
    } else {
      fail("{}: unsupported pre-tokenizer '{}'", origin, type);
    }
  };
  if (pre.is_null()) fail("{}: no pre_tokenizer", origin);
  if (pre.value("type", "") == "Sequence") {
    for (const auto& p : pre.at("pretokenizers")) add(p);
  } else {
    add(pre);
  }
  return patterns;
}

}  // namespace

struct Tokenizer::Impl {
  std::unique_ptr<BpeModel> bpe;
  std::unique_ptr<PreTokenizer> pre;
  std::vector<AddedToken> added;  // sorted by id
  AddedTokenMatcher raw_matcher, normalized_matcher;
  std::vector<uint8_t> flags;      // per id
  std::vector<uint32_t> offsets;   // per id + 1, into `bytes`
  std::string bytes;               // what each id decodes to
  std::unordered_map<std::string, int32_t> by_token;  // vocab (alphabet spelling) and added contents
  std::vector<std::string> vocab_spelling;            // per id, for id_to_token
  bool overlay_applied = false;
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("tokenizer file '{}' cannot be opened", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return from_json(ss.str(), path);
}

Tokenizer Tokenizer::from_json(std::string_view text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", origin, e.what());
  }
  auto impl = std::make_unique<Impl>();
  try {
    const auto& model = j.at("model");
    if (model.value("type", "BPE") != "BPE") fail("{}: model type must be BPE", origin);
    if (model.contains("dropout") && !model["dropout"].is_null()) fail("{}: BPE dropout is not supported", origin);
    if (model.value("byte_fallback", false)) fail("{}: byte_fallback is not supported", origin);
    if (model.value("ignore_merges", false)) fail("{}: ignore_merges is not supported", origin);
    const auto& norm = j.at("normalizer");
    if (!norm.is_null() && !(norm.value("type", "") == "Sequence" && norm.at("normalizers").empty()))
      fail("{}: only an empty normalizer is supported", origin);
    const auto& dec = j.at("decoder");
    if (dec.is_null() || dec.value("type", "") != "ByteLevel") fail("{}: decoder must be ByteLevel", origin);

    std::vector<std::pair<std::string, int32_t>> vocab;
    vocab.reserve(model.at("vocab").size());
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it)
      vocab.emplace_back(it.key(), it.value().get<int32_t>());
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(model.at("merges").size());
    for (const auto& m : model.at("merges")) {
      if (m.is_string()) {  // "a b" (older files)
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) fail("{}: malformed merge '{}'", origin, s);
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else {  // ["a", "b"]
        merges.emplace_back(m.at(0).get<std::string>(), m.at(1).get<std::string>());
      }
    }
    impl->pre = std::make_unique<PreTokenizer>(split_patterns(j.at("pre_tokenizer"), origin));
    impl->bpe = std::make_unique<BpeModel>(vocab, merges);

    std::map<int32_t, AddedToken> added;
    for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
      AddedToken t;
      t.id = a.at("id").get<int32_t>();
      t.content = a.at("content").get<std::string>();
      t.special = a.value("special", false);
      t.normalized = a.value("normalized", !t.special);
      if (a.value("single_word", false) || a.value("lstrip", false) || a.value("rstrip", false))
        fail("{}: added token '{}' uses single_word/lstrip/rstrip, which is not supported", origin, t.content);
      added[t.id] = t;
    }
    // V4 overlay: only onto a file that has none of V4's own tokens (ids above V3's last, 128814).
    const bool has_v4 = !added.empty() && added.rbegin()->first > 128814;
    if (!has_v4) {
      for (const auto& [id, content] : v4_added_tokens_from_128800()) {
        auto it = added.find(id);
        if (it != added.end() && it->second.content == content) continue;
        if (it != added.end())
          spdlog::warn("{}: added token {} '{}' replaced by V4's '{}'", origin, id, it->second.content, content);
        added[id] = AddedToken{id, content, true, false};  // as HF's add_special_tokens would add it
      }
      impl->overlay_applied = true;
    }
    for (auto& [id, t] : added) {
      t.special = t.special || looks_like_control_token(t.content);
      impl->added.push_back(t);
    }

    int32_t max_id = 0;
    for (const auto& [tok, id] : vocab) max_id = std::max(max_id, id);
    for (const auto& t : impl->added) max_id = std::max(max_id, t.id);
    if (max_id >= (1 << 24)) fail("{}: token id {} is implausibly large", origin, max_id);
    const size_t n = size_t(max_id) + 1;
    impl->flags.assign(n, 0);
    impl->vocab_spelling.assign(n, std::string());
    std::vector<std::string> decoded(n);
    for (const auto& [tok, id] : vocab) {
      if (id < 0) fail("{}: negative token id", origin);
      impl->flags[id] = kKnown;
      impl->vocab_spelling[id] = tok;
      if (!byte_level_decode(tok, decoded[id])) decoded[id] = tok;  // HF: outside the alphabet -> raw UTF-8
      impl->by_token.emplace(tok, id);
    }
    for (const auto& t : impl->added) {
      if (t.id < 0) fail("{}: negative token id", origin);
      impl->flags[t.id] = kKnown | kAdded | (t.special ? kSpecial : 0);
      impl->vocab_spelling[t.id] = t.content;
      decoded[t.id].clear();
      // HF's ByteLevel decoder maps an added token through the alphabet too when it can.
      if (!byte_level_decode(t.content, decoded[t.id])) decoded[t.id] = t.content;
      impl->by_token[t.content] = t.id;
    }
    impl->offsets.resize(n + 1);
    for (size_t i = 0; i < n; ++i) {
      impl->offsets[i] = uint32_t(impl->bytes.size());
      impl->bytes += decoded[i];
    }
    impl->offsets[n] = uint32_t(impl->bytes.size());

    std::vector<const AddedToken*> raw, normalized;
    for (const auto& t : impl->added) (t.normalized ? normalized : raw).push_back(&t);
    impl->raw_matcher.build(raw);
    impl->normalized_matcher.build(normalized);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: unexpected tokenizer.json layout: {}", origin, e.what());
  }
  return Tokenizer(std::move(impl));
}

void Tokenizer::encode_ordinary_append(std::string_view text, std::vector<int32_t>& out) const {
  thread_local std::vector<PreTokenizer::Piece> pieces;
  pieces.clear();
  impl_->pre->split_into(text, pieces);
  const auto* base = reinterpret_cast<const uint8_t*>(text.data());
  for (const auto& p : pieces) impl_->bpe->encode_word(base + p.begin, p.end - p.begin, out);
}

// Text between two non-normalized added tokens: HF's second pass matches the normalized ones here.
void Tokenizer::encode_between(std::string_view text, std::vector<int32_t>& out) const {
  size_t pos = 0, ms, ml;
  int32_t id;
  while (impl_->normalized_matcher.find(text, pos, ms, ml, id)) {
    if (ms > pos) encode_ordinary_append(text.substr(pos, ms - pos), out);
    out.push_back(id);
    pos = ms + ml;
  }
  if (pos < text.size()) encode_ordinary_append(text.substr(pos), out);
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) const {
  size_t pos = 0, ms, ml;
  int32_t id;
  while (impl_->raw_matcher.find(text, pos, ms, ml, id)) {
    if (ms > pos) encode_between(text.substr(pos, ms - pos), out);
    out.push_back(id);
    pos = ms + ml;
  }
  if (pos < text.size()) encode_between(text.substr(pos), out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_append(text, out);
  return out;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  if (!is_token(id)) return {};
  return std::string_view(impl_->bytes).substr(impl_->offsets[id], impl_->offsets[id + 1] - impl_->offsets[id]);
}

void Tokenizer::decode_append(int32_t id, std::string& out, bool skip_special) const {
  if (!is_token(id)) fail("token id {} is not in the vocabulary (size {})", id, vocab_size());
  if (skip_special && (impl_->flags[id] & kSpecial)) return;
  out += token_bytes(id);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) decode_append(id, out, skip_special);
  return out;
}

int32_t Tokenizer::vocab_size() const { return int32_t(impl_->flags.size()); }
bool Tokenizer::is_token(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->flags.size() && (impl_->flags[id] & kKnown);
}
bool Tokenizer::is_added(int32_t id) const { return is_token(id) && (impl_->flags[id] & kAdded); }
bool Tokenizer::is_special(int32_t id) const { return is_token(id) && (impl_->flags[id] & kSpecial); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->by_token.find(std::string(token));
  if (it == impl_->by_token.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (!is_token(id)) return std::nullopt;
  return impl_->vocab_spelling[id];
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }
bool Tokenizer::v4_overlay_applied() const { return impl_->overlay_applied; }

}  // namespace dsv4
