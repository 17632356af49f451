// Structured outputs end to end on the demo model (random weights: only the constraint makes its output
// valid): seeded requests per corpus schema through the engine (continuous batching, per-request grammar
// state), as response_format JSON and as required / named DSML tool calls; every output must parse and
// validate. `auto` tool choice under random logits pushed toward DSML markup must never leave a malformed
// or half-formed call. DSV4_GRAMMAR_REQUESTS (default 2) sets the requests per schema and form; the nightly
// sweep (scripts/structured_outputs_nightly.sh) runs hundreds.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <chrono>
#include <random>

#include "model/tiny_checkpoint.h"
#include "runtime/engine.h"
#include "runtime/grammar/structured.h"
#include "schema_validator.h"
#include "tokenizer/dsml_parser.h"
#include "tokenizer/tokenizer.h"

using namespace dsv4;
using namespace dsv4::grammar;

namespace {

const std::string kTok = std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json";
const std::string kCorpus = std::string(DSV4_SOURCE_DIR) + "/tests/runtime/data/tool_schemas.json";

int requests_per_schema() {
  const char* e = std::getenv("DSV4_GRAMMAR_REQUESTS");
  return e ? std::max(1, std::atoi(e)) : 2;
}

std::string demo_model() {
  const std::string dir = std::string(DSV4_BINARY_DIR) + "/tiny-model";
  if (!std::filesystem::exists(dir + "/model.safetensors")) make_tiny_checkpoint(dir, kTinyDemoSeed, kTok);
  return dir;
}

struct Job {
  std::string schema_name, form;
  SchemaJson schema;              // JSON form: the value's schema
  std::vector<ToolDef> tools;     // tool forms
  ConstraintSpec::ToolMode mode = ConstraintSpec::ToolMode::Required;
  std::string text;
  FinishReason finish = FinishReason::None;
  std::string error;
};

// The reason a job's output is not valid ("" = valid).
std::string check(const Job& j) {
  if (j.finish != FinishReason::Stop) return "finished " + std::string(finish_reason_name(j.finish)) + " " + j.error;
  if (j.form == "json") {
    const auto v = SchemaJson::parse(j.text, nullptr, false);
    if (v.is_discarded()) return "not JSON";
    return schema_test::validate(v, j.schema, j.schema);
  }
  const ParsedOutput out = parse_output(j.text, ThinkingMode::Chat, 1);
  if (out.summary.tool_call_malformed || out.summary.tool_call_truncated) return "malformed DSML";
  if (!out.content.empty()) return "content beside the call: " + out.content;
  if (out.tool_calls.empty()) return "no tool call";
  if (out.tool_calls.size() != 1) return "several calls without parallel_tool_calls";
  for (const auto& c : out.tool_calls) {
    const ToolDef* t = nullptr;
    for (const auto& d : j.tools)
      if (d.name == c.name) t = &d;
    if (!t) return "unknown tool " + c.name;
    const auto args = SchemaJson::parse(c.arguments, nullptr, false);
    if (args.is_discarded()) return "arguments are not JSON: " + c.arguments;
    if (auto e = schema_test::validate(args, t->parameters, t->parameters); !e.empty()) return c.name + " " + e;
  }
  return "";
}

// A random model never ends free text on its own: inside an unbounded DSML string="true" value only the
// exact `</｜DSML｜parameter>` closes it. For the demo-model run every free string (no maxLength, pattern,
// format, enum or const) gets maxLength 24, "any value" schemas become bounded scalars, extra keys are
// dropped, and required calls are single (parallel_tool_calls false), so outputs finish within max_tokens;
// the unbounded forms are covered by the brute-force mask test and the auto test.
SchemaJson bound_strings(SchemaJson s) {
  if (s.is_object()) {
    bool constrained = false;
    for (auto it = s.begin(); it != s.end(); ++it)
      constrained = constrained || (it.key() != "description" && it.key() != "title");
    if (!constrained) return SchemaJson{{"type", {"string", "number", "boolean", "null"}}, {"maxLength", 24}};
    if (s.contains("additionalProperties")) s["additionalProperties"] = false;  // free keys never end either
    const bool str = s.contains("type") && (s["type"] == "string" || (s["type"].is_array() &&
                     std::find(s["type"].begin(), s["type"].end(), "string") != s["type"].end()));
    if (str && !s.contains("maxLength") && !s.contains("pattern") && !s.contains("format") && !s.contains("enum") &&
        !s.contains("const"))
      s["maxLength"] = 24;
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (it.key() == "properties" || it.key() == "$defs" || it.key() == "definitions") {
        for (auto p = it.value().begin(); p != it.value().end(); ++p) p.value() = bound_strings(p.value());
      } else if (it.key() == "items" || it.key() == "additionalProperties" || it.key() == "anyOf" || it.key() == "oneOf") {
        it.value() = bound_strings(it.value());
      }
    }
  } else if (s.is_array()) {
    for (auto& x : s) x = bound_strings(x);
  }
  return s;
}

}  // namespace

