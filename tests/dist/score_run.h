// `dsv4 score` runs for the multi-rank tests: token-id files, the logits a run writes, and their distance.
#pragma once
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "free_port.h"

namespace score_run {

namespace fs = std::filesystem;

inline const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";
inline const std::string kBin = std::string(DSV4_BINARY_DIR) + "/dsv4";

inline fs::path temp_dir() {
  static const fs::path d = [] {
    fs::path p = fs::temp_directory_path() / ("dsv4-dist-" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p;
  }();
  return d;
}

inline std::string write_ids(int n, int vocab, unsigned seed) {
  const fs::path p = temp_dir() / ("ids-" + std::to_string(n) + "-" + std::to_string(seed));
  std::ofstream f(p);
  std::mt19937 g(seed);
  for (int i = 0; i < n; ++i) f << (g() % unsigned(vocab)) << ' ';
  return p.string();
}

// The logits of `dsv4 score` (exact numerics, CPU) with `extra` flags; empty (and a test failure) if it fails.
// `log` (optional) receives the run's output.
inline std::vector<float> score(const std::string& model, const std::string& ids, const std::string& extra,
                                std::string* log = nullptr) {
  static int n = 0;
  const fs::path out = temp_dir() / ("logits-" + std::to_string(n++));
  const std::string cmd = kBin + " score --device cpu --numerics exact --model " + model + " --ids " + ids +
                          " --out " + out.string() + " --master-port " + std::to_string(free_port()) + " " + extra +
                          " > " + out.string() + ".log 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream lf(out.string() + ".log");
  const std::string text(std::istreambuf_iterator<char>(lf), {});
  if (log) *log = text;
  if (rc != 0) {
    ADD_FAILURE() << cmd << " exited " << rc << ":\n" << text;
    return {};
  }
  std::ifstream f(out, std::ios::binary);
  std::vector<float> v(fs::file_size(out) / 4);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * 4));
  return v;
}

// Largest absolute difference over the largest magnitude (1e9 when the sizes differ or a run failed).
inline double rel(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  if (a.size() != b.size() || a.empty()) return 1e9;
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
    m = std::max(m, std::fabs(double(a[i])));
  }
  return d / m;
}

}  // namespace score_run
