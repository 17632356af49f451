// dsv4 tokenize | detokenize | encode-chat: the tokenizer and the DeepSeek-V4 prompt encoder from the shell.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/chat_encoding.h"
#include "tokenizer/dsml_parser.h"
#include "tokenizer/tokenizer.h"

namespace dsv4::cli {

namespace {

// --tokenizer takes tokenizer.json itself or a model directory holding one.
Tokenizer load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (fs::is_directory(p)) p /= "tokenizer.json";
  if (!fs::exists(p)) fail("tokenizer file '{}' does not exist", p.string());
  return Tokenizer::from_file(p.string());
}

std::string read_all(const std::string& path) {
  if (path == "-") {
    std::stringstream ss;
    ss << std::cin.rdbuf();
    return ss.str();
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open '{}'", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write(std::string_view s) { std::fwrite(s.data(), 1, s.size(), stdout); }

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s + "]";
}

// "1 2 3", "1,2,3" or "[1, 2, 3]".
std::vector<int32_t> parse_ids(const std::string& text, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(cur.c_str(), &end, 10);
    if (!end || *end || errno) fail("--ids: '{}' is not an integer token id", cur);
    if (!tok.is_token(int32_t(v)) || v != int32_t(v))
      fail("--ids: token id {} is not in the vocabulary (size {})", cur, tok.vocab_size());
    ids.push_back(int32_t(v));
    cur.clear();
  };
  for (char c : text) {
    if (c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']') flush();
    else cur += c;
  }
  flush();
  return ids;
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("tokenize", "Token ids of text, as a JSON array per input");
    auto tok_path = std::make_shared<std::string>();
    auto text = std::make_shared<std::string>();
    auto jsonl = std::make_shared<std::string>();
    cmd->add_option("--tokenizer", *tok_path, "tokenizer.json, or a model directory holding it")->required();
    auto* t = cmd->add_option("--text", *text, "the text (bytes as given)");
    auto* j = cmd->add_option("--jsonl", *jsonl, "file with one JSON string per line ('-' = stdin); one output line each");
    t->excludes(j);
    cmd->callback([=] {
      if (cmd->count("--text") == 0 && cmd->count("--jsonl") == 0) fail("tokenize: give --text or --jsonl");
      const Tokenizer tok = load_tokenizer(*tok_path);
      if (cmd->count("--text")) {
        write(ids_json(tok.encode(*text)) + "\n");
        return;
      }
      std::istringstream in(read_all(*jsonl));
      std::string line, out;
      std::vector<int32_t> ids;
      for (size_t n = 1; std::getline(in, line); ++n) {
        nlohmann::json s;
        try {
          s = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception&) {
          fail("{}:{}: not a JSON string", *jsonl, n);
        }
        if (!s.is_string()) fail("{}:{}: not a JSON string", *jsonl, n);
        ids.clear();
        tok.encode_append(s.get_ref<const std::string&>(), ids);
        out = ids_json(ids);
        out += '\n';
        write(out);
      }
    });
  }
  {
    auto* cmd = app.add_subcommand("detokenize", "Text of token ids (raw bytes, then a newline)");
    auto tok_path = std::make_shared<std::string>();
    auto ids = std::make_shared<std::string>();
    auto skip = std::make_shared<bool>(false);
    auto as_json = std::make_shared<bool>(false);
    cmd->add_option("--tokenizer", *tok_path, "tokenizer.json, or a model directory holding it")->required();
    cmd->add_option("--ids", *ids, "token ids: \"1 2 3\", \"1,2,3\" or \"[1,2,3]\"")->required();
    cmd->add_flag("--skip-special-tokens", *skip, "drop control tokens (<｜…｜>, <think>, ｜DSML｜, …)");
    cmd->add_flag("--json", *as_json, "print a JSON string (invalid UTF-8 replaced by U+FFFD) instead of raw bytes");
    cmd->callback([=] {
      const Tokenizer tok = load_tokenizer(*tok_path);
      const std::string text = tok.decode(parse_ids(*ids, tok), *skip);
      if (*as_json)
        write(nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
      else
        write(text + "\n");
    });
  }
  {
    auto* cmd = app.add_subcommand("encode-chat", "DeepSeek-V4 prompt text of a chat request (encoding_dsv4)");
    auto request = std::make_shared<std::string>();
    auto mode = std::make_shared<std::string>();
    auto effort = std::make_shared<std::string>();
    auto keep = std::make_shared<bool>(false);
    auto tok_path = std::make_shared<std::string>();
    cmd->add_option("--request", *request,
                    "JSON file ('-' = stdin): a messages array, or {messages, tools, response_format, thinking_mode, "
                    "reasoning_effort}")
        ->required();
    cmd->add_option("--thinking-mode", *mode, "chat | thinking (default: the request's, else chat)")
        ->check(CLI::IsMember({"chat", "thinking"}));
    cmd->add_option("--reasoning-effort", *effort, "high | max (default: the request's, else none)")
        ->check(CLI::IsMember({"none", "high", "max"}));
    cmd->add_flag("--keep-thinking", *keep, "do not drop the reasoning of earlier turns (drop_thinking=False)");
    cmd->add_option("--tokenizer", *tok_path, "print the prompt's token ids (JSON array) instead of its text");
    cmd->callback([=] {
      nlohmann::ordered_json req;
      try {
        req = nlohmann::ordered_json::parse(read_all(*request));
      } catch (const nlohmann::json::exception& e) {
        fail("{}: not valid JSON: {}", *request, e.what());
      }
      ChatRequest r = parse_chat_request(req);
      if (!mode->empty()) r.options.thinking_mode = parse_thinking_mode(*mode);
      if (!effort->empty()) r.options.reasoning_effort = parse_reasoning_effort(*effort);
      if (*keep) r.options.drop_thinking = false;
      const std::string prompt = encode_chat_messages(r.messages, r.options);
      if (tok_path->empty()) {
        write(prompt);  // exactly the prompt: no trailing newline
      } else {
        write(ids_json(load_tokenizer(*tok_path).encode(prompt)) + "\n");
      }
    });
  }
  {
    auto* cmd = app.add_subcommand("parse-completion",
                                   "The assistant message the DeepSeek-V4 output parser makes of a raw completion "
                                   "(the counterpart of encode-chat): {role, content, reasoning_content, tool_calls}");
    auto completion = std::make_shared<std::string>();
    auto mode = std::make_shared<std::string>("chat");
    auto tools = std::make_shared<std::string>();
    cmd->add_option("--completion", *completion,
                    "the generated text ('-' = stdin), special tokens kept; a trailing <｜end▁of▁sentence｜> is "
                    "the end of output")
        ->required();
    cmd->add_option("--thinking-mode", *mode, "chat | thinking (thinking: reasoning up to </think>)")
        ->check(CLI::IsMember({"chat", "thinking"}))
        ->capture_default_str();
    cmd->add_option("--tools", *tools,
                    "JSON file: the request's tools (OpenAI shape); calls to a tool not listed are reported on stderr "
                    "and make the exit status 2");
    cmd->callback([=] {
      std::string text = read_all(*completion);
      constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
      if (text.size() >= kEos.size() && text.compare(text.size() - kEos.size(), kEos.size(), kEos) == 0)
        text.resize(text.size() - kEos.size());
      std::vector<std::string> known;
      if (!tools->empty()) {
        nlohmann::json tj;
        try {
          tj = nlohmann::json::parse(read_all(*tools));
        } catch (const nlohmann::json::exception& e) {
          fail("{}: not valid JSON: {}", *tools, e.what());
        }
        if (tj.is_object() && tj.contains("tools")) tj = tj["tools"];
        if (!tj.is_array()) fail("{}: expected an array of tools (or {{\"tools\": [...]}})", *tools);
        for (const auto& t : tj) {
          const auto& f = t.contains("function") ? t["function"] : t;
          if (!f.is_object() || !f.contains("name") || !f["name"].is_string())
            fail("{}: every tool needs a function name", *tools);
          known.push_back(f["name"].get<std::string>());
        }
      }
      const ParsedOutput r = parse_output(text, parse_thinking_mode(*mode));
      nlohmann::ordered_json msg = {{"role", "assistant"}, {"content", r.content}};
      msg["reasoning_content"] = r.reasoning.empty() && !r.summary.reasoning_ended ? nlohmann::ordered_json(nullptr)
                                                                                    : nlohmann::ordered_json(r.reasoning);
      nlohmann::ordered_json calls = nlohmann::ordered_json::array();
      bool unknown = false;
      for (const auto& c : r.tool_calls) {
        calls.push_back({{"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
        if (!tools->empty() && std::find(known.begin(), known.end(), c.name) == known.end()) {
          std::fprintf(stderr, "warning: tool call to '%s', which is not in %s\n", c.name.c_str(), tools->c_str());
          unknown = true;
        }
      }
      msg["tool_calls"] = std::move(calls);
      if (r.summary.tool_call_malformed)
        std::fprintf(stderr, "warning: a tool-call block breaks the DSML grammar; its text is content\n");
      if (r.summary.tool_call_truncated)
        std::fprintf(stderr, "warning: the completion ends inside a tool-call block; its text is content\n");
      write(msg.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
      if (unknown) throw CLI::RuntimeError(2);
    });
  }
}

}  // namespace dsv4::cli
