// Description of one linear layer's weight in its checkpoint format, as tensors in a backend's memory.
// Kernels read these formats directly; nothing de-quantizes the model at load time.
#pragma once
#include <cstdint>

#include "kernels/tensor.h"

namespace dsv4 {

enum class WeightFormat : uint8_t {
  F32,         // plain fp32 [out, in]
  BF16,        // plain bf16 [out, in]
  FP8Block,    // e4m3 [out, in] + scale [tiles, ceil(in/B)] (E8M0 bytes, or fp32 for Flash-Base)
  FP4Group32,  // packed e2m1 [out, in/2] (low nibble = even element) + E8M0 scale [out, in/32]
};
const char* weight_format_name(WeightFormat f);

struct LinearWeight {
  WeightFormat fmt = WeightFormat::F32;
  int64_t out = 0, in = 0;
  Tensor data;             // row r of this weight is row r of `data`
  Tensor scale;            // FP8Block: U8 (E8M0) or F32; FP4Group32: U8 (E8M0)
  int64_t scale_cols = 0;  // row stride of the scale matrix, in elements
  int block = 128;         // FP8Block tile size
  // FP8Block: index of row 0 inside its first scale tile. A row slice may start inside a 128-row tile (grouped
  // output projections whose o_lora_rank is not a multiple of 128): row r uses scale row (row0 + r) / block.
  int64_t row0 = 0;

  bool valid() const { return data.valid(); }
  bool quantized() const { return fmt == WeightFormat::FP8Block || fmt == WeightFormat::FP4Group32; }
  bool scale_is_f32() const { return scale.dtype == DType::F32; }
  // Rows [r0, r0 + n) as a weight of their own; any r0.
  LinearWeight rows(int64_t r0, int64_t n) const;
  uint64_t nbytes() const;  // weight bytes (without scales)
};

}  // namespace dsv4
