// The output constraints the server asks for, as complete grammars over DeepSeek-V4's output text:
//   JsonObject   any JSON object (response_format {type: json_object})
//   JsonSchema   a value of the schema (response_format json_schema, Responses text.format)
//   ToolCalls    a DSML tool-call block whose calls name the given tools with arguments that match their
//                parameter schemas (tokenizer/dsml_parser.h reads it back):
//                  Required  the block only (one or more calls; exactly one without parallel_calls)
//                  Named     the block with exactly one call of the one tool given
//                  Auto      free content (never containing the block marker) then optionally the block:
//                            once the model opens a block, its markup and arguments follow the schemas.
// In thinking mode every grammar starts with free reasoning text closed by `</think>`. After the last
// byte only end tokens (EOS) may follow. Compiled grammars are cached by their spec (LRU).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "runtime/grammar/json_schema.h"
#include "runtime/grammar/matcher.h"

namespace dsv4::grammar {

struct ToolDef {
  std::string name;
  SchemaJson parameters;  // null = no parameters
};

struct ConstraintSpec {
  enum class Kind { JsonObject, JsonSchema, ToolCalls };
  enum class ToolMode { Auto, Required, Named };
  Kind kind = Kind::JsonObject;
  SchemaJson schema;           // JsonSchema
  std::vector<ToolDef> tools;  // ToolCalls
  ToolMode tool_mode = ToolMode::Auto;
  bool parallel_calls = true;  // false (parallel_tool_calls: false): at most one call per block
  bool thinking = false;       // reasoning (up to `</think>`) comes first
  std::string key() const;     // canonical, for the cache
  std::string describe() const;
};

// Throws dsv4::Error for unsupported schemas (message names the keyword and its path).
Grammar build_grammar(const ConstraintSpec& spec);
std::shared_ptr<const CompiledGrammar> compile_constraint(const ConstraintSpec& spec,
                                                          std::shared_ptr<const Vocabulary> vocab);

}  // namespace dsv4::grammar
