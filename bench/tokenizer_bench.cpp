// Tokenizer throughput: our encode/decode against HF's own `tokenizers` (npm, Rust core) on the same machine,
// the same input and in the same run. The corpus is fixed mixed text (the golden cases: English, Chinese,
// Japanese, code, emoji, numbers, whitespace, special tokens; then the shared spec and Python tools), repeated
// to the requested size and cut into ~4 KB documents at line ends; both sides encode each document with its
// own call.
//
//   tokenizer_bench [--tokenizer PATH] [--mb N] [--npm-script PATH] [--no-npm]   (run from the repository root)
// Results go to docs/perf-notes.md ("## Tokenizer").
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string build_corpus(const fs::path& source_dir, size_t target) {  // deterministic
  std::string unique;
  std::ifstream golden(source_dir / "tests/tokenizer/data/golden_cases.jsonl");
  std::string line;
  bool header = true;
  while (std::getline(golden, line)) {
    if (header) {
      header = false;
      continue;
    }
    unique += nlohmann::json::parse(line).at("text").get<std::string>();
    unique += '\n';
  }
  std::vector<fs::path> files;
  const fs::path shared = fs::path(DSV4_SHARED_DIR);
  for (const char* f : {"spec/dsv4-architecture.md", "spec/dependencies.md", "spec/anchors.md", "tools/dsv4_ref.py",
                        "tools/make_golden.py"})
    if (fs::exists(shared / f)) files.push_back(shared / f);
  std::sort(files.begin(), files.end());
  for (const auto& f : files) unique += read_file(f);
  if (unique.empty()) dsv4::fail("no corpus text found under {}", source_dir.string());
  std::string corpus;
  while (corpus.size() < target) corpus += unique;
  std::printf("corpus: %.2f MB (%.2f MB unique text, repeated)\n", corpus.size() / 1e6, unique.size() / 1e6);
  return corpus;
}

