// RoPE frequency table (spec §2.4): host-side setup data. The graph uploads `freqs` as the F64 (exact, what the
// CPU engine always used) or F32 tensor that Backend::rope takes.
#pragma once
#include <vector>

namespace dsv4 {

struct RopeTable {
  std::vector<double> freqs;  // omega_i, i < rope_dim / 2
  static RopeTable make(int rope_dim, double base, int original_max_pos, double factor, double beta_fast,
                        double beta_slow);
};

}  // namespace dsv4
