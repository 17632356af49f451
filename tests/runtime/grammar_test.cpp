// Grammar core: the automaton and matcher on small vocabularies, schema compile errors, and token masks
// checked against an independent brute-force reference over the real 129K-token vocabulary.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "runtime/grammar/mask_worker.h"
#include "runtime/grammar/regex.h"
#include "runtime/grammar/structured.h"
#include "runtime/sampler.h"
#include "grammar_test_util.h"
#include "schema_validator.h"
#include "tokenizer/dsml_parser.h"
#include "tokenizer/tokenizer.h"

using namespace dsv4;
using namespace dsv4::grammar;
using namespace grammar_test;

namespace {

const std::string kTok = std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json";
const std::string kCorpus = std::string(DSV4_SOURCE_DIR) + "/tests/runtime/data/tool_schemas.json";

SchemaJson corpus() {
  std::ifstream f(kCorpus);
  return SchemaJson::parse(f);
}

}  // namespace

TEST(Grammar, AcceptsExactlyTheSchemaTexts) {
  auto g = schema_grammar(SchemaJson::parse(R"({"type":"object","properties":{"a":{"type":"integer","minimum":-5,"maximum":120},
    "b":{"type":"string","enum":["x","y z"]},"c":{"type":"array","items":{"type":"boolean"},"maxItems":2}},
    "required":["a"],"additionalProperties":false})"), byte_vocab());
  for (const char* ok : {R"({"a":0})", R"({"a": -5, "b": "y z"})", R"({"a":120,"c":[true, false]})", R"({"a":7,"c":[]})"})
    EXPECT_TRUE(accepts(*g, ok)) << ok;
  for (const char* bad : {R"({"a":121})", R"({"a":-6})", R"({"b":"x"})", R"({"a":1,"c":[true,true,true]})",
                          R"({"a":01})", R"({"a":1,"d":1})", R"({"b":"x","a":1})", R"({"a":1}  )", R"({ "a":1})"})
    EXPECT_FALSE(accepts(*g, bad)) << bad;
}

TEST(Grammar, MatcherStateCopiesAreRollbackPointsAndEndTokensNeedACompleteText) {
  auto g = schema_grammar(SchemaJson::parse(R"({"type":"boolean"})"), byte_vocab({"tr", "true", "fals"}));
  GrammarMatcher m(g);
  EXPECT_FALSE(m.is_allowed(0));  // EOS before any text
  EXPECT_TRUE(m.is_allowed(257));   // "tr"
  EXPECT_TRUE(m.is_allowed(258));   // "true"
  EXPECT_FALSE(m.is_allowed(int32_t('x') + 1));
  GrammarMatcher saved = m;
  ASSERT_TRUE(m.accept_token(258));
  EXPECT_TRUE(m.accepting());
  const auto mask = m.mask();
  size_t n = 0;
  for (uint64_t w : *mask) n += size_t(__builtin_popcountll(w));
  EXPECT_EQ(n, 1u);  // only the end token
  EXPECT_TRUE((*mask)[0] & 1);
  ASSERT_TRUE(m.accept_token(0));
  EXPECT_TRUE(m.terminated());
  EXPECT_FALSE(m.accept_token(int32_t('t') + 1));
  // The copy taken before is unaffected: a draft token rejected there rolls back to it.
  EXPECT_FALSE(saved.accept_token(259 + 5));
  EXPECT_TRUE(saved.accept_token(259));  // "fals"
  EXPECT_FALSE(saved.accepting());
  EXPECT_TRUE(saved.accept_token(int32_t('e') + 1));
  EXPECT_TRUE(saved.accepting());
}

