// JSON Schema `pattern` (ECMA-262 syntax, the simple subset real schemas use) compiled to a grammar
// fragment matching the JSON-encoded (or raw) string content. Supported: literals and escapes (\d \w \s
// \D \W \S \. \\ \/ \- \t \n \r \uXXXX ...), `.`, classes `[a-z_]` and `[^...]`, groups `(...)` `(?:...)`,
// alternation, quantifiers `* + ? {n} {n,} {n,m}` (lazy forms too: same language), and `^` / `$` at the
// ends. As in JSON Schema the pattern is unanchored (a missing `^` or `$` lets any text precede or follow).
// Anything else (lookaround, backreferences, named groups, \b, inner anchors, unicode properties) throws
// dsv4::Error naming the construct. Counted repetition is unrolled up to kMaxRepeat.
#pragma once
#include <string_view>

#include "runtime/grammar/text.h"

namespace dsv4::grammar {

constexpr int kMaxRepeat = 256;

Frag compile_pattern(GrammarBuilder& b, std::string_view pattern, Encoding enc, TextOptions opt);

}  // namespace dsv4::grammar
