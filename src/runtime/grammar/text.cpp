#include "runtime/grammar/text.h"

#include <algorithm>

#include "core/error.h"

namespace dsv4::grammar {

Ranges normalize(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (auto [lo, hi] : r) {
    if (lo > hi) continue;
    if (!out.empty() && lo <= out.back().second + 1) out.back().second = std::max(out.back().second, hi);
    else out.push_back({lo, hi});
  }
  return out;
}

Ranges subtract(const Ranges& a, const Ranges& b) {
  Ranges out;
  const Ranges bb = normalize(b);
  for (auto [lo, hi] : normalize(a)) {
    uint32_t cur = lo;
    bool done = false;
    for (auto [blo, bhi] : bb) {
      if (bhi < cur || blo > hi) continue;
      if (blo > cur) out.push_back({cur, blo - 1});
      if (bhi >= hi) {
        done = true;
        break;
      }
      cur = bhi + 1;
    }
    if (!done && cur <= hi) out.push_back({cur, hi});
  }
  return out;
}

Ranges any_char() { return {{0, 0xD7FF}, {0xE000, 0x10FFFF}}; }

namespace {

int utf8_len(uint32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

void encode(uint32_t c, uint8_t* out) {
  const int n = utf8_len(c);
  if (n == 1) {
    out[0] = uint8_t(c);
    return;
  }
  for (int i = n - 1; i > 0; --i) {
    out[i] = uint8_t(0x80 | (c & 0x3F));
    c >>= 6;
  }
  out[0] = uint8_t((n == 2 ? 0xC0 : n == 3 ? 0xE0 : 0xF0) | c);
}

// [lo, hi] of one UTF-8 length as sequences of byte ranges (Russ Cox's utf8 range split).
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  if (lo > hi) return;
  for (uint32_t edge : {0x7Fu, 0x7FFu, 0xFFFFu})
    if (lo <= edge && hi > edge) {
      utf8_sequences(lo, edge, out);
      utf8_sequences(edge + 1, hi, out);
      return;
    }
  const int n = utf8_len(lo);
  for (int i = 1; i < n; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  encode(lo, a);
  encode(hi, b);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int i = 0; i < n; ++i) seq.push_back({a[i], b[i]});
  out.push_back(std::move(seq));
}

}  // namespace

Frag utf8_class(GrammarBuilder& b, const Ranges& r) {
  std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
  for (auto [lo, hi] : subtract(r, {{0xD800, 0xDFFF}})) utf8_sequences(lo, std::min<uint32_t>(hi, 0x10FFFF), seqs);
  DSV4_CHECK(!seqs.empty(), "grammar: an empty character class");
  Frag f{b.node(), b.node()};
  // Sequences sharing a leading byte range share its node (fewer nodes, fewer automaton configurations).
  std::vector<std::pair<std::vector<std::pair<uint8_t, uint8_t>>, uint32_t>> prefixes;
  for (const auto& seq : seqs) {
    uint32_t cur = f.in;
    for (size_t i = 0; i < seq.size(); ++i) {
      if (i + 1 == seq.size()) {
        b.bytes(cur, f.out, seq[i].first, seq[i].second);
        break;
      }
      std::vector<std::pair<uint8_t, uint8_t>> pre(seq.begin(), seq.begin() + long(i) + 1);
      uint32_t next = 0;
      bool found = false;
      for (const auto& [p, n] : prefixes)
        if (p == pre) {
          next = n;
          found = true;
          break;
        }
      if (!found) {
        next = b.node();
        b.bytes(cur, next, seq[i].first, seq[i].second);
        prefixes.push_back({pre, next});
      }
      cur = next;
    }
  }
  return f;
}

namespace {

std::string escape_of(uint32_t c) {
  switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
  }
  return fmt::format("\\u{:04x}", c);
}

}  // namespace