std::vector<std::string_view> documents(const std::string& corpus) {
  std::vector<std::string_view> docs;
  size_t pos = 0;
  while (pos < corpus.size()) {
    size_t end = std::min(corpus.size(), pos + 4096);
    const size_t nl = corpus.find('\n', end);
    end = nl == std::string::npos ? corpus.size() : nl + 1;
    docs.emplace_back(corpus.data() + pos, end - pos);
    pos = end;
  }
  return docs;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  // The repository: the working directory when run from it, else the sibling of ../shared named main.
  fs::path source_dir = fs::current_path();
  if (!fs::exists(source_dir / "tests/tokenizer/data/golden_cases.jsonl"))
    source_dir = fs::path(DSV4_SHARED_DIR).parent_path() / "main";
  std::string tok_path = (source_dir / "assets/tokenizer/tokenizer.json").string();
  std::string npm_script = (source_dir / "tests/tokenizer/gen/bench_npm.js").string();
  double mb = 4;
  bool npm = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokenizer" && i + 1 < argc) tok_path = argv[++i];
    else if (a == "--mb" && i + 1 < argc) mb = std::atof(argv[++i]);
    else if (a == "--npm-script" && i + 1 < argc) npm_script = argv[++i];
    else if (a == "--no-npm") npm = false;
    else if (a == "--help" || a == "-h") {
      std::printf("usage: tokenizer_bench [--tokenizer PATH] [--mb N] [--npm-script PATH] [--no-npm]\n");
      return 0;
    } else {
      std::fprintf(stderr, "usage: tokenizer_bench [--tokenizer PATH] [--mb N] [--npm-script PATH] [--no-npm]\n");
      return 2;
    }
  }
  if (!(mb > 0)) {
    std::fprintf(stderr, "tokenizer_bench: --mb must be a positive number\n");
    return 2;
  }
  try {
    auto t0 = Clock::now();
    const dsv4::Tokenizer tok = dsv4::Tokenizer::from_file(tok_path);
    std::printf("load: %.3f s\n", seconds_since(t0));
    const std::string corpus = build_corpus(source_dir, size_t(mb * 1e6));
    const auto docs = documents(corpus);
    const fs::path corpus_file = fs::temp_directory_path() / "dsv4_tokenizer_bench_corpus.txt";
    std::ofstream(corpus_file, std::ios::binary) << corpus;

    std::vector<std::vector<int32_t>> ids(docs.size());
    size_t n_tokens = 0;
    double cold = 0, best = 1e9;
    for (int pass = 0; pass < 4; ++pass) {
      t0 = Clock::now();
      n_tokens = 0;
      for (size_t d = 0; d < docs.size(); ++d) {
        ids[d].clear();
        tok.encode_append(docs[d], ids[d]);
        n_tokens += ids[d].size();
      }
      const double s = seconds_since(t0);
      if (pass == 0) cold = s;
      best = std::min(best, s);
    }
    const double mbs = corpus.size() / 1e6;
    std::printf("ours  encode, 1 thread : %7.1f MB/s  (first pass %.1f MB/s), %zu docs, %zu tokens\n", mbs / best,
                mbs / cold, docs.size(), n_tokens);

    const unsigned nthreads = std::max(2u, std::thread::hardware_concurrency());
    double best_mt = 1e9;
    for (int pass = 0; pass < 3; ++pass) {
      t0 = Clock::now();
      std::vector<std::thread> th;
      for (unsigned t = 0; t < nthreads; ++t)
        th.emplace_back([&, t] {
          std::vector<int32_t> v;
          for (size_t d = t; d < docs.size(); d += nthreads) {
            v.clear();
            tok.encode_append(docs[d], v);
          }
        });
      for (auto& x : th) x.join();
      best_mt = std::min(best_mt, seconds_since(t0));
    }
    std::printf("ours  encode, %u threads: %7.1f MB/s\n", nthreads, mbs / best_mt);

    double best_dec = 1e9;
    std::string out;
    for (int pass = 0; pass < 3; ++pass) {
      t0 = Clock::now();
      for (const auto& v : ids) {
        out.clear();
        for (int32_t id : v) tok.decode_append(id, out);
      }
      best_dec = std::min(best_dec, seconds_since(t0));
    }
    std::printf("ours  decode, 1 thread : %7.1f MB/s\n", mbs / best_dec);

    if (npm) {
      if (!fs::exists(npm_script) || !fs::exists(fs::path(npm_script).parent_path() / "node_modules/tokenizers")) {
        std::printf("npm tokenizers: skipped (run `npm ci` in %s)\n", fs::path(npm_script).parent_path().c_str());
        return 0;
      }
      const std::string cmd = "node '" + npm_script + "' '" + corpus_file.string() + "' '" + tok_path + "'";
      FILE* p = popen(cmd.c_str(), "r");
      std::string res;
      char buf[4096];
      while (p && fgets(buf, sizeof buf, p)) res += buf;
      if (!p || pclose(p) != 0) dsv4::fail("npm side failed: {}", res);
      const auto j = nlohmann::json::parse(res);
      const size_t npm_tokens = j.at("tokens").get<size_t>();
      std::printf("npm tokenizers %s encode, sequential   : %7.1f MB/s\n", j.at("version").get<std::string>().c_str(),
                  j.at("encode_mbps").get<double>());
      std::printf("npm tokenizers %s encodeBatch (all cores): %7.1f MB/s\n", j.at("version").get<std::string>().c_str(),
                  j.at("batch_mbps").get<double>());
      std::printf("npm tokenizers decode, sequential      : %7.1f MB/s\n", j.at("decode_mbps").get<double>());
      std::printf("token counts %s (ours %zu, npm %zu); ratio ours/npm encode 1 thread: %.2fx\n",
                  npm_tokens == n_tokens ? "agree" : "DIFFER", n_tokens, npm_tokens,
                  (mbs / best) / j.at("encode_mbps").get<double>());
    }
  } catch (const dsv4::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