TEST(StructuredOutput, DemoModelOutputsValidateForEveryCorpusSchema) {
  if (!std::filesystem::exists(kTok)) GTEST_SKIP() << "tokenizer missing (scripts/fetch_tokenizer.sh)";
  const Tokenizer tok = Tokenizer::from_file(kTok);
  auto vocab = Vocabulary::from_tokenizer(tok);
  std::ifstream f(kCorpus);
  const SchemaJson corpus = SchemaJson::parse(f);
  ASSERT_GE(corpus.size(), 30u);

  EngineConfig c;
  c.model_dir = demo_model();
  c.numerics = Numerics::Exact;
  c.max_num_seqs = 32;
  c.kv_cache_memory = 256ull << 20;
  c.max_model_len = 4096;
  Engine engine(c, &tok);
  const std::vector<int32_t> prompt = tok.encode("<｜begin▁of▁sentence｜><｜User｜>Use a tool.<｜Assistant｜></think>");

  std::vector<Job> jobs;
  const int n = requests_per_schema();
  const char* only = std::getenv("DSV4_GRAMMAR_ONLY");  // a schema name: just that one (debugging)
  // CI runs every third schema in one form (the model dominates the time); DSV4_GRAMMAR_ALL=1 runs the
  // whole corpus in every form.
  const bool all = std::getenv("DSV4_GRAMMAR_ALL") != nullptr;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const auto& t = corpus[i];
    if (only ? t["name"] != only : !all && i % 3 != 0) continue;
    const ToolDef def{t["name"].get<std::string>(), bound_strings(t["parameters"])};
    const auto& o = corpus[(i + 1) % corpus.size()];
    const ToolDef other = {o["name"].get<std::string>(), bound_strings(o["parameters"])};
    // CI: one form per schema, rotating; the full run: every form.
    const int form = int(i / 3) % 3;
    for (int k = 0; k < n; ++k) {
      if (all || only || form == 0) jobs.push_back({def.name, "json", def.parameters, {}, {}, {}, {}, {}});
      if (all || only || form == 1) jobs.push_back({def.name, "named", {}, {def}, ConstraintSpec::ToolMode::Named, {}, {}, {}});
      if (all || only || form == 2)
        jobs.push_back({def.name, "required", {}, {def, other}, ConstraintSpec::ToolMode::Required, {}, {}, {}});
    }
  }
  std::map<uint64_t, size_t> by_id;
  for (size_t j = 0; j < jobs.size(); ++j) {
    ConstraintSpec spec;
    if (jobs[j].form == "json") {
      spec.kind = ConstraintSpec::Kind::JsonSchema;
      spec.schema = jobs[j].schema;
    } else {
      spec.kind = ConstraintSpec::Kind::ToolCalls;
      spec.tools = jobs[j].tools;
      spec.tool_mode = jobs[j].mode;
      spec.parallel_calls = false;
    }
    SamplingParams p;
    p.temperature = 1.0f;
    p.seed = 1000 + j;
    p.max_tokens = 320;
    p.grammar = compile_constraint(spec, vocab);
    by_id[engine.add_request(prompt, p)] = j;
  }
  int steps = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (engine.has_work()) {
    ++steps;
    for (auto& o : engine.step()) {
      Job& j = jobs[by_id.at(o.id)];
      j.text += o.text;
      if (o.finished()) {
        j.finish = o.finish;
        j.error = o.error;
      }
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  size_t tokens = 0;
  for (const auto& j : jobs) tokens += tok.encode(j.text).size();
  std::printf("%d engine steps in %.1f s (%.1f ms per step), ~%zu output tokens\n", steps, secs, 1e3 * secs / steps, tokens);
  size_t bad = 0;
  for (const auto& j : jobs) {
    const std::string why = check(j);
    if (!why.empty() && ++bad <= 10)
      ADD_FAILURE() << j.schema_name << " (" << j.form << "): " << why << "\n" << SchemaJson(j.text).dump();
  }
  EXPECT_EQ(bad, 0u) << "of " << jobs.size();
  const auto& M = grammar_metrics();
  std::printf("%zu requests; masks: %llu steps, %llu computed, %.3f ms per step\n", jobs.size(),
              (unsigned long long)M.mask_steps.load(), (unsigned long long)M.mask_computed.load(),
              M.mask_steps ? double(M.mask_ns.load()) / 1e6 / double(M.mask_steps.load()) : 0.0);
}

// `auto`: some free content from random logits, then the model opens a block (forced, as record_output),
// then random logits with a pull toward markup tokens write the rest. Whatever comes out must parse without
// a malformed or unfinished call, and every call must validate against its tool's schema.
TEST(StructuredOutput, AutoToolChoiceNeverLeavesMalformedDsml) {
  if (!std::filesystem::exists(kTok)) GTEST_SKIP() << "tokenizer missing (scripts/fetch_tokenizer.sh)";
  const Tokenizer tok = Tokenizer::from_file(kTok);
  auto vocab = Vocabulary::from_tokenizer(tok);
  std::ifstream f(kCorpus);
  const SchemaJson corpus = SchemaJson::parse(f);
  std::vector<ToolDef> tools;
  for (const char* name : {"get_weather", "book_flight", "update_ticket", "TodoWrite"})
    for (const auto& t : corpus)
      if (t["name"] == name) tools.push_back({name, t["parameters"]});
  ConstraintSpec spec;
  spec.kind = ConstraintSpec::Kind::ToolCalls;
  spec.tool_mode = ConstraintSpec::ToolMode::Auto;
  spec.tools = tools;
  auto g = compile_constraint(spec, vocab);
  // The "model": noise plus a pull toward the tokens of well-formed calls (so blocks open and run often).
  std::vector<float> bias(size_t(vocab->size()), 0.0f);
  for (const auto& t : tools)
    for (int32_t id : tok.encode("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + t.name +
                                 "\">\n<｜DSML｜parameter name=\"location\" string=\"true\">Paris</｜DSML｜parameter>\n"
                                 "</｜DSML｜invoke>\n</｜DSML｜tool_calls>"))
      bias[size_t(id)] = 7.0f;
  bias[size_t(Tokenizer::kEos)] = 3.0f;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> noise(bias.size() + 4096);
  for (auto& x : noise) x = normal(rng);
  int blocks = 0, calls = 0, ended = 0;
  const int runs = 12 * requests_per_schema();
  const std::vector<int32_t> open = tok.encode("\n\n<｜DSML｜tool_calls>\n");
  for (int r = 0; r < runs; ++r) {
    SamplingParams p;
    p.seed = uint64_t(r);
    p.grammar = g;
    SamplerState s(p);
    std::string text;
    std::vector<float> logits(bias.size());
    bool eos = false;
    const int content_steps = int(rng() % 8);
    for (int step = 0; step < 400 && !eos; ++step) {
      if (step == content_steps && r % 4 != 3) {  // most runs open a block here
        for (int32_t t : open) {
          s.record_output(t);
          text += vocab->bytes(t);
        }
        continue;
      }
      const size_t off = rng() % 4096;
      for (size_t i = 0; i < logits.size(); ++i) logits[i] = (step > content_steps ? bias[i] : 0.0f) + noise[i + off];
      const int32_t t = s.sample(logits).token;
      eos = t == Tokenizer::kEos;
      if (!eos) text += vocab->bytes(t);
    }
    const ParsedOutput out = parse_output(text, ThinkingMode::Chat, 1);
    EXPECT_FALSE(out.summary.tool_call_malformed) << SchemaJson(text).dump();
    if (eos) {
      ++ended;
      EXPECT_FALSE(out.summary.tool_call_truncated) << SchemaJson(text).dump();
    }
    blocks += text.find("\n\n<｜DSML｜tool_calls") != std::string::npos;
    for (const auto& c : out.tool_calls) {
      ++calls;
      const ToolDef* t = nullptr;
      for (const auto& d : tools)
        if (d.name == c.name) t = &d;
      ASSERT_NE(t, nullptr) << c.name;
      const auto args = SchemaJson::parse(c.arguments);
      EXPECT_EQ(schema_test::validate(args, t->parameters, t->parameters), "") << c.arguments;
    }
  }
  std::printf("auto: %d runs, %d ended by EOS, %d opened a block, %d complete calls\n", runs, ended, blocks, calls);
  EXPECT_GT(blocks, 0);
}

// Preemption by recompute keeps the request's SamplerState, so its grammar position survives: under a KV
// budget that forces preemption, greedy constrained requests produce exactly what they produce alone.
TEST(StructuredOutput, PreemptedRequestsKeepTheirGrammarState) {
  if (!std::filesystem::exists(kTok)) GTEST_SKIP() << "tokenizer missing (scripts/fetch_tokenizer.sh)";
  const Tokenizer tok = Tokenizer::from_file(kTok);
  auto vocab = Vocabulary::from_tokenizer(tok);
  ConstraintSpec spec;
  spec.kind = ConstraintSpec::Kind::JsonSchema;
  spec.schema = SchemaJson::parse(R"({"type":"object","properties":{"city":{"type":"string","maxLength":12},
    "days":{"type":"array","items":{"type":"integer","minimum":0,"maximum":99},"maxItems":6}},"required":["city","days"],
    "additionalProperties":false})");
  auto g = compile_constraint(spec, vocab);
  EngineConfig c;
  c.model_dir = demo_model();
  c.numerics = Numerics::Exact;
  c.max_num_seqs = 4;
  c.max_model_len = 1024;
  c.kv_cache_memory = 64ull << 20;
  EngineStats ps;
  {
    Engine probe(c, &tok);
    ps = probe.stats();
  }
  auto prompt = [&](int i) {
    std::vector<int32_t> p = tok.encode("<｜begin▁of▁sentence｜><｜User｜>");
    while (p.size() < size_t(244 + 2 * i)) p.push_back(int32_t(1000 + (p.size() * 7 + size_t(i)) % 5000));
    return p;
  };
  auto params = [&] {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = 120;
    p.grammar = g;
    return p;
  };
  auto run = [&](Engine& e, std::vector<int> which) {
    std::map<uint64_t, int> id;
    for (int i : which) id[e.add_request(prompt(i), params())] = i;
    std::map<int, std::string> text;
    while (e.has_work())
      for (auto& o : e.step()) text[id.at(o.id)] += o.text;
    return text;
  };
  std::map<int, std::string> alone;
  {
    Engine e(c, &tok);
    for (int i = 0; i < 6; ++i) alone[i] = run(e, {i})[i];
  }
  c.kv_cache_memory = 4 * ps.bytes_per_sequence + 6 * ps.bytes_per_block;
  Engine e(c, &tok);
  auto together = run(e, {0, 1, 2, 3, 4, 5});
  EXPECT_GT(e.stats().preemptions, 0u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(together[i], alone[i]) << "request " << i;
    const auto v = SchemaJson::parse(together[i], nullptr, false);
    EXPECT_FALSE(v.is_discarded()) << together[i];
    if (!v.is_discarded()) {
      EXPECT_EQ(schema_test::validate(v, spec.schema, spec.schema), "") << together[i];
    }
  }
}
