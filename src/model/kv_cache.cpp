#include "model/kv_cache.h"

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

KvLayout KvLayout::make(const ModelConfig& c, int block_tokens, KvDtype dtype, bool with_tail) {
  if (block_tokens <= 0 || block_tokens % 128)
    fail("block size {} must be a positive multiple of 128 (every compression window ends inside a block)",
         block_tokens);
  if (with_tail && block_tokens < c.window)
    fail("block size {} is smaller than the attention window {}", block_tokens, c.window);
  KvLayout L;
  L.block_tokens = block_tokens;
  L.dtype = dtype;
  L.with_tail = with_tail;
  L.window = c.window;
  L.main = {dtype, c.head_dim, c.rope_dim, false};
  L.index = {dtype, c.index_head_dim, 0, true};
  L.cstate_floats = 2LL * 4 * 2 * c.head_dim;
  L.istate_floats = 2LL * 4 * 2 * c.index_head_dim;
  int64_t off = 0;
  auto align = [&] { off = (off + 63) / 64 * 64; };
  for (int l = 0; l < c.n_layers; ++l) {
    Layer ly;
    ly.ratio = c.ratio(l);
    if (ly.ratio) {
      ly.comp_off = off;
      off += int64_t(block_tokens / ly.ratio) * L.main.bytes();
      align();
      if (ly.ratio == 4) {
        ly.idx_off = off;
        off += int64_t(block_tokens / 4) * L.index.bytes();
        align();
      }
    }
    if (with_tail) {
      ly.tail_off = off;
      off += int64_t(c.window) * L.main.bytes();
      align();
      if (ly.ratio == 4) {
        ly.cstate_off = off;
        off += L.cstate_floats * 4;
        ly.istate_off = off;
        off += L.istate_floats * 4;
        align();
      }
    }
    L.layers.push_back(ly);
  }
  L.block_bytes = std::max<int64_t>(off, 64);
  return L;
}

KvPool::KvPool(KvLayout layout, int64_t capacity_blocks) : layout_(std::move(layout)), capacity_(capacity_blocks) {}

int32_t KvPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    if (capacity_ && int64_t(storage_.size()) >= capacity_) return -1;
    b = int32_t(storage_.size());
    storage_.emplace_back(new uint8_t[size_t(layout_.block_bytes)]);
    refs_.push_back(0);
  }
  refs_[size_t(b)] = 1;
  ++used_;
  return b;
}

void KvPool::retain(int32_t b) { ++refs_[size_t(b)]; }

void KvPool::release(int32_t b) {
  DSV4_CHECK(refs_[size_t(b)] > 0, "KV block {} released twice", b);
  if (--refs_[size_t(b)] == 0) {
    free_.push_back(b);
    --used_;
  }
}

}  // namespace dsv4
