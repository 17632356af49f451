// Each command family registers its subcommands on the one CLI11 app (src/cli/main.cpp calls these).
#pragma once
#include <CLI/CLI.hpp>

namespace dsv4::cli {
void add_model_commands(CLI::App& app);      // score, generate, inspect (model_commands.cpp)
void add_tokenizer_commands(CLI::App& app);  // tokenize, detokenize, encode-chat, parse-completion
void add_make_tiny_command(CLI::App& app);   // make-tiny (make_tiny_command.cpp)
void add_serve_command(CLI::App& app);       // serve (serve_command.cpp)
void add_expert_load_command(CLI::App& app); // expert-load (expert_load_command.cpp)
}  // namespace dsv4::cli
