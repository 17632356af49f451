// Character-level building blocks over the byte grammar: code point classes as UTF-8 byte automata, the
// JSON string encoding of a character, and free text that avoids a marker.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/grammar/grammar.h"

namespace dsv4::grammar {

// Sorted, disjoint, inclusive code point ranges.
using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
Ranges normalize(Ranges r);
Ranges subtract(const Ranges& a, const Ranges& b);
Ranges any_char();  // every scalar value (surrogates excluded)

enum class Encoding {
  Json,  // inside a JSON string: `"`, `\` and control characters as escapes, the rest as UTF-8
  Raw,   // the characters themselves (DSML string="true" values)
};

struct TextOptions {
  // DSML: a value must not contain `/｜DSML｜parameter`; no character U+FF5C (the marker's bar) is
  // produced, literally (escapes like \uff5c are fine in JSON).
  bool no_dsml_bar = false;
};
constexpr uint32_t kDsmlBar = 0xFF5C;

// One character of `r`, as its bytes in `enc` (canonical escapes only: \" \\ \n \r \t \b \f \u00XX).
Frag char_class(GrammarBuilder& b, const Ranges& r, Encoding enc, TextOptions opt);
// One character of a free JSON string: any character, any escape (\/ and \uXXXX too, no lone surrogates).
Frag json_string_char(GrammarBuilder& b, TextOptions opt);
// One UTF-8 character (bytes only: no escaping), code points in r.
Frag utf8_class(GrammarBuilder& b, const Ranges& r);

// Any bytes that do not contain `marker` (every prefix of such text is accepted).
Frag text_avoiding(GrammarBuilder& b, std::string_view marker);

}  // namespace dsv4::grammar
