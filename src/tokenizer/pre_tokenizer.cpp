#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace dsv4 {

namespace {

// Oniguruma's `\s` is the Unicode White_Space property; PCRE2's UCP `\s` also matches U+180E, so the
// class is spelled out.
constexpr const char* kWhiteSpace =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// HF's Oniguruma has Unicode 16.0 property tables, PCRE2 10.42 has Unicode 14.0: code points assigned since
// then are added to each general category by hand (only additions: no code point changed category).
// tests/tokenizer/pre_tokenizer_test.cpp checks every code point against Oniguruma's tables
// (tests/tokenizer/data/onig_unicode_classes.json, dumped by tests/tokenizer/gen/dump_onig_classes.js).
const char* category_additions(char cat) {
  switch (cat) {
    case 'L':
      return R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D4A}-\x{10D65})"
             R"(\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240}\x{11380}-\x{11389}\x{1138B}\x{1138E})"
             R"(\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10})"
             R"(\x{11F12}-\x{11F33}\x{1342F}\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D})"
             R"(\x{16D40}-\x{16D6C}\x{18CFF}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D})"
             R"(\x{1E4D0}-\x{1E4EB}\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";
    case 'M':
      return R"(\x{897}\x{CF3}\x{ECE}\x{10D69}-\x{10D6D}\x{10EFC}-\x{10EFF}\x{11241}\x{113B8}-\x{113C0}\x{113C2})"
             R"(\x{113C5}\x{113C7}-\x{113CA}\x{113CC}-\x{113D0}\x{113D2}\x{113E1}-\x{113E2}\x{11F00}-\x{11F01})"
             R"(\x{11F03}\x{11F34}-\x{11F3A}\x{11F3E}-\x{11F42}\x{11F5A}\x{13440}\x{13447}-\x{13455})"
             R"(\x{1611E}-\x{1612F}\x{1E08F}\x{1E4EC}-\x{1E4EF}\x{1E5EE}-\x{1E5EF})";
    case 'N':
      return R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59}\x{16130}-\x{16139})"
             R"(\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3}\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";
    case 'P':
      return R"(\x{1B4E}-\x{1B4F}\x{1B7F}\x{10D6E}\x{113D4}-\x{113D5}\x{113D7}-\x{113D8}\x{11B00}-\x{11B09})"
             R"(\x{11BE1}\x{11F43}-\x{11F4F}\x{16D6D}-\x{16D6F}\x{1E5FF})";
    case 'S':
      return R"(\x{2427}-\x{2429}\x{2FFC}-\x{2FFF}\x{31E4}-\x{31E5}\x{31EF}\x{10D8E}-\x{10D8F}\x{1CC00}-\x{1CCEF})"
             R"(\x{1CD00}-\x{1CEB3}\x{1F6DC}\x{1F774}-\x{1F776}\x{1F77B}-\x{1F77F}\x{1F7D9}\x{1F8B2}-\x{1F8BB})"
             R"(\x{1F8C0}-\x{1F8C1}\x{1FA75}-\x{1FA77}\x{1FA87}-\x{1FA89}\x{1FA8F}\x{1FAAD}-\x{1FAAF})"
             R"(\x{1FABB}-\x{1FABF}\x{1FAC6}\x{1FACE}-\x{1FACF}\x{1FADA}-\x{1FADC}\x{1FADF}\x{1FAE8}-\x{1FAE9})"
             R"(\x{1FAF7}-\x{1FAF8}\x{1FBCB}-\x{1FBEF})";
    default:
      return nullptr;
  }
}

struct MatchState {  // per thread: PCRE2 match data and a JIT stack big enough for long whitespace runs
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(md);
  }
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

size_t utf8_advance(std::string_view s, size_t i) {  // one code point (or one byte if invalid)
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  return std::min(s.size(), i + n);
}

// Code points that are in some general category for Oniguruma (Unicode 16) but unassigned for PCRE2, as sorted
// ranges: text without any of them can use the patterns without the additions, which match much faster.
struct AdditionRanges {
  std::vector<std::pair<uint32_t, uint32_t>> r;
  AdditionRanges() {
    for (char cat : {'L', 'M', 'N', 'P', 'S'}) {
      const std::string_view s = category_additions(cat);
      for (size_t i = 0; (i = s.find("\\x{", i)) != std::string_view::npos;) {
        const uint32_t lo = uint32_t(std::stoul(std::string(s.substr(i + 3)), nullptr, 16));
        i = s.find('}', i) + 1;
        uint32_t hi = lo;
        if (s.substr(i, 4) == "-\\x{") {
          hi = uint32_t(std::stoul(std::string(s.substr(i + 4)), nullptr, 16));
          i = s.find('}', i) + 1;
        }
        r.emplace_back(lo, hi);
      }
    }
    std::sort(r.begin(), r.end());
  }
  bool contains(uint32_t cp) const {
    auto it = std::upper_bound(r.begin(), r.end(), std::make_pair(cp, ~0u));
    return it != r.begin() && std::prev(it)->second >= cp;
  }
};

