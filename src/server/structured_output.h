// Structured outputs in the server: a request's ConstraintSpec (chat_prompt.h) compiled against the
// tokenizer's vocabulary (runtime/grammar/structured.h, cached) into the request's SamplingParams. An
// unsupported schema is a 400 naming the keyword. `auto` tool-call grammars apply unless
// `--auto-tool-grammar off`.
#pragma once
#include <optional>
#include <string>

#include "runtime/grammar/structured.h"
#include "runtime/sampler.h"
#include "server/server_context.h"

namespace dsv4::server {

// `keep_markers`: the text the client gets keeps special tokens (chat output; completions with
// skip_special_tokens false), so `</think>` and `｜DSML｜` may be sampled as tokens.
void apply_constraint(ServerContext& ctx, const std::optional<grammar::ConstraintSpec>& spec, const std::string& param,
                      bool keep_markers, SamplingParams& params);

}  // namespace dsv4::server
