// Scalar number formats of the checkpoint and the numerics simulation: bf16, e4m3 (OCP fp8 e4m3fn),
// e8m0 (power-of-two scale byte), e2m1 (fp4). Decoding is exact; encoding rounds to nearest even.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv4 {

enum class DType : uint8_t { F32, F64, BF16, F16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E8M0 };

// Bytes per element.
size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling ("F8_E4M3", ...)
bool parse_dtype(std::string_view name, DType* out);

// ---- bf16
inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                          // round to nearest even
  return uint16_t(u >> 16);
}
inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// ---- e4m3 (bias 7, max 448, no infinities, NaN = S.1111.111)
extern const float kE4M3Table[256];
inline float e4m3_to_f32(uint8_t b) { return kE4M3Table[b]; }
// Round to nearest even, saturating to +-448 (the reference clamps before casting). NaN -> 0x7f.
uint8_t f32_to_e4m3(float f);
uint8_t f32_to_e4m3_reference(float f);  // plain nearest-code search: the reference the fast path is tested on

// ---- e8m0: 2^(b-127); 255 is NaN.
inline float e8m0_to_f32(uint8_t b) {
  if (b == 255) return std::nanf("");
  if (b == 0) return std::ldexp(1.0f, -127);  // subnormal in f32, still exact
  return std::bit_cast<float>(uint32_t(b) << 23);
}

// ---- e2m1 (fp4): bit 3 sign, magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}
extern const float kE2M1Table[16];
inline float e2m1_to_f32(uint8_t nibble) { return kE2M1Table[nibble & 0xf]; }
uint8_t f32_to_e2m1(float f);  // round to nearest even, saturating to +-6

// Power-of-two scale used by every activation quantizer of the reference: 2^ceil(log2(amax / qmax)),
// with amax floored at `amin`. Returned as the exact float.
float pow2_scale(float amax, float qmax, float amin);

}  // namespace dsv4
