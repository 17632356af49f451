#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <limits>

namespace dsv4 {

namespace {
struct Names {
  DType t;
  std::string_view name;
  size_t size;
};
constexpr std::array<Names, 12> kNames{{{DType::F32, "F32", 4},
                                        {DType::F64, "F64", 8},
                                        {DType::BF16, "BF16", 2},
                                        {DType::F16, "F16", 2},
                                        {DType::I64, "I64", 8},
                                        {DType::I32, "I32", 4},
                                        {DType::I16, "I16", 2},
                                        {DType::I8, "I8", 1},
                                        {DType::U8, "U8", 1},
                                        {DType::BOOL, "BOOL", 1},
                                        {DType::F8_E4M3, "F8_E4M3", 1},
                                        {DType::F8_E8M0, "F8_E8M0", 1}}};

constexpr float pow2i(int e) {
  float r = 1.f;
  for (; e > 0; --e) r *= 2.f;
  for (; e < 0; ++e) r *= 0.5f;
  return r;
}
constexpr std::array<float, 256> make_e4m3() {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) {
    float s = (b & 0x80) ? -1.f : 1.f;
    int e = (b >> 3) & 0xf, m = b & 7;
    if (e == 0xf && m == 7)
      t[b] = std::numeric_limits<float>::quiet_NaN();
    else if (e == 0)
      t[b] = s * float(m) * pow2i(-9);  // subnormal: m/8 * 2^-6
    else
      t[b] = s * (1.f + float(m) / 8.f) * pow2i(e - 7);
  }
  return t;
}
constexpr std::array<float, 256> kE4M3 = make_e4m3();
}  // namespace

const float kE2M1Table[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
extern const float kE4M3Table[256];
const float kE4M3Table[256] = {
#define R(i) kE4M3[i], kE4M3[i + 1], kE4M3[i + 2], kE4M3[i + 3], kE4M3[i + 4], kE4M3[i + 5], kE4M3[i + 6], kE4M3[i + 7]
#define R64(i) R(i), R(i + 8), R(i + 16), R(i + 24), R(i + 32), R(i + 40), R(i + 48), R(i + 56)
    R64(0), R64(64), R64(128), R64(192)
#undef R64
#undef R
};

uint8_t f32_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7e;
  if (a < std::ldexp(1.f, -6)) {  // subnormal range: multiples of 2^-9, nearest even
    return sign | uint8_t(std::nearbyint(a * 512.f));  // 8 -> 0x08 = 2^-6, the first normal
  }
  // Normal: round the fp32 mantissa to 3 bits, nearest even, by integer arithmetic on the bits.
  uint32_t u = std::bit_cast<uint32_t>(a);
  u += 0x7ffffu + ((u >> 20) & 1u);
  const int e = int(u >> 23) - 127;
  return sign | uint8_t(((e + 7) << 3) | ((u >> 20) & 7u));
}

uint8_t f32_to_e4m3_reference(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7e;  // saturate (0x7e = 448)
  // Candidates are the 127 non-negative finite codes, monotonic in the code: binary search the nearest,
  // ties to the even code (even mantissa LSB).
  int lo = 0, hi = 0x7e;
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if (kE4M3[mid] <= a) lo = mid; else hi = mid;
  }
  float dl = a - kE4M3[lo], dh = kE4M3[hi] - a;
  int code = (dl < dh) ? lo : (dh < dl) ? hi : ((lo & 1) ? hi : lo);
  if (kE4M3[hi] <= a) code = hi;
  return sign | uint8_t(code);
}

uint8_t f32_to_e2m1(float f) {
  uint8_t sign = std::signbit(f) ? 8 : 0;
  float a = std::fabs(f);
  if (std::isnan(f)) return 7;
  if (a >= 6.f) return sign | 7;
  int lo = 0, hi = 7;
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if (kE2M1Table[mid] <= a) lo = mid; else hi = mid;
  }
  float dl = a - kE2M1Table[lo], dh = kE2M1Table[hi] - a;
  int code = (dl < dh) ? lo : (dh < dl) ? hi : ((lo & 1) ? hi : lo);
  if (kE2M1Table[hi] <= a) code = hi;
  return sign | uint8_t(code);
}

float pow2_scale(float amax, float qmax, float amin) {
  float a = std::max(amax, amin);
  return std::exp2(std::ceil(std::log2(a / qmax)));
}

size_t dtype_size(DType t) { return kNames[size_t(t)].size; }
std::string_view dtype_name(DType t) { return kNames[size_t(t)].name; }
bool parse_dtype(std::string_view name, DType* out) {
  for (auto& n : kNames)
    if (n.name == name) {
      *out = n.t;
      return true;
    }
  return false;
}
}  // namespace dsv4
