// Per-pair angular frequencies of one RoPE regime (plain, or YaRN-scaled), rotating the LAST 2*freqs dims.
// Host values; the model uploads them as an f64 tensor for Backend::rope.
#pragma once
#include <vector>

namespace dsv4 {

struct RopeTable {
  std::vector<double> freqs;
  static RopeTable make(int rope_dim, double base, int original_max_pos, double factor, double beta_fast,
                        double beta_slow);
};

}  // namespace dsv4
