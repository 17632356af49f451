// Plain scalar reference implementations of every Backend op, on host arrays, written straight from the
// semantics in kernels/backend.h and spec §2 (double accumulation where the op sums; no blocking, no threads).
// They share only the format definitions with the backends: kernels/quant.h (rounding simulations),
// KvCodec::encode/decode (cache byte formats) and core/dtype.h (number formats).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/backend.h"

namespace dsv4::ref {

// A linear weight in host memory, in its checkpoint format.
struct Weight {
  WeightFormat fmt = WeightFormat::F32;
  int64_t out = 0, in = 0;
  std::vector<uint8_t> data;     // the raw rows (f32 / bf16 / e4m3 bytes / packed e2m1)
  std::vector<uint8_t> scale8;   // E8M0 scales (FP8Block or FP4Group32)
  std::vector<float> scale32;    // FP8Block fp32 scales (instead of scale8)
  int64_t scale_cols = 0;
  int block = 128;
};
// W[r][k] de-quantized, from the format definition.
float weight_value(const Weight& w, int64_t r, int64_t k);
// y[M, n] with the rows [r0, r0 + n) of w (every output row when n < 0).
std::vector<float> linear(const std::vector<float>& x, int64_t M, const Weight& w, LinearOpts o, int64_t r0 = 0,
                          int64_t n = -1);

std::vector<float> rms_norm(const std::vector<float>& x, int64_t D, const float* w, float eps);
void rope(std::vector<float>& x, int64_t H, int64_t hd, const std::vector<int32_t>& pos,
          const std::vector<double>& freqs, bool inverse);
void fp8_rows(std::vector<float>& x, int64_t row, int64_t prefix, int64_t block);
void hadamard_fp4(std::vector<float>& x, int64_t dim);
void kv_roundtrip(std::vector<float>& x, const KvCodec& c);
template <typename T>
std::vector<T> gather_rows(const std::vector<T>& x, int64_t row_elems, const std::vector<int32_t>& rows) {
  std::vector<T> out;
  for (int32_t r : rows) out.insert(out.end(), x.begin() + r * row_elems, x.begin() + (r + 1) * row_elems);
  return out;
}
// table: f32 values of the bf16 or f32 table.
std::vector<float> embed(const std::vector<int32_t>& tokens, const std::vector<float>& table, int64_t D, int hc);

struct Hc {
  std::vector<float> fn, base, scale;
  int hc = 4, D = 0, iters = 20;
  float norm_eps = 1e-6f, hc_eps = 1e-6f;
};
void hc_pre(const std::vector<float>& X, int64_t M, const Hc& p, std::vector<float>& y, std::vector<float>& post,
            std::vector<float>& comb);
std::vector<float> hc_post(const std::vector<float>& y, const std::vector<float>& X, const std::vector<float>& post,
                           const std::vector<float>& comb, int64_t M, int hc, int64_t D);
std::vector<float> hc_head(const std::vector<float>& X, int64_t M, const Hc& p);

// ---- KV cache over a host copy of the arena.
struct Item {
  int start = 0, row0 = 0, len = 0, slot = 0;
  std::vector<int> blocks;  // block ids from position 0
};
struct Batch {
  std::vector<Item> items;
  int64_t M() const;
  std::vector<int32_t> pos() const;  // row m = token row0 + t of its item, at start + t
};
struct Entry {
  int row = 0, item = 0, index = 0, pos = 0;
};
struct Arena {
  std::vector<uint8_t> bytes;
  KvArenaShape shape;
  KvLayerOffsets layer;
  uint8_t* block(int id, int64_t off) { return bytes.data() + shape.block_offset(id) + off; }
  uint8_t* slot(int s, int64_t off) { return bytes.data() + shape.slot_offset(s) + off; }
};
// Entries completed by a batch for `ratio` (entry j completes at token (j + 1) * ratio - 1).
std::vector<Entry> completed_entries(const Batch& b, int ratio);
// Block ends (item, end) reached by a batch.
std::vector<std::pair<int, int>> block_ends(const Batch& b, int block_tokens);

void window_store(const std::vector<float>& kv, const Batch& b, const std::vector<std::pair<int, int>>& snaps,
                  Arena& a);
void store_entries(const std::vector<float>& src, const std::vector<Entry>& e, const Batch& b, Arena& a,
                   bool indexer);
void arena_copy(Arena& a, const std::vector<int64_t>& copies);
// selected: ratio 4 only, [M, k] with -1 = none. bidirectional: AttentionArgs::block_bidirectional (ratio 0).
std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& kv, const std::vector<float>& sink,
                             const std::vector<int32_t>& selected, int64_t k, const Batch& b, Arena& a, int64_t H,
                             float scale, bool probs_bf16, bool bidirectional = false);
std::vector<int32_t> index_topk(const std::vector<float>& q, const std::vector<float>& w, const Batch& b, Arena& a,
                                int64_t heads, int64_t dim, int64_t k, bool bf16);
std::vector<float> compress(int ratio, int coff, int d, bool indexer, const std::vector<float>& u,
                            const std::vector<float>& g, const std::vector<float>& ape, const Batch& b,
                            const std::vector<Entry>& entries, const std::vector<std::pair<int, int>>& snaps,
                            Arena& a);

// ---- MoE.
void route(const std::vector<float>& logits, int64_t M, int64_t E, int k, int score_func, const float* bias,
           const int32_t* tid2eid, const int32_t* tokens, bool normalize, float route_scale,
           std::vector<int32_t>& experts, std::vector<float>& weights);
struct Expert {
  Weight w1, w2, w3;
};
std::vector<float> moe(const std::vector<float>& x, int64_t M, int64_t D, const std::vector<int32_t>& experts,
                       const std::vector<float>& weights, int64_t K, const std::vector<Expert>& routed,
                       const Expert& shared, int64_t inter, float limit, LinearOpts lin, bool round_hidden,
                       bool round_out);

}  // namespace dsv4::ref