// Is the character at `i` in the second Split's class [一-龥぀-ゟ゠-ヿ] (U+4E00-9FA5, U+3040-30FF)?
bool is_cjk_split_char(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (i + 3 > s.size() || (p[0] & 0xF0) != 0xE0) return false;
  const uint32_t cp = ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x30FF);
}

bool has_unicode_additions(std::string_view text) {
  static const AdditionRanges ranges;
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0xE0 || c > 0xF4) {  // ASCII, 2-byte sequences (every addition is above U+07FF), stray bytes
      i += c >= 0xC0 && c < 0xE0 && i + 1 < n && (p[i + 1] & 0xC0) == 0x80 ? 2 : 1;
      continue;
    }
    const size_t len = c < 0xF0 ? 3 : 4;
    uint32_t cp = c & (len == 3 ? 0x0F : 0x07);
    size_t k = 1;
    for (; k < len && i + k < n && (p[i + k] & 0xC0) == 0x80; ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
    if (k < len) {  // ill-formed: resynchronize on the next byte
      ++i;
      continue;
    }
    if (ranges.contains(cp)) return true;
    i += len;
  }
  return false;
}

}  // namespace

// One pattern compiled four times: with or without the Unicode 16 additions, and for text already checked to
// be valid UTF-8 or (PCRE2_MATCH_INVALID_UTF) not.
struct PreTokenizer::Regex {
  pcre2_code* code[4] = {};  // index: (additions ? 2 : 0) | (tolerant ? 1 : 0)
  bool jit[4] = {};

