#include "runtime/grammar/structured.h"

#include <chrono>
#include <list>
#include <mutex>
#include <unordered_map>

#include "core/error.h"

namespace dsv4::grammar {

namespace {
constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kBlockStart = "\n\n<｜DSML｜tool_calls";  // the output parser's marker
constexpr size_t kCacheSize = 64;
}  // namespace

std::string ConstraintSpec::key() const {
  SchemaJson k = {{"kind", int(kind)}, {"mode", int(tool_mode)}, {"thinking", thinking}, {"parallel", parallel_calls},
                  {"schema", schema}};
  SchemaJson t = SchemaJson::array();
  for (const auto& d : tools) t.push_back({d.name, d.parameters});
  k["tools"] = std::move(t);
  return k.dump(-1, ' ', false, SchemaJson::error_handler_t::replace);
}

std::string ConstraintSpec::describe() const {
  switch (kind) {
    case Kind::JsonObject: return "json_object";
    case Kind::JsonSchema: return "json_schema";
    case Kind::ToolCalls:
      return tool_mode == ToolMode::Auto ? "tool_calls(auto)" : tool_mode == ToolMode::Required ? "tool_calls(required)"
                                                                                                 : "tool_calls(named)";
  }
  return "";
}

Grammar build_grammar(const ConstraintSpec& spec) {
  GrammarBuilder b;
  std::vector<Frag> parts;
  if (spec.thinking) parts.push_back(b.seq({text_avoiding(b, kThinkEnd), b.literal(kThinkEnd)}));
  switch (spec.kind) {
    case ConstraintSpec::Kind::JsonObject: {
      SchemaCompiler c(b, spec.schema);
      parts.push_back(c.json(SchemaJson{{"type", "object"}}));
      break;
    }
    case ConstraintSpec::Kind::JsonSchema: {
      SchemaCompiler c(b, spec.schema);
      parts.push_back(c.json(spec.schema));
      break;
    }
    case ConstraintSpec::Kind::ToolCalls: {
      DSV4_CHECK(!spec.tools.empty(), "tool-call grammar without tools");
      if (spec.tool_mode == ConstraintSpec::ToolMode::Named)
        DSV4_CHECK(spec.tools.size() == 1, "a named tool choice keeps exactly one tool");
      std::vector<Frag> invokes;
      for (const auto& t : spec.tools) {
        if (t.name.find('"') != std::string::npos || t.name.find('\n') != std::string::npos)
          fail("tool name {} cannot be written in DSML", SchemaJson(t.name).dump());
        SchemaCompiler c(b, t.parameters, TextOptions{true});
        const std::string path = "tools[" + t.name + "].parameters";
        invokes.push_back(b.seq({b.literal("<｜DSML｜invoke name=\"" + t.name + "\">\n"), c.dsml_parameters(t.parameters, path),
                                 b.literal("</｜DSML｜invoke>\n")}));
      }
      Frag one = b.alt(invokes);
      Frag calls = spec.tool_mode == ConstraintSpec::ToolMode::Named || !spec.parallel_calls ? one : b.plus(one);
      Frag block = b.seq({b.literal(std::string(kBlockStart) + ">\n"), calls, b.literal("</｜DSML｜tool_calls>")});
      if (spec.tool_mode == ConstraintSpec::ToolMode::Auto) {
        parts.push_back(text_avoiding(b, kBlockStart));
        parts.push_back(b.opt(block));
      } else {
        parts.push_back(block);
      }
      break;
    }
  }
  return b.finish(b.seq(parts));
}

std::shared_ptr<const CompiledGrammar> compile_constraint(const ConstraintSpec& spec,
                                                          std::shared_ptr<const Vocabulary> vocab) {
  static std::mutex mu;
  static std::list<std::pair<std::string, std::shared_ptr<const CompiledGrammar>>> lru;
  static std::unordered_map<std::string, decltype(lru)::iterator> index;
  const std::string key = std::to_string(reinterpret_cast<uintptr_t>(vocab.get())) + "|" + spec.key();
  {
    std::lock_guard<std::mutex> lk(mu);
    auto it = index.find(key);
    if (it != index.end()) {
      lru.splice(lru.begin(), lru, it->second);
      return it->second->second;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto g = std::make_shared<const CompiledGrammar>(build_grammar(spec), std::move(vocab), spec.describe());
  auto& M = grammar_metrics();
  M.compile_ns.fetch_add(uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                      std::chrono::steady_clock::now() - t0).count()));
  M.compiles.fetch_add(1);
  std::lock_guard<std::mutex> lk(mu);
  auto it = index.find(key);
  if (it != index.end()) return it->second->second;
  lru.emplace_front(key, g);
  index[key] = lru.begin();
  if (lru.size() > kCacheSize) {
    index.erase(lru.back().first);
    lru.pop_back();
  }
  return g;
}

}  // namespace dsv4::grammar
