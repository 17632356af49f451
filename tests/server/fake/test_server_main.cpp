// dsv4-test-server: `dsv4 serve` (the same flags, the same HTTP stack and request handling) whose tokens come
// from a ScriptedGenerator instead of the model, for tests and external client checks of output a random
// demo model never produces (reasoning, tool calls). Test-only: the product binary has no such mode.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/serve_command.h"
#include "core/error.h"
#include "core/log.h"
#include "fake/scripted_generator.h"

int main(int argc, char** argv) {
  dsv4::init_logging();
  CLI::App app{"dsv4-test-server: dsv4 serve with scripted replies instead of a model (testing only)"};
  dsv4::cli::ServeOpts o;
  std::string script;
  dsv4::cli::add_serve_options(app, o);
  app.add_option("--scripted-output", script,
                 "JSON replies: {\"replies\": [{\"when\": \"prompt substring\", \"text\": \"...\"}], "
                 "\"token_delay_ms\": 2}")
      ->required();
  try {
    app.parse(argc, argv);
    dsv4::cli::run_serve(o, [&](const dsv4::cli::ServeSetup& s) {
      spdlog::warn("replaying {} instead of running the model (test server)", script);
      const int64_t len = s.engine.max_model_len > 0 ? s.engine.max_model_len : 65536;
      return dsv4::server::ScriptedGenerator::from_file(script, s.tok, len);
    });
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv4::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
