// Helpers of the grammar tests: a byte vocabulary, a schema's compiled grammar, whole-text acceptance and the
// compile error of a schema.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "runtime/grammar/structured.h"

namespace grammar_test {

using namespace dsv4;
using namespace dsv4::grammar;

// A vocabulary of single bytes (id = byte + 1) plus a few multi-byte tokens; id 0 is the end token.
inline std::shared_ptr<const Vocabulary> byte_vocab(std::vector<std::string> extra = {}) {
  std::vector<std::string> v(257);
  for (int b = 0; b < 256; ++b) v[size_t(b + 1)] = std::string(1, char(b));
  for (auto& e : extra) v.push_back(e);
  return Vocabulary::from_bytes(std::move(v), {0});
}

inline std::shared_ptr<const CompiledGrammar> schema_grammar(const SchemaJson& schema, std::shared_ptr<const Vocabulary> v) {
  ConstraintSpec spec;
  spec.kind = ConstraintSpec::Kind::JsonSchema;
  spec.schema = schema;
  return std::make_shared<CompiledGrammar>(build_grammar(spec), std::move(v));
}

inline bool accepts(const CompiledGrammar& g, std::string_view text) {
  GrammarMatcher m(std::shared_ptr<const CompiledGrammar>(&g, [](const CompiledGrammar*) {}));
  return m.accept_bytes(text) && m.accepting();
}

inline std::string error_of(const SchemaJson& schema) {
  try {
    ConstraintSpec spec;
    spec.kind = ConstraintSpec::Kind::JsonSchema;
    spec.schema = schema;
    build_grammar(spec);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace grammar_test
