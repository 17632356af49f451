#include "runtime/grammar/regex.h"

#include <string>

#include "core/error.h"

namespace dsv4::grammar {

namespace {

struct Re {
  enum Kind { Class, Seq, Alt, Rep } kind = Seq;
  Ranges cls;
  std::vector<Re> kids;
  int min = 0, max = 0;  // Rep; max -1 = unbounded
};

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}};
const Ranges kLineTerm = {{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}};

class Parser {
 public:
  explicit Parser(std::string_view p) : p_(p) {}

  Re parse() {
    Re r = alt();
    if (i_ < p_.size()) bad(fmt::format("unbalanced ')' at offset {}", i_));
    return r;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail("unsupported JSON Schema keyword value: pattern \"{}\": {}", std::string(p_), what);
  }
  bool more() const { return i_ < p_.size(); }
  char peek() const { return p_[i_]; }

  uint32_t utf8_char() {  // decodes one UTF-8 character of the pattern
    const uint8_t c = uint8_t(p_[i_++]);
    if (c < 0x80) return c;
    const int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
    uint32_t cp = c & (0x3F >> n);
    for (int k = 0; k < n; ++k) {
      if (!more()) bad("invalid UTF-8");
      cp = cp << 6 | (uint8_t(p_[i_++]) & 0x3F);
    }
    return cp;
  }

  uint32_t hex(int digits) {
    uint32_t v = 0;
    for (int k = 0; k < digits; ++k) {
      if (!more() || !isxdigit(uint8_t(peek()))) bad("a bad \\x or \\u escape");
      const char c = p_[i_++];
      v = v * 16 + uint32_t(isdigit(uint8_t(c)) ? c - '0' : (tolower(c) - 'a' + 10));
    }
    return v;
  }

  // An escape after the backslash: a class (\d, \w, ...) or one character.
  Ranges escape(bool in_class) {
    if (!more()) bad("a trailing backslash");
    const char c = p_[i_++];
    switch (c) {
      case 'd': return kDigit;
      case 'D': return subtract(any_char(), kDigit);
      case 'w': return kWord;
      case 'W': return subtract(any_char(), kWord);
      case 's': return kSpace;
      case 'S': return subtract(any_char(), kSpace);
      case 't': return {{'\t', '\t'}};
      case 'n': return {{'\n', '\n'}};
      case 'r': return {{'\r', '\r'}};
      case 'v': return {{'\v', '\v'}};
      case 'f': return {{'\f', '\f'}};
      case '0': return {{0, 0}};
      case 'x': { uint32_t v = hex(2); return {{v, v}}; }
      case 'u': { uint32_t v = hex(4); return {{v, v}}; }
      case 'b':
        if (in_class) return {{'\b', '\b'}};
        bad("\\b (word boundary)");
      default:
        if (isalnum(uint8_t(c))) bad(fmt::format("the escape \\{}", c));
        return {{uint32_t(uint8_t(c)), uint32_t(uint8_t(c))}};
    }
  }

  Re cls(Ranges r) {
    Re x;
    x.kind = Re::Class;
    x.cls = normalize(std::move(r));
    if (x.cls.empty()) bad("a class that matches nothing");
    return x;
  }

  Re bracket() {  // after '['
    bool neg = false;
    if (more() && peek() == '^') {
      neg = true;
      ++i_;
    }
    Ranges r;
    bool first = true;
    while (more() && (peek() != ']' || first)) {
      first = false;
      Ranges a;
      if (peek() == '\\') {
        ++i_;
        a = escape(true);
      } else {
        const uint32_t c = utf8_char();
        a = {{c, c}};
      }
      if (a.size() == 1 && a[0].first == a[0].second && i_ + 1 < p_.size() && peek() == '-' && p_[i_ + 1] != ']') {
        ++i_;
        Ranges b;
        if (peek() == '\\') {
          ++i_;
          b = escape(true);
        } else {
          const uint32_t c = utf8_char();
          b = {{c, c}};
        }
        if (b.size() != 1 || b[0].first != b[0].second || b[0].first < a[0].first) bad("a bad class range");
        a = {{a[0].first, b[0].first}};
      }
      r.insert(r.end(), a.begin(), a.end());
    }
    if (!more()) bad("an unterminated '['");
    ++i_;  // ']'
    return cls(neg ? subtract(any_char(), r) : r);
  }

