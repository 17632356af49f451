#include <algorithm>
#include <cmath>

#include "kernels/rope_table.h"

namespace dsv4 {

// Reference precompute_freqs_cis: omega_i = base^(-2i/d); with YaRN (original_max_pos > 0) the
// frequencies above the correction range are divided by `factor`, linearly blended in between. No mscale.
RopeTable RopeTable::make(int d, double base, int original_max_pos, double factor, double beta_fast,
                          double beta_slow) {
  RopeTable t;
  t.freqs.resize(size_t(d / 2));
  for (int i = 0; i < d / 2; ++i) t.freqs[size_t(i)] = 1.0 / std::pow(base, double(2 * i) / d);
  if (original_max_pos > 0) {
    auto corr_dim = [&](double rot) { return d * std::log(original_max_pos / (rot * 2 * M_PI)) / (2 * std::log(base)); };
    double low = std::max(std::floor(corr_dim(beta_fast)), 0.0);
    double high = std::min(std::ceil(corr_dim(beta_slow)), double(d - 1));
    if (low == high) high += 0.001;
    for (int i = 0; i < d / 2; ++i) {
      double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      double smooth = 1.0 - ramp;
      t.freqs[size_t(i)] = t.freqs[size_t(i)] / factor * (1.0 - smooth) + t.freqs[size_t(i)] * smooth;
    }
  }
  return t;
}

}  // namespace dsv4
