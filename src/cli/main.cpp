// dsv4: one binary for serving, scoring and inspecting DeepSeek-V4 models.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "cli/parallel.h"
#include "core/error.h"
#include "core/log.h"
#include "runtime/rank_identity.h"

int main(int argc, char** argv) {
  dsv4::init_logging();
  CLI::App app{"dsv4 — DeepSeek-V4 inference engine"};
  app.set_version_flag("--version", std::string("dsv4 ") + dsv4::dsv4_version());
  app.require_subcommand(1);
  dsv4::cli::add_model_commands(app);
  dsv4::cli::add_make_tiny_command(app);
  dsv4::cli::add_serve_command(app);
  dsv4::cli::add_expert_load_command(app);
  dsv4::cli::add_rank_worker_command(app);
  dsv4::cli::add_tokenizer_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv4::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
