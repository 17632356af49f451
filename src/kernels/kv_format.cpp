#include "kernels/kv_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace dsv4 {

KvDtype parse_kv_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return KvDtype::F32;
  if (s == "bf16" || s == "bfloat16") return KvDtype::BF16;
  if (s == "fp8" || s == "fp8_e4m3" || s == "fp8_ds_mla") return KvDtype::FP8;
  fail("unknown KV cache dtype '{}' (f32, bf16 or fp8)", s);
}

const char* kv_dtype_name(KvDtype t) {
  switch (t) {
    case KvDtype::F32: return "f32";
    case KvDtype::BF16: return "bf16";
    case KvDtype::FP8: return "fp8";
  }
  return "?";
}

int64_t KvCodec::bytes() const {
  switch (dtype) {
    case KvDtype::F32: return int64_t(dim) * 4;
    case KvDtype::BF16: return int64_t(dim) * 2;
    case KvDtype::FP8:
      if (index_key) return dim + 4;
      {
        int64_t nope = dim - rope, scales = (nope + 63) / 64;
        return (nope + 2 * rope + scales + 7) / 8 * 8;  // 448 + 128 + 7 -> 584 for V4-Flash
      }
  }
  return 0;
}

void KvCodec::encode(const float* x, uint8_t* dst) const {
  switch (dtype) {
    case KvDtype::F32: std::memcpy(dst, x, size_t(dim) * 4); return;
    case KvDtype::BF16:
      for (int i = 0; i < dim; ++i) {
        uint16_t h = f32_to_bf16(x[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case KvDtype::FP8: break;
  }
  if (index_key) {
    float amax = 0;
    for (int i = 0; i < dim; ++i) amax = std::max(amax, std::fabs(x[i]));
    float s = pow2_scale(amax, 448.f, 1e-4f);
    for (int i = 0; i < dim; ++i) dst[i] = f32_to_e4m3(std::clamp(x[i] / s, -448.f, 448.f));
    std::memcpy(dst + dim, &s, 4);
    return;
  }
  const int nope = dim - rope;
  uint8_t* scales = dst + nope + 2 * rope;
  for (int b = 0; b < nope; b += 64) {
    const int e = std::min(nope, b + 64);
    float amax = 0;
    for (int i = b; i < e; ++i) amax = std::max(amax, std::fabs(x[i]));
    float s = pow2_scale(amax, 448.f, 1e-4f);
    scales[b / 64] = uint8_t(std::lround(std::log2(s)) + 127);
    for (int i = b; i < e; ++i) dst[i] = f32_to_e4m3(std::clamp(x[i] / s, -448.f, 448.f));
  }
  for (int i = 0; i < rope; ++i) {
    uint16_t h = f32_to_bf16(x[nope + i]);
    std::memcpy(dst + nope + 2 * i, &h, 2);
  }
  std::memset(scales + (nope + 63) / 64, 0, size_t(bytes() - (nope + 2 * rope + (nope + 63) / 64)));
}

void KvCodec::decode(const uint8_t* src, float* x) const {
  switch (dtype) {
    case KvDtype::F32: std::memcpy(x, src, size_t(dim) * 4); return;
    case KvDtype::BF16:
      for (int i = 0; i < dim; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        x[i] = bf16_to_f32(h);
      }
      return;
    case KvDtype::FP8: break;
  }
  if (index_key) {
    float s;
    std::memcpy(&s, src + dim, 4);
    for (int i = 0; i < dim; ++i) x[i] = e4m3_to_f32(src[i]) * s;
    return;
  }
  const int nope = dim - rope;
  const uint8_t* scales = src + nope + 2 * rope;
  for (int i = 0; i < nope; ++i) x[i] = e4m3_to_f32(src[i]) * e8m0_to_f32(scales[i / 64]);
  for (int i = 0; i < rope; ++i) {
    uint16_t h;
    std::memcpy(&h, src + nope + 2 * i, 2);
    x[nope + i] = bf16_to_f32(h);
  }
}

}  // namespace dsv4
