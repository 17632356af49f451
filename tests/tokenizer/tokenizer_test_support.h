// Shared by the tokenizer tests: the real tokenizer (loaded once) and the golden cases.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace dsv4::test {

inline std::string tokenizer_json_path() { return std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json"; }

// nullptr when scripts/fetch_tokenizer.sh has not been run.
inline const Tokenizer* real_tokenizer() {
  static const Tokenizer* tok = [] () -> const Tokenizer* {
    if (!std::filesystem::exists(tokenizer_json_path())) return nullptr;
    return new Tokenizer(Tokenizer::from_file(tokenizer_json_path()));
  }();
  return tok;
}

#define DSV4_REQUIRE_TOKENIZER(var)                                                          \
  const ::dsv4::Tokenizer* var##_ptr = ::dsv4::test::real_tokenizer();                       \
  if (!var##_ptr) GTEST_SKIP() << "no " << ::dsv4::test::tokenizer_json_path()              \
                               << " (run scripts/fetch_tokenizer.sh)";                      \
  const ::dsv4::Tokenizer& var = *var##_ptr

struct GoldenCase {
  std::string cat, text;
  std::vector<int32_t> ids;
};

struct GoldenFile {
  nlohmann::json header;
  std::vector<GoldenCase> cases;
};

inline const GoldenFile& golden_cases() {
  static const GoldenFile g = [] {
    GoldenFile f;
    std::ifstream in(std::string(DSV4_SOURCE_DIR) + "/tests/tokenizer/data/golden_cases.jsonl");
    std::string line;
    bool first = true;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line);
      if (first) {
        f.header = j;
        first = false;
        continue;
      }
      f.cases.push_back({j.at("cat").get<std::string>(), j.at("text").get<std::string>(),
                         j.at("ids").get<std::vector<int32_t>>()});
    }
    return f;
  }();
  return g;
}

}  // namespace dsv4::test
