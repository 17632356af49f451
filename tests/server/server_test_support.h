// Shared by the server tests: the real tokenizer (tests skip without it) and a scripted generator context.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "fake/scripted_generator.h"
#include "server/server_context.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::server::testing {

inline const Tokenizer* tokenizer() {
  static const std::unique_ptr<Tokenizer> tok = []() -> std::unique_ptr<Tokenizer> {
    const std::string p = std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json";
    if (!std::filesystem::exists(p)) return nullptr;
    return std::make_unique<Tokenizer>(Tokenizer::from_file(p));
  }();
  return tok.get();
}

#define DSV4_NEED_TOKENIZER()                \
  if (!::dsv4::server::testing::tokenizer()) \
  GTEST_SKIP() << "assets/tokenizer/tokenizer.json missing (scripts/fetch_tokenizer.sh)"

// A context whose generator answers every prompt with `reply`.
struct Scripted {
  explicit Scripted(const std::string& reply, int delay_ms = 0, ServerOptions opt = {})
      : generator(*tokenizer(), {{"", reply}}, 4096, std::chrono::milliseconds(delay_ms)),
        ctx(std::move(opt), *tokenizer(), generator) {}
  ScriptedGenerator generator;
  ServerContext ctx;
};

inline const char* kToolCallText =
    "Let me check.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

}  // namespace dsv4::server::testing