Frag char_class(GrammarBuilder& b, const Ranges& r0, Encoding enc, TextOptions opt) {
  Ranges r = normalize(r0);
  if (opt.no_dsml_bar) r = subtract(r, {{kDsmlBar, kDsmlBar}});
  std::vector<Frag> alts;
  if (enc == Encoding::Json) {
    const Ranges special = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};
    const Ranges plain = subtract(r, special);
    if (!plain.empty()) alts.push_back(utf8_class(b, plain));
    for (auto [lo, hi] : r)
      for (uint32_t c = lo; c <= hi && c <= '\\'; ++c)
        if (c < 0x20 || c == '"' || c == '\\') alts.push_back(b.literal(escape_of(c)));
  } else {
    if (!r.empty()) alts.push_back(utf8_class(b, r));
  }
  DSV4_CHECK(!alts.empty(), "grammar: a character class that matches nothing");
  return b.alt(alts);
}

Frag json_string_char(GrammarBuilder& b, TextOptions opt) {
  Ranges plain = {{0x20, 0x10FFFF}};
  plain = subtract(plain, {{'"', '"'}, {'\\', '\\'}});
  if (opt.no_dsml_bar) plain = subtract(plain, {{kDsmlBar, kDsmlBar}});
  std::vector<Frag> alts{utf8_class(b, plain)};
  // \" \\ \/ \b \f \n \r \t
  Frag esc{b.node(), b.node()};
  b.bytes(esc.in, esc.out, '\\', '\\');
  const uint32_t after = esc.out;
  esc.out = b.node();
  for (char c : std::string_view("\"\\/bfnrt")) b.bytes(after, esc.out, uint8_t(c), uint8_t(c));
  // \uXXXX, no surrogates: [0-9a-cA-C e-fE-F] hex hex hex | [dD] [0-7] hex hex
  const uint32_t u = b.node();
  b.bytes(after, u, 'u', 'u');
  auto hex = [&](uint32_t from, uint32_t to) {
    b.bytes(from, to, '0', '9');
    b.bytes(from, to, 'a', 'f');
    b.bytes(from, to, 'A', 'F');
  };
  const uint32_t h1 = b.node(), h2 = b.node(), d1 = b.node();
  b.bytes(u, h1, '0', '9');
  b.bytes(u, h1, 'a', 'c');
  b.bytes(u, h1, 'A', 'C');
  b.bytes(u, h1, 'e', 'f');
  b.bytes(u, h1, 'E', 'F');
  b.bytes(u, d1, 'd', 'd');
  b.bytes(u, d1, 'D', 'D');
  hex(h1, h2);
  b.bytes(d1, h2, '0', '7');
  const uint32_t h3 = b.node();
  hex(h2, h3);
  hex(h3, esc.out);
  alts.push_back(esc);
  return b.alt(alts);
}

Frag text_avoiding(GrammarBuilder& b, std::string_view m) {
  DSV4_CHECK(!m.empty(), "grammar: empty marker");
  const size_t n = m.size();
  // KMP failure function, then delta(k, c) for k < n: states 0..n-1 are all accepting; reaching n is barred.
  std::vector<size_t> fail(n + 1, 0);
  for (size_t i = 1, k = 0; i < n; ++i) {
    while (k > 0 && m[i] != m[k]) k = fail[k];
    if (m[i] == m[k]) ++k;
    fail[i + 1] = k;
  }
  auto delta = [&](size_t k, uint8_t c) -> size_t {
    while (k > 0 && uint8_t(m[k]) != c) k = fail[k];
    return uint8_t(m[k]) == c ? k + 1 : 0;
  };
  std::vector<uint32_t> st(n);
  for (auto& s : st) s = b.node();
  const uint32_t out = b.node();
  for (size_t k = 0; k < n; ++k) {
    b.eps(st[k], out);
    int lo = 0;
    size_t tgt = delta(k, 0);
    for (int c = 1; c <= 256; ++c) {
      const size_t t = c < 256 ? delta(k, uint8_t(c)) : size_t(-1);
      if (t != tgt) {
        if (tgt < n) b.bytes(st[k], st[tgt], uint8_t(lo), uint8_t(c - 1));
        lo = c;
        tgt = t;
      }
    }
  }
  return {st[0], out};
}

}  // namespace dsv4::grammar