  Re atom() {
    const char c = peek();
    if (c == '(') {
      ++i_;
      if (more() && peek() == '?') {
        if (i_ + 1 < p_.size() && p_[i_ + 1] == ':') i_ += 2;
        else bad("lookaround or named groups");
      }
      Re r = alt();
      if (!more() || peek() != ')') bad("an unterminated '('");
      ++i_;
      return r;
    }
    if (c == '[') {
      ++i_;
      return bracket();
    }
    if (c == '.') {
      ++i_;
      return cls(subtract(any_char(), kLineTerm));
    }
    if (c == '\\') {
      ++i_;
      if (more() && isdigit(uint8_t(peek())) && peek() != '0') bad("backreferences");
      return cls(escape(false));
    }
    if (c == '^' || c == '$') bad("anchors inside the pattern");
    if (c == '*' || c == '+' || c == '?') bad(fmt::format("a quantifier '{}' with nothing to repeat", c));
    const uint32_t cp = utf8_char();
    return cls({{cp, cp}});
  }

  // {n}, {n,}, {n,m}; false (and no input consumed) when the brace is a literal.
  bool braces(int& lo, int& hi) {
    size_t j = i_ + 1;
    auto num = [&](int& v) {
      const size_t s = j;
      long x = 0;
      while (j < p_.size() && isdigit(uint8_t(p_[j]))) x = std::min<long>(x * 10 + (p_[j++] - '0'), 1 << 20);
      v = int(x);
      return j > s;
    };
    if (!num(lo)) return false;
    hi = lo;
    if (j < p_.size() && p_[j] == ',') {
      ++j;
      if (!num(hi)) hi = -1;
    }
    if (j >= p_.size() || p_[j] != '}') return false;
    i_ = j + 1;
    return true;
  }

  Re seq() {
    Re s;
    s.kind = Re::Seq;
    while (more() && peek() != '|' && peek() != ')') {
      Re a = atom();
      for (;;) {
        if (!more()) break;
        int lo = 0, hi = 0;
        const char q = peek();
        if (q == '*') lo = 0, hi = -1, ++i_;
        else if (q == '+') lo = 1, hi = -1, ++i_;
        else if (q == '?') lo = 0, hi = 1, ++i_;
        else if (q == '{' && braces(lo, hi)) {
        } else break;
        if (more() && peek() == '?') ++i_;  // lazy: same language
        if (lo > kMaxRepeat || hi > kMaxRepeat) bad(fmt::format("a repetition count above {}", kMaxRepeat));
        if (hi >= 0 && hi < lo) bad("a repetition {n,m} with m < n");
        Re r;
        r.kind = Re::Rep;
        r.min = lo;
        r.max = hi;
        r.kids.push_back(std::move(a));
        a = std::move(r);
      }
      s.kids.push_back(std::move(a));
    }
    return s;
  }

  Re alt() {
    Re a;
    a.kind = Re::Alt;
    a.kids.push_back(seq());
    while (more() && peek() == '|') {
      ++i_;
      a.kids.push_back(seq());
    }
    return a.kids.size() == 1 ? std::move(a.kids[0]) : a;
  }

  std::string_view p_;
  size_t i_ = 0;
};

Frag build(GrammarBuilder& b, const Re& r, Encoding enc, TextOptions opt) {
  switch (r.kind) {
    case Re::Class: return char_class(b, r.cls, enc, opt);
    case Re::Seq: {
      std::vector<Frag> parts;
      for (const Re& k : r.kids) parts.push_back(build(b, k, enc, opt));
      return b.seq(parts);
    }
    case Re::Alt: {
      std::vector<Frag> parts;
      for (const Re& k : r.kids) parts.push_back(build(b, k, enc, opt));
      return b.alt(parts);
    }
    case Re::Rep: {
      std::vector<Frag> parts;
      for (int i = 0; i < r.min; ++i) parts.push_back(build(b, r.kids[0], enc, opt));
      if (r.max < 0) {
        parts.push_back(b.star(build(b, r.kids[0], enc, opt)));
      } else {
        Frag tail = b.empty();  // nested optionals: x(x(x)?)?)? keeps the automaton's state sets small
        for (int i = r.min; i < r.max; ++i) tail = b.opt(b.seq({build(b, r.kids[0], enc, opt), tail}));
        parts.push_back(tail);
      }
      return b.seq(parts);
    }
  }
  return b.empty();
}

}  // namespace

Frag compile_pattern(GrammarBuilder& b, std::string_view pattern, Encoding enc, TextOptions opt) {
  std::string_view p = pattern;
  const bool head = !p.empty() && p.front() == '^';
  if (head) p.remove_prefix(1);
  bool tail = false;
  if (!p.empty() && p.back() == '$') {
    size_t bs = 0;
    for (size_t k = p.size() - 1; k > 0 && p[k - 1] == '\\'; --k) ++bs;
    if (bs % 2 == 0) {
      tail = true;
      p.remove_suffix(1);
    }
  }
  const Re re = Parser(p).parse();
  std::vector<Frag> parts;
  if (!head) parts.push_back(b.star(char_class(b, any_char(), enc, opt)));
  parts.push_back(build(b, re, enc, opt));
  if (!tail) parts.push_back(b.star(char_class(b, any_char(), enc, opt)));
  return b.seq(parts);
}

}  // namespace dsv4::grammar
