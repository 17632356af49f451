#include "kernels/linear_weight.h"

namespace dsv4 {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::FP8Block: return "fp8-block";
    case WeightFormat::FP4Group32: return "fp4-group32";
  }
  return "?";
}

LinearWeight LinearWeight::rows(int64_t r0, int64_t n) const {
  DSV4_CHECK(r0 >= 0 && n >= 0 && r0 + n <= out, "LinearWeight::rows [{}, {}) out of {}", r0, r0 + n, out);
  LinearWeight w = *this;
  w.out = n;
  w.data = data.rows(r0, n);
  switch (fmt) {
    case WeightFormat::F32:
    case WeightFormat::BF16: break;
    case WeightFormat::FP8Block: {
      // Keep the scale rows of every tile the slice touches; row0 says where the slice starts in the first.
      const int64_t first = row0 + r0, t0 = first / block, t1 = (first + n + block - 1) / block;
      w.scale = scale.rows(t0, t1 - t0);
      w.row0 = first - t0 * block;
      break;
    }
    case WeightFormat::FP4Group32: w.scale = scale.rows(r0, n); break;
  }
  return w;
}

uint64_t LinearWeight::nbytes() const {
  switch (fmt) {
    case WeightFormat::F32: return uint64_t(out * in * 4);
    case WeightFormat::BF16: return uint64_t(out * in * 2);
    case WeightFormat::FP8Block: return uint64_t(out * in);
    case WeightFormat::FP4Group32: return uint64_t(out * in / 2);
  }
  return 0;
}

}  // namespace dsv4