TEST(Grammar, StateSurvivesCacheResets) {
  // A tiny state cap forces resets mid-request: matchers re-intern their state from its key.
  GrammarBuilder b;
  SchemaJson schema = SchemaJson::parse(R"({"type":"array","items":{"type":"integer"},"maxItems":50})");
  SchemaCompiler c(b, schema);
  auto grammar = std::make_shared<const Grammar>(b.finish(c.json(schema)));
  GrammarAutomaton a(grammar, 8);
  auto s = a.start();
  std::string text = "[";
  for (int i = 0; i < 40; ++i) text += std::to_string(i * 7) + (i < 39 ? "," : "]");
  for (char ch : text) {
    s = a.step(s, uint8_t(ch));
    ASSERT_FALSE(s.dead()) << text;
  }
  EXPECT_TRUE(a.accepting(s));
  EXPECT_GT(a.stats().resets, 0u);
}

TEST(Grammar, Patterns) {
  auto check = [](const char* pattern, std::vector<const char*> ok, std::vector<const char*> bad) {
    auto g = schema_grammar(SchemaJson{{"type", "string"}, {"pattern", pattern}}, byte_vocab());
    for (const char* s : ok) EXPECT_TRUE(accepts(*g, std::string("\"") + s + "\"")) << pattern << " " << s;
    for (const char* s : bad) EXPECT_FALSE(accepts(*g, std::string("\"") + s + "\"")) << pattern << " " << s;
  };
  check("^[A-Z]{3}$", {"ABC"}, {"AB", "ABCD", "abc"});
  check("^\\d{5}(-\\d{4})?$", {"12345", "12345-6789"}, {"1234", "12345-"});
  check("^(foo|ba+r)\\.x*$", {"foo.", "baaar.xx"}, {"br.", "foo"});
  check("ab", {"ab", "xxabyy"}, {"a", "ba"});
  check("^[^a-c\"]+$", {"xyz", "é"}, {"abc", "\\\""});
  check("^a\"b\\\\c$", {"a\\\"b\\\\c"}, {"a\"b"});  // JSON escapes of the pattern's quote and backslash
}

