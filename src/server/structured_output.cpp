#include "server/structured_output.h"

#include <spdlog/spdlog.h>

#include <mutex>
#include <set>

#include "core/error.h"
#include "server/api_error.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server {

namespace {
// One trie per tokenizer and marker policy, built on first use (a few hundred ms for 129K tokens).
std::shared_ptr<const grammar::Vocabulary> vocabulary(const Tokenizer& tok, bool keep_markers) {
  static std::mutex mu;
  static const Tokenizer* owner = nullptr;
  static std::shared_ptr<const grammar::Vocabulary> v[2];
  std::lock_guard<std::mutex> lk(mu);
  if (owner != &tok) {
    v[0] = v[1] = nullptr;
    owner = &tok;
  }
  auto& slot = v[keep_markers ? 1 : 0];
  if (!slot) slot = grammar::Vocabulary::from_tokenizer(tok, keep_markers);
  return slot;
}
}  // namespace

void apply_constraint(ServerContext& ctx, const std::optional<grammar::ConstraintSpec>& spec, const std::string& param,
                      bool keep_markers, SamplingParams& params) {
  if (!spec) return;
  if (spec->kind == grammar::ConstraintSpec::Kind::ToolCalls && spec->tool_mode == grammar::ConstraintSpec::ToolMode::Auto &&
      !ctx.opt.auto_tool_grammar)
    return;
  try {
    params.grammar = grammar::compile_constraint(*spec, vocabulary(ctx.tok, keep_markers));
    return;
  } catch (const Error& e) {
    if (spec->kind != grammar::ConstraintSpec::Kind::ToolCalls || spec->tool_mode != grammar::ConstraintSpec::ToolMode::Auto)
      throw ApiError(400, e.what(), param);
  }
  // tool_choice "auto" is the agents' everyday request, whose tool sets use keywords this compiler does not
  // enforce: a tool whose schema cannot be compiled keeps the structural constraint (a well-formed call, its
  // arguments any JSON object) instead of failing the request; required/named choices and response_format refuse.
  // The compiler's message names the tool ("tools[NAME]..."): relax that one and compile again.
  grammar::ConstraintSpec relaxed = *spec;
  for (size_t round = 0; round <= relaxed.tools.size(); ++round) {
    try {
      params.grammar = grammar::compile_constraint(relaxed, vocabulary(ctx.tok, keep_markers));
      return;
    } catch (const Error& e) {
      const std::string msg = e.what();
      const size_t a = msg.find("tools["), b = a == std::string::npos ? a : msg.find(']', a);
      grammar::ToolDef* bad = nullptr;
      if (b != std::string::npos)
        for (auto& t : relaxed.tools)
          if (t.name == msg.substr(a + 6, b - a - 6)) bad = &t;
      if (!bad || bad->parameters == grammar::SchemaJson{{"type", "object"}}) throw ApiError(400, msg, param);
      static std::mutex mu;
      static std::set<std::string> warned;
      {
        std::lock_guard<std::mutex> lk(mu);
        if (warned.size() < 4096 && warned.insert(bad->name).second)
          spdlog::warn("tool '{}': its arguments are not schema-constrained under tool_choice auto ({}); the call's "
                       "DSML structure still is",
                       bad->name, msg);
      }
      bad->parameters = grammar::SchemaJson{{"type", "object"}};
    }
  }
  throw ApiError(400, "tool schemas could not be compiled", param);
}

}  // namespace dsv4::server
