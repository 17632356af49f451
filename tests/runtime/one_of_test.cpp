// oneOf means exactly one branch: disjoint branches compile to their alternation, branches that overlap only
// through an optional property the other requires are restricted, anything else is a 400 naming oneOf.
// Random walks through each accepted grammar must produce values that pass the plain validator, whose
// oneOf counts matching branches (schema_validator.h).
#include <gtest/gtest.h>

#include <random>

#include "grammar_test_util.h"
#include "schema_validator.h"

using namespace grammar_test;

namespace {

// A random text of the grammar: random allowed bytes, the end token (id 0) taken half the time it is allowed.
std::string random_text(const std::shared_ptr<const CompiledGrammar>& g, std::mt19937& rng) {
  GrammarMatcher m(g);
  std::string text;
  for (int step = 0; step < 400; ++step) {
    const auto mask = m.mask();
    std::vector<int32_t> allowed;
    for (int32_t t = 1; t < g->vocab().size(); ++t)
      if ((*mask)[size_t(t) >> 6] >> (t & 63) & 1) allowed.push_back(t);
    if (m.accepting() && (allowed.empty() || rng() % 2 == 0)) return text;
    if (allowed.empty()) break;
    const int32_t t = allowed[rng() % allowed.size()];
    EXPECT_TRUE(m.accept_token(t));
    text += g->vocab().bytes(t);
  }
  ADD_FAILURE() << "no complete text within 400 bytes: " << text;
  return text;
}

void expect_outputs_validate(const char* schema_text, int n = 200) {
  const SchemaJson schema = SchemaJson::parse(schema_text);
  auto g = schema_grammar(schema, byte_vocab());
  std::mt19937 rng(11);
  for (int i = 0; i < n; ++i) {
    const std::string text = random_text(g, rng);
    const auto v = SchemaJson::parse(text, nullptr, false);
    ASSERT_FALSE(v.is_discarded()) << schema_text << " -> " << text;
    EXPECT_EQ(schema_test::validate(v, schema, schema), "") << schema_text << " -> " << text;
  }
}

}  // namespace

TEST(OneOf, DisjointBranchesAreExact) {
  const char* by_type = R"({"oneOf":[{"type":"string","maxLength":3},{"type":"integer","minimum":0,"maximum":999},{"type":"null"}]})";
  const char* by_const = R"({"oneOf":[
    {"type":"object","properties":{"kind":{"const":"circle"},"r":{"type":"integer","minimum":0,"maximum":9}},"required":["kind","r"]},
    {"type":"object","properties":{"kind":{"const":"square"},"r":{"type":"integer","minimum":0,"maximum":9},
      "side":{"type":"integer","minimum":0,"maximum":9}},"required":["kind"]}]})";
  const char* by_enum = R"({"oneOf":[{"enum":["a","b",1]},{"enum":["c",2.5]},{"type":"boolean"}]})";
  const char* by_required = R"({"oneOf":[
    {"type":"object","properties":{"a":{"type":"boolean"}},"required":["a"],"additionalProperties":false},
    {"type":"object","properties":{"b":{"type":"boolean"}},"required":["b"],"additionalProperties":false}]})";
  const char* via_ref = R"({"$defs":{"c":{"type":"object","properties":{"t":{"enum":["c"]}},"required":["t"]},
    "d":{"type":"object","properties":{"t":{"enum":["d","e"]},"n":{"type":"null"}},"required":["t"]}},
    "type":"object","properties":{"x":{"oneOf":[{"$ref":"#/$defs/c"},{"$ref":"#/$defs/d"}]}},"required":["x"]})";
  for (const char* s : {by_type, by_const, by_enum, by_required, via_ref}) {
    EXPECT_EQ(error_of(SchemaJson::parse(s)), "") << s;
    expect_outputs_validate(s);
  }
  auto g = schema_grammar(SchemaJson::parse(by_const), byte_vocab());
  EXPECT_TRUE(accepts(*g, R"({"kind":"circle","r":1})"));
  EXPECT_TRUE(accepts(*g, R"({"kind":"square","side":2})"));
  EXPECT_FALSE(accepts(*g, R"({"kind":"circle","side":2})"));
}

