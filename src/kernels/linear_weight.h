// A view of one linear layer's weight in its checkpoint format. Kernels read these formats directly;
// nothing de-quantizes the model at load time.
#pragma once
#include <cstdint>

namespace dsv4 {

enum class WeightFormat {
  F32,         // plain fp32 [out, in]
  BF16,        // plain bf16 [out, in]
  FP8Block,    // e4m3 [out, in] + scale [ceil(out/B), ceil(in/B)] (E8M0 bytes, or fp32 for Flash-Base)
  FP4Group32,  // packed e2m1 [out, in/2] (low nibble = even element) + E8M0 scale [out, in/32]
};

struct LinearWeight {
  WeightFormat fmt = WeightFormat::F32;
  int64_t out = 0, in = 0;
  const void* data = nullptr;
  const uint8_t* scale_e8m0 = nullptr;  // FP8Block / FP4Group32
  const float* scale_f32 = nullptr;     // FP8Block with fp32 scales
  int64_t scale_cols = 0;               // row stride of the scale matrix
  int block = 128;                      // FP8Block tile size

  bool valid() const { return data != nullptr; }
  bool quantized() const { return fmt == WeightFormat::FP8Block || fmt == WeightFormat::FP4Group32; }
  // Rows [r0, r0 + n) as a weight of their own (grouped projections). FP8 needs r0 on a tile boundary.
  LinearWeight rows(int64_t r0, int64_t n) const;
  // Exact de-quantized values of row r into dst[in].
  void dequant_row(int64_t r, float* dst) const;
  uint64_t nbytes() const;
};

}  // namespace dsv4
