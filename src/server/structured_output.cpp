#include "server/structured_output.h"

#include <mutex>

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
  } catch (const Error& e) {
    throw ApiError(400, e.what(), param);
  }
}

}  // namespace dsv4::server