  Regex(const std::string& plain, const std::string& with_additions) {
    for (int v = 0; v < 4; ++v) {
      const std::string& pattern = v & 2 ? with_additions : plain;
      int err = 0;
      PCRE2_SIZE off = 0;
      uint32_t opts = PCRE2_UTF | PCRE2_UCP | (v & 1 ? PCRE2_MATCH_INVALID_UTF : 0);
      code[v] = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), opts, &err, &off,
                              nullptr);
      if (!code[v]) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        fail("pre-tokenizer regex '{}' does not compile at offset {}: {}", pattern, off,
             reinterpret_cast<const char*>(msg));
      }
      jit[v] = pcre2_jit_compile(code[v], PCRE2_JIT_COMPLETE) == 0;
    }
  }
  ~Regex() {
    for (auto* c : code) pcre2_code_free(c);
  }

  // Finds the first match in subject[start, len); returns false if none.
  bool find(const char* subject, size_t len, size_t start, int v, size_t& ms, size_t& me) const {
    MatchState& st = match_state();
    auto sp = reinterpret_cast<PCRE2_SPTR>(subject);
    int rc;
    if (jit[v]) {
      rc = pcre2_jit_match(code[v], sp, len, start, 0, st.md, st.mctx);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // pathological input: fall back to the interpreter
        rc = pcre2_match(code[v], sp, len, start, PCRE2_NO_JIT | PCRE2_NO_UTF_CHECK, st.md, st.mctx);
    } else {
      rc = pcre2_match(code[v], sp, len, start, PCRE2_NO_UTF_CHECK, st.md, st.mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("pre-tokenizer regex match failed: {}", reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    ms = ov[0];
    me = ov[1];
    return true;
  }
};

std::string PreTokenizer::translate_pattern(std::string_view p) { return translate(p, true); }

std::string PreTokenizer::translate(std::string_view p, bool additions) {
  std::string out;
  out.reserve(p.size() + 4096);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[++i];
      if (n == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      } else if (n == 'S') {
        if (in_class) fail("pre-tokenizer regex: \\S inside a character class is not supported");
        out += "[^" + std::string(kWhiteSpace) + "]";
      } else if ((n == 'p' || n == 'P') && i + 3 < p.size() && p[i + 1] == '{' && p[i + 3] == '}' &&
                 category_additions(p[i + 2])) {
        if (n == 'P') fail("pre-tokenizer regex: \\P{{...}} is not supported");
        const std::string cls = std::string("\\p{") + p[i + 2] + "}" + (additions ? category_additions(p[i + 2]) : "");
        out += in_class ? cls : "[" + cls + "]";
        i += 3;
      } else {
        out += c;
        out += n;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

// DeepSeek's three Splits as tokenizer.json spells them; the hand-written ASCII path below implements exactly
// these (any other patterns always go through PCRE2).
const std::vector<std::string>& deepseek_split_patterns() {
  static const std::vector<std::string> p = {
      R"(\p{N}{1,3})", "[一-龥぀-ゟ゠-ヿ]+",
      R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  return p;
}

PreTokenizer::PreTokenizer(const std::vector<std::string>& patterns, bool fast_paths)
    : fast_paths_(fast_paths && patterns == deepseek_split_patterns()) {
  for (const auto& p : patterns) regexes_.push_back(std::make_unique<Regex>(translate(p, false), translate(p, true)));
  if (fast_paths_) {
    // The first two Splits in one scan: their classes are disjoint (no CJK ideograph or kana is \p{N}), so
    // the leftmost match of either is what the cascade finds.
    const std::string fused = "\\p{N}{1,3}|[一-龥぀-ゟ゠-ヿ]+";
    fused_ = std::make_unique<Regex>(translate(fused, false), translate(fused, true));
  }
}
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

void PreTokenizer::split_level(std::string_view text, size_t begin, size_t end, size_t level, int variant,
                               std::vector<Piece>& out) const {
  if (level == regexes_.size()) {
    out.push_back({begin, end});
    return;
  }
  // The regex sees only [begin, end): HF splits each piece on its own, so lookaheads stop at its end.
  const char* sub = text.data() + begin;
  const size_t len = end - begin;
  const Regex& re = *regexes_[level];
  size_t prev = 0, pos = 0, ms = 0, me = 0;
  while (pos < len && re.find(sub, len, pos, variant, ms, me)) {
    if (ms > prev) split_level(text, begin + prev, begin + ms, level + 1, variant, out);
    if (me > ms) {
      split_level(text, begin + ms, begin + me, level + 1, variant, out);
      prev = pos = me;
    } else {  // an empty match (none of DeepSeek's patterns has one): step over a character
      pos = utf8_advance(std::string_view(sub, len), ms);
    }
  }
  if (prev < len) split_level(text, begin + prev, end, level + 1, variant, out);
}

namespace {

// ASCII character classes as the DeepSeek regexes see them.
enum : uint8_t { kOther = 0, kLetter = 1, kPunct = 2, kBlank = 3 /* \t \v \f space */, kNewline = 4, kDigit = 5 };

struct AsciiClasses {
  uint8_t c[128];
  AsciiClasses() {
    for (int i = 0; i < 128; ++i) {
      if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z')) c[i] = kLetter;
      else if (i >= '0' && i <= '9') c[i] = kDigit;
      else if (i == '\r' || i == '\n') c[i] = kNewline;
      else if (i == ' ' || i == '\t' || i == '\v' || i == '\f') c[i] = kBlank;
      else if (i > ' ' && i < 127) c[i] = kPunct;  // every printable ASCII symbol is \p{P} or \p{S}
      else c[i] = kOther;                          // control characters and DEL
    }
  }
};
const AsciiClasses kAscii;

inline uint8_t cls(const char* s, size_t i) { return kAscii.c[static_cast<unsigned char>(s[i])]; }
inline size_t run_end(const char* s, size_t i, size_t end, uint8_t k) {
  while (i < end && cls(s, i) == k) ++i;
  return i;
}

// The third Split (the big regex) on an ASCII gap without digits, alternative by alternative:
//   a [punct][A-Za-z]+   b [^\r\n L P S]?[L M]+   c ' '?[P S]+[\r\n]*   d \s*[\r\n]+   e \s+(?!\S)   f \s+
// Characters no alternative matches at their position collect into gap pieces, as in HF's Isolated split.
void ascii_split3(const char* s, size_t begin, size_t end, std::vector<PreTokenizer::Piece>& out) {
  size_t gap = begin, pos = begin;
  while (pos < end) {
    const uint8_t c = cls(s, pos);
    const bool letter_next = pos + 1 < end && cls(s, pos + 1) == kLetter;
    size_t me = 0;
    if (c == kLetter) {
      me = run_end(s, pos, end, kLetter);  // b, without its optional character
    } else if (c == kPunct) {
      me = letter_next ? run_end(s, pos + 1, end, kLetter)                                      // a
                       : run_end(s, run_end(s, pos, end, kPunct), end, kNewline);               // c
    } else if (c == kBlank || c == kNewline) {
      if (c == kBlank && letter_next) {
        me = run_end(s, pos + 1, end, kLetter);  // b
      } else if (s[pos] == ' ' && pos + 1 < end && cls(s, pos + 1) == kPunct) {
        me = run_end(s, run_end(s, pos + 1, end, kPunct), end, kNewline);  // c
      } else {
        size_t w = pos, last_nl = end;
        for (; w < end && (cls(s, w) == kBlank || cls(s, w) == kNewline); ++w)
          if (cls(s, w) == kNewline) last_nl = w;
        if (last_nl != end) me = last_nl + 1;  // d: up to the last line break of the run
        else if (w == end) me = w;             // e: the run ends the piece
        else if (w - pos >= 2) me = w - 1;     // e: leaves one blank for the word that follows
        else me = w;                           // f
      }
    } else if (c == kOther && letter_next) {
      me = run_end(s, pos + 1, end, kLetter);  // b, with a control character as its optional character
    }
    if (me == 0) {  // no alternative matches here
      ++pos;
      continue;
    }
    if (pos > gap) out.push_back({gap, pos});
    out.push_back({pos, me});
    gap = pos = me;
  }
  if (gap < end) out.push_back({gap, end});
}

// The whole cascade on ASCII: digit runs in threes (first Split), nothing for the CJK Split, then the third.
void ascii_split(const char* s, size_t begin, size_t end, std::vector<PreTokenizer::Piece>& out) {
  size_t gap = begin, pos = begin;
  while (pos < end) {
    if (cls(s, pos) != kDigit) {
      ++pos;
      continue;
    }
    if (pos > gap) ascii_split3(s, gap, pos, out);
    const size_t d = run_end(s, pos, end, kDigit);
    for (; pos < d; pos += 3) out.push_back({pos, std::min(pos + 3, d)});
    gap = pos = d;
  }
  if (gap < end) ascii_split3(s, gap, end, out);
}

}  // namespace

void PreTokenizer::split_regex(std::string_view text, size_t begin, size_t end, std::vector<Piece>& out) const {
  const std::string_view part = text.substr(begin, end - begin);
  const int variant = (has_unicode_additions(part) ? 2 : 0) | (is_valid_utf8(part) ? 0 : 1);
  if (!fused_) {
    split_level(text, begin, end, 0, variant, out);
    return;
  }
  // Number pieces are final (the later Splits match nothing in them); CJK runs and gaps go to the third Split.
  size_t prev = 0, pos = 0, ms = 0, me = 0;
  while (pos < part.size() && fused_->find(part.data(), part.size(), pos, variant, ms, me)) {
    if (ms > prev) split_level(text, begin + prev, begin + ms, 2, variant, out);
    if (is_cjk_split_char(part, ms)) split_level(text, begin + ms, begin + me, 2, variant, out);
    else out.push_back({begin + ms, begin + me});
    prev = pos = me;
  }
  if (prev < part.size()) split_level(text, begin + prev, end, 2, variant, out);
}

void PreTokenizer::split_into(std::string_view text, std::vector<Piece>& out) const {
  if (text.empty()) return;
  if (!fast_paths_) {
    split_level(text, 0, text.size(), 0, (has_unicode_additions(text) ? 2 : 0) | (is_valid_utf8(text) ? 0 : 1), out);
    return;
  }
  // Cut after each '\n' that is followed by ASCII blanks (or none) and then an ASCII character that is not a
  // line break: every Split ends a piece right after such a '\n' (the third one's line-break alternatives end
  // at the last line break of a whitespace run), so the parts split independently. ASCII parts (all of most
  // code and English) take the hand-written path, the others PCRE2.
  const char* s = text.data();
  const size_t n = text.size();
  size_t a = 0;
  while (a < n) {
    size_t b = a;
    unsigned char high = 0;
    for (; b < n; ++b) {
      high |= static_cast<unsigned char>(s[b]);
      if (s[b] != '\n') continue;
      size_t k = b + 1;
      while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\v' || s[k] == '\f')) ++k;
      if (k < n && static_cast<unsigned char>(s[k]) < 0x80 && s[k] != '\n' && s[k] != '\r') {
        ++b;
        break;
      }
    }
    if (high < 0x80) ascii_split(s, a, b, out);
    else split_regex(text, a, b, out);
    a = b;
  }
}

std::vector<std::string_view> PreTokenizer::split(std::string_view text) const {
  std::vector<Piece> pieces;
  split_into(text, pieces);
  std::vector<std::string_view> r;
  for (const auto& p : pieces) r.push_back(text.substr(p.begin, p.end - p.begin));
  return r;
}

bool is_valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += len;
  }
  return true;
}

}  // namespace dsv4
