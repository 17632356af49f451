// Test helpers: a Session over a checkpoint, and a whole prompt fed in chunks of one size.
#pragma once
#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <vector>

#include "runtime/session.h"

namespace dsv4::test {

inline SessionOptions session_options(const std::string& dir, Numerics n, int sequences = 3, int64_t max_tokens = 2048,
                                      const std::string& kv_dtype = "auto", bool prefix_tails = false) {
  SessionOptions o;
  o.model_dir = dir;
  o.device = "cpu";
  o.numerics = n;
  o.kv_dtype = kv_dtype;
  o.prefix_tails = prefix_tails;
  o.n_sequences = sequences;
  o.max_tokens = max_tokens;
  o.max_step_tokens = max_tokens;
  return o;
}

// Relative L2 difference of a against b.
inline double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Logits of every position ([T, vocab]) of a new sequence fed `chunk` tokens at a time.
inline std::vector<float> run_chunked(Session& s, const std::vector<int32_t>& ids, size_t chunk) {
  const int q = s.new_sequence();
  std::vector<float> out;
  for (size_t i = 0; i < ids.size(); i += chunk) {
    Session::Chunk c{q, std::span<const int32_t>(ids).subspan(i, std::min(chunk, ids.size() - i)), LogitRows::All};
    s.forward(std::span<const Session::Chunk>(&c, 1), out);
  }
  s.release(q);
  return out;
}

}  // namespace dsv4::test