TEST(Grammar, UnsupportedKeywordsNameTheKeyword) {
  const std::vector<std::pair<const char*, const char*>> cases = {
      {R"({"type":"object","patternProperties":{"^x":{}}})", "'patternProperties'"},
      {R"({"not":{"type":"string"}})", "'not'"},
      {R"({"type":"array","uniqueItems":true})", "'uniqueItems'"},
      {R"({"type":"number","multipleOf":3})", "'multipleOf'"},
      {R"({"type":"object","minProperties":1})", "'minProperties'"},
      {R"({"if":{"type":"string"},"then":{}})", "'if'"},
      {R"({"type":"string","format":"color"})", "'format'"},
      {R"({"type":"string","pattern":"(?=a)b"})", "pattern"},
      {R"({"type":"string","pattern":"(a)\\1"})", "backreferences"},
      {R"({"type":"number","minimum":0.5})", "'minimum'"},
      {R"({"$ref":"https://example.com/s.json"})", "'$ref'"},
      {R"({"type":"object","properties":{"a":{"type":"string","contentEncoding":"base64"}}})", "'contentEncoding' at #/properties/a"},
  };
  for (const auto& [schema, needle] : cases) {
    const std::string e = error_of(SchemaJson::parse(schema));
    EXPECT_NE(e.find(needle), std::string::npos) << schema << " -> " << e;
  }
  // Annotations are not constraints.
  EXPECT_EQ(error_of(SchemaJson::parse(R"({"type":"string","title":"t","description":"d","examples":["a"],"x-foo":1,"default":"a"})")), "");
}

TEST(Grammar, EveryCorpusSchemaCompilesInBothForms) {
  for (const auto& tool : corpus()) {
    ConstraintSpec json;
    json.kind = ConstraintSpec::Kind::JsonSchema;
    json.schema = tool["parameters"];
    EXPECT_NO_THROW(build_grammar(json)) << tool["name"];
    ConstraintSpec tc;
    tc.kind = ConstraintSpec::Kind::ToolCalls;
    tc.tool_mode = ConstraintSpec::ToolMode::Named;
    tc.tools = {{tool["name"].get<std::string>(), tool["parameters"]}};
    EXPECT_NO_THROW(build_grammar(tc)) << tool["name"];
  }
}

TEST(Grammar, SamplerPicksOnlyAllowedTokensAndLogprobsStayRaw) {
  auto g = schema_grammar(SchemaJson::parse(R"({"enum":["yes","no"]})"), byte_vocab());
  SamplingParams p;
  p.temperature = 0;
  p.logprobs = 0;
  p.grammar = g;
  SamplerState s(p);
  std::vector<float> logits(257, 0.0f);
  logits[size_t('x') + 1] = 10;  // the model's favourite is not allowed
  logits[size_t('"') + 1] = 1;
  SampleResult r = s.sample(logits);
  EXPECT_EQ(r.token, int32_t('"') + 1);
  EXPECT_EQ(r.rank, 2);  // raw logprobs: 'x' ranks first
  logits[size_t('n') + 1] = 0.5f;
  logits[size_t('y') + 1] = 0.25f;
  EXPECT_EQ(s.sample(logits).token, int32_t('n') + 1);
}

// ---- brute force: masks over the real vocabulary against the plain prefix checker

TEST(GrammarMask, EqualsBruteForceOverTheVocabulary) {
  if (!std::filesystem::exists(kTok)) GTEST_SKIP() << "tokenizer missing (scripts/fetch_tokenizer.sh)";
  const Tokenizer tok = Tokenizer::from_file(kTok);
  auto vocab = Vocabulary::from_tokenizer(tok);
  std::vector<SchemaJson> schemas;
  const SchemaJson all = corpus();
  for (const char* name : {"get_weather", "web_search", "TodoWrite", "run_sql", "update_ticket", "tag_items",
                           "create_folder_tree", "store_memory", "Edit", "rate_answer"})
    for (const auto& t : all)
      if (t["name"] == name) schemas.push_back(t["parameters"]);
  schemas.push_back(SchemaJson{{"type", "object"}});  // json_object
  const int prefixes = std::getenv("DSV4_GRAMMAR_BRUTE_PREFIXES") ? std::atoi(std::getenv("DSV4_GRAMMAR_BRUTE_PREFIXES")) : 3;
  std::mt19937 rng(7);
  size_t checked = 0;
  for (const auto& schema : schemas) {
    auto g = schema_grammar(schema, vocab);
    for (int k = 0; k < prefixes; ++k) {
      // A prefix from a random constrained walk (a random number of allowed tokens).
      GrammarMatcher m(g);
      std::string text;
      const int steps = int(rng() % 24);
      for (int s = 0; s < steps && m.can_continue(); ++s) {
        const auto mask = m.mask();
        std::vector<int32_t> allowed;
        for (int32_t t = 0; t < vocab->size(); ++t)
          if ((*mask)[size_t(t) >> 6] >> (t & 63) & 1 && !vocab->is_end(t)) allowed.push_back(t);
        if (allowed.empty()) break;
        const int32_t t = allowed[rng() % allowed.size()];
        ASSERT_TRUE(m.accept_token(t));
        text += vocab->bytes(t);
      }
      const auto mask = m.mask();
      ASSERT_TRUE(schema_test::viable_prefix(text, schema, schema)) << text;
      for (int32_t t = 0; t < vocab->size(); ++t) {
        const bool got = (*mask)[size_t(t) >> 6] >> (t & 63) & 1;
        bool want;
        if (vocab->is_end(t)) {
          const auto doc = SchemaJson::parse(text, nullptr, false);
          want = !doc.is_discarded() && schema_test::validate(doc, schema, schema).empty() &&
                 schema_test::viable_prefix(text, schema, schema);
        } else if (vocab->bytes(t).empty()) {
          want = false;
        } else {
          want = schema_test::viable_prefix(text + vocab->bytes(t), schema, schema);
        }
        ASSERT_EQ(got, want) << "schema " << schema.dump() << "\nprefix " << SchemaJson(text).dump() << "\ntoken " << t << " "
                             << SchemaJson(vocab->bytes(t)).dump();
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, schemas.size() * size_t(prefixes));
}

TEST(Grammar, DsmlCallsFollowTheParserFormatIncludingFreeFormParameters) {
  ConstraintSpec spec;
  spec.kind = ConstraintSpec::Kind::ToolCalls;
  spec.tool_mode = ConstraintSpec::ToolMode::Named;
  spec.tools = {{"exec", SchemaJson::parse(R"({"type":"object","properties":{"cmd":{"type":"string"},
    "n":{"type":"integer"}},"required":["cmd"],"additionalProperties":true})")}};
  auto g = std::make_shared<CompiledGrammar>(build_grammar(spec), byte_vocab());
  const std::string head = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"exec\">\n";
  const std::string tail = "</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
  auto p = [](const std::string& k, const std::string& t, const std::string& v) {
    return "<｜DSML｜parameter name=\"" + k + "\" string=\"" + t + "\">" + v + "</｜DSML｜parameter>\n";
  };
  const std::string ok = head + p("cmd", "true", "ls -l\n<b>") + p("n", "false", "3") + p("workdir", "true", "/tmp") +
                         p("env", "false", "{\"A\": [1, null]}") + tail;
  EXPECT_TRUE(accepts(*g, ok));
  const ParsedOutput out = parse_output(ok, ThinkingMode::Chat, 1);
  ASSERT_EQ(out.tool_calls.size(), 1u);
  EXPECT_EQ(SchemaJson::parse(out.tool_calls[0].arguments),
            SchemaJson::parse(R"({"cmd": "ls -l\n<b>", "n": 3, "workdir": "/tmp", "env": {"A": [1, null]}})"));
  EXPECT_FALSE(accepts(*g, head + p("n", "false", "3") + tail));                         // cmd is required
  EXPECT_FALSE(accepts(*g, head + p("cmd", "false", "\"ls\"") + tail));                 // strings are raw
  EXPECT_FALSE(accepts(*g, head + p("cmd", "true", "a") + p("cmd", "true", "b") + tail));  // a declared name again
  EXPECT_FALSE(accepts(*g, head + p("cmd", "true", "a｜b") + tail));                     // the marker's bar
  EXPECT_FALSE(accepts(*g, head + p("cmd", "true", "a") + tail + "\nmore"));             // nothing after the block
}

// Prefetch (mask_worker.h): masks computed on the background thread are the ones computed when sampled, and
// a state's mask is computed once whether the worker or the sampler gets to it first.
TEST(GrammarMask, PrefetchedMasksEqualComputedOnesAndAreComputedOnce) {
  const SchemaJson schema = SchemaJson::parse(R"({"type":"object","properties":{"s":{"type":"string","maxLength":6},
    "n":{"type":"integer","minimum":0,"maximum":500}},"required":["s","n"]})");
  const std::string text = R"({"s":"ab\"cd","n":417})";
  auto vocab = byte_vocab({"ab", "\",", "\"n\":", "41"});
  const bool was = mask_prefetch_enabled();
  set_mask_prefetch(true);
  for (int round = 0; round < 4; ++round) {
    auto g = schema_grammar(schema, vocab);
    auto& M = grammar_metrics();
    const uint64_t c0 = M.mask_computed.load();
    GrammarMatcher m(g);
    std::vector<Mask> got;
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_TRUE(m.accept_token(int32_t(uint8_t(text[i])) + 1)) << i;
      m.prefetch_mask();
      if ((i + size_t(round)) % 3 == 0) mask_worker_drain();  // the worker first; otherwise a race
      got.push_back(*m.mask());
    }
    mask_worker_drain();
    EXPECT_EQ(M.mask_computed.load() - c0, g->cached_masks()) << "a mask computed twice (round " << round << ")";
    set_mask_prefetch(false);
    auto ref = schema_grammar(schema, vocab);
    GrammarMatcher r(ref);
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_TRUE(r.accept_token(int32_t(uint8_t(text[i])) + 1));
      EXPECT_EQ(got[i], *r.mask()) << "after " << text.substr(0, i + 1);
    }
    set_mask_prefetch(true);
  }
  set_mask_prefetch(was);
}
