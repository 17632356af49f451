// dsv4 make-tiny: writes the tiny demo model (official checkpoint format, real tokenizer vocabulary).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "model/tiny_checkpoint.h"

namespace dsv4::cli {

void add_make_tiny_command(CLI::App& app) {
  struct Opts {
    std::string out, tokenizer;
    uint64_t seed = kTinyDemoSeed;
    double route_skew = 0;
    bool dspark = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("make-tiny",
                                 "Write a tiny random DeepSeek-V4 model in the official checkpoint format (the demo "
                                 "model of `dsv4 serve`)");
  cmd->add_option("--out", o->out, "output directory (created if missing; existing files are replaced)")->required();
  cmd->add_option("--seed", o->seed, "random seed (the same seed gives byte-identical files)")
      ->capture_default_str();
  cmd->add_option("--route-skew", o->route_skew,
                  "skewed routing: a few experts of each layer take most tokens (e.g. 2; 0: uniform)")
      ->capture_default_str();
  cmd->add_flag("--dspark", o->dspark,
                "a 0731-style checkpoint: a 3-stage DSpark block drafter (mtp.0..2, spec 7.1) instead of the MTP layer "
                "(serve it with --speculative-config '{\"method\": \"dspark\"}')");
  cmd->add_option("--tokenizer", o->tokenizer,
                  "tokenizer.json to copy into the model directory (default: <dsv4 dir>/../assets/tokenizer/"
                  "tokenizer.json, skipped with a warning when absent)");
  cmd->callback([o] {
    std::string tok = o->tokenizer;
    if (tok.empty()) {
      tok = default_tokenizer_json();
      if (tok.empty())
        spdlog::warn("make-tiny: no tokenizer.json next to the binary (../assets/tokenizer/tokenizer.json); the model "
                     "directory will have none (run scripts/fetch_tokenizer.sh, or pass --tokenizer)");
    }
    auto t0 = std::chrono::steady_clock::now();
    if (o->route_skew < 0) fail("--route-skew must be >= 0");
    make_tiny_checkpoint(o->out, o->seed, tok, o->route_skew, o->dspark);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::error_code ec;
    auto bytes = std::filesystem::file_size(std::filesystem::path(o->out) / "model.safetensors", ec);
    std::fprintf(stderr, "wrote %s (seed %llu, model.safetensors %.1f MB%s) in %.2f s\n", o->out.c_str(),
                (unsigned long long)o->seed, ec ? 0.0 : double(bytes) / 1e6, tok.empty() ? ", no tokenizer" : "",
                s);
  });
}

}  // namespace dsv4::cli