TEST(OneOf, AnOptionalPropertyTheOtherBranchRequiresIsLeftOut) {
  // {"a":"x","b":"y"} matches both branches (the second allows extra keys): the first never writes b.
  const char* s = R"({"oneOf":[
    {"type":"object","properties":{"a":{"type":"string","maxLength":2},"b":{"type":"string","maxLength":2}},"required":["a"]},
    {"type":"object","properties":{"b":{"type":"string","maxLength":2}},"required":["b"]}]})";
  auto g = schema_grammar(SchemaJson::parse(s), byte_vocab());
  EXPECT_TRUE(accepts(*g, R"({"a":"x"})"));
  EXPECT_TRUE(accepts(*g, R"({"b":"y"})"));
  EXPECT_FALSE(accepts(*g, R"({"a":"x","b":"y"})"));
  EXPECT_FALSE(schema_test::validate(SchemaJson::parse(R"({"a":"x","b":"y"})"), SchemaJson::parse(s), SchemaJson::parse(s)).empty());
  expect_outputs_validate(s);
  // Free extra keys: the required name of the other branch is not one of them.
  const char* extra = R"({"oneOf":[{"type":"object","properties":{"a":{"type":"integer","minimum":0,"maximum":9}},
    "required":["a"],"additionalProperties":{"type":"null"}},{"type":"object","required":["zz"],
    "properties":{"zz":{"type":"null"}}}]})";
  auto ge = schema_grammar(SchemaJson::parse(extra), byte_vocab());
  EXPECT_TRUE(accepts(*ge, R"({"a":1,"q":null})"));
  EXPECT_FALSE(accepts(*ge, R"({"a":1,"zz":null})"));
  EXPECT_TRUE(accepts(*ge, R"({"zz":null})"));
}

TEST(OneOf, OverlappingBranchesAreRefusedNamingOneOf) {
  for (const char* s : {R"({"oneOf":[{"type":"number"},{"type":"integer"}]})",
                        R"({"oneOf":[{"type":"string"},{"type":"string","maxLength":3}]})",
                        R"({"oneOf":[{"enum":["a","b"]},{"enum":["b","c"]}]})",
                        R"({"oneOf":[{"type":"string"},{"pattern":"^a"}]})",  // no type: any non-string matches too
                        R"({"type":"object","properties":{"v":{"oneOf":[{"type":"object","properties":{"p":{"type":"integer"}}},
                            {"type":"object","properties":{"q":{"type":"integer"}}}]}}})"}) {
    const std::string e = error_of(SchemaJson::parse(s));
    EXPECT_NE(e.find("unsupported JSON Schema keyword 'oneOf' at #"), std::string::npos) << s << " -> " << e;
  }
  EXPECT_NE(error_of(SchemaJson::parse(R"({"type":"object","properties":{"v":{"oneOf":[{"type":"number"},{"type":"integer"}]}}})"))
                .find("'oneOf' at #/properties/v: branches 0 and 1"),
            std::string::npos);
  // anyOf keeps its meaning: overlap is fine.
  EXPECT_EQ(error_of(SchemaJson::parse(R"({"anyOf":[{"type":"number"},{"type":"integer"}]})")), "");
}

TEST(OneOf, FalsePropertiesAreNeverWritten) {
  const char* s = R"({"type":"object","properties":{"a":{"type":"null"},"b":false},"additionalProperties":{"type":"null"}})";
  auto g = schema_grammar(SchemaJson::parse(s), byte_vocab());
  EXPECT_TRUE(accepts(*g, R"({"a":null,"c":null})"));
  EXPECT_FALSE(accepts(*g, R"({"b":null})"));
  EXPECT_NE(error_of(SchemaJson::parse(R"({"type":"object","properties":{"b":false},"required":["b"]})")).find("'false' schema"),
            std::string::npos);
}
