// Shard specs: a tensor-parallel rank places exactly its slice of each weight (rows of column-parallel
// linears, columns of row-parallel ones, scales cut with them), read from the checkpoint.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "kernels/backend.h"
#include "model/tiny_checkpoint.h"
#include "model/weights.h"
#include "test_files.h"

#include <nlohmann/json.hpp>

using namespace dsv4;

namespace {

const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

std::vector<uint8_t> bytes_of(Backend& be, const Tensor& t) {
  std::vector<uint8_t> v(size_t(t.nbytes()));
  be.download(v.data(), t, v.size());
  return v;
}

// Rows [r0, r0 + n) x byte columns [c0, c0 + w) of a row-major [rows, row_bytes] byte matrix.
std::vector<uint8_t> cut(const std::vector<uint8_t>& m, int64_t row_bytes, int64_t r0, int64_t n, int64_t c0, int64_t w) {
  std::vector<uint8_t> out;
  for (int64_t r = r0; r < r0 + n; ++r) out.insert(out.end(), m.begin() + r * row_bytes + c0, m.begin() + r * row_bytes + c0 + w);
  return out;
}

}  // namespace

TEST(Placement, EachRankHoldsItsSliceOfEveryShardedWeight) {
  // The demo shapes with a 256-wide expert: every cut of 2 ranks lands on FP8's 128-column scale tiles.
  const std::string dir = test::temp_dir("placement");
  nlohmann::json cj = tiny_demo_config_json();
  cj["vocab_size"] = 4096;
  cj["moe_intermediate_size"] = 256;
  make_random_checkpoint(dir, cj, 3);
  const ModelConfig c = ModelConfig::from_json(cj);
  auto be = make_cpu_backend();
  auto full = ModelWeights::load(c, dir, *be);
  for (int rank = 0; rank < 2; ++rank) {
    auto part = ModelWeights::load(c, dir, *be, {rank, 2});
    const LayerWeights &F = full->layers[1], &P = part->layers[1];
    // Column-parallel FP8 wq_b: rows of the weight (and of its scale tiles).
    const int64_t rows = F.wq_b.out / 2;
    EXPECT_EQ(P.wq_b.out, rows);
    EXPECT_EQ(P.wq_b.in, F.wq_b.in);
    EXPECT_EQ(bytes_of(*be, P.wq_b.data), cut(bytes_of(*be, F.wq_b.data), F.wq_b.in, rank * rows, rows, 0, F.wq_b.in));
    // Row-parallel FP8 wo_b: columns, and the matching scale columns.
    const int64_t cols = F.wo_b.in / 2;
    EXPECT_EQ(P.wo_b.in, cols);
    EXPECT_EQ(bytes_of(*be, P.wo_b.data), cut(bytes_of(*be, F.wo_b.data), F.wo_b.in, 0, F.wo_b.out, rank * cols, cols));
    const int64_t sc = F.wo_b.scale_cols / 2;
    EXPECT_EQ(P.wo_b.scale_cols, sc);
    EXPECT_EQ(bytes_of(*be, P.wo_b.scale), cut(bytes_of(*be, F.wo_b.scale), F.wo_b.scale_cols, 0, F.wo_b.scale.rows(), rank * sc, sc));
    // Row-parallel FP4 expert w2: packed columns (2 per byte) and per-32 scales.
    const ExpertWeights &fe = F.experts[3], &pe = P.experts[3];
    EXPECT_EQ(pe.w2.in, fe.w2.in / 2);
    EXPECT_EQ(bytes_of(*be, pe.w2.data), cut(bytes_of(*be, fe.w2.data), fe.w2.in / 2, 0, fe.w2.out, rank * fe.w2.in / 4, fe.w2.in / 4));
    EXPECT_EQ(bytes_of(*be, pe.w2.scale),
              cut(bytes_of(*be, fe.w2.scale), fe.w2.in / 32, 0, fe.w2.out, rank * fe.w2.in / 64, fe.w2.in / 64));
    // Column-parallel FP4 w1: rows. Per-head vectors (attn_sink) split too; replicated ones stay whole.
    EXPECT_EQ(pe.w1.out, fe.w1.out / 2);
    EXPECT_EQ(P.attn_sink.numel(), F.attn_sink.numel() / 2);
    EXPECT_EQ(bytes_of(*be, P.attn_sink), cut(bytes_of(*be, F.attn_sink), F.attn_sink.nbytes() / 2 * 2, 0, 1, rank * F.attn_sink.nbytes() / 2, F.attn_sink.nbytes() / 2));
    EXPECT_EQ(bytes_of(*be, P.wkv.data), bytes_of(*be, F.wkv.data));
  }
  EXPECT_THROW(ModelWeights::load(c, dir, *be, {0, 3}), Error);  // 4 heads do not split 3 ways
  std::filesystem::remove_all(dir);
}

TEST(Placement, ASliceInsideOneScaleTileKeepsThatTilesScale) {
  // tiny-a's FP8 shared expert w2 is 128 wide: 2 ranks take 64 columns each of its one 128-column tile.
  ASSERT_TRUE(std::filesystem::exists(kTiny + "/model.safetensors")) << kTiny << " missing";
  const ModelConfig c = ModelConfig::load(kTiny + "/config.json");
  auto be = make_cpu_backend();
  auto full = ModelWeights::load(c, kTiny, *be);
  for (int rank = 0; rank < 2; ++rank) {
    auto part = ModelWeights::load(c, kTiny, *be, {rank, 2});
    const LinearWeight &F = full->layers[0].shared.w2, &P = part->layers[0].shared.w2;
    EXPECT_EQ(P.in, F.in / 2);
    EXPECT_EQ(P.scale_cols, 1);
    EXPECT_EQ(bytes_of(*be, P.data), cut(bytes_of(*be, F.data), F.in, 0, F.out, rank * F.in / 2, F.in / 2));
    EXPECT_EQ(bytes_of(*be, P.scale), bytes_of(*be, F.scale));  // one tile column: the same scales
  }
}

TEST(Placement, ACutAcrossScaleTilesOffTheirBoundaryIsAClearError) {
  // Width 192 = tiles [0, 128) and [128, 192): rank 1 of 2 would take [96, 192), across both.
  const std::string dir = test::temp_dir("placement-cross");
  nlohmann::json cj = tiny_demo_config_json();
  cj["vocab_size"] = 4096;
  cj["moe_intermediate_size"] = 192;
  make_random_checkpoint(dir, cj, 5);
  const ModelConfig c = ModelConfig::from_json(cj);
  auto be = make_cpu_backend();
  try {
    ModelWeights::load(c, dir, *be, {1, 2});
    FAIL() << "a cut across FP8 scale tiles was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scale groups"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(Placement, MeasureCountsEachRanksShardsWithoutPlacing) {
  ASSERT_TRUE(std::filesystem::exists(kTiny + "/model.safetensors")) << kTiny << " missing";
  const ModelConfig c = ModelConfig::load(kTiny + "/config.json");
  auto be = make_cpu_backend();
  for (bool ep : {false, true})
    for (int rank = 0; rank < 2; ++rank) {
      const Placement p{rank, 2, ep};
      EXPECT_EQ(ModelWeights::measure(c, kTiny, p), ModelWeights::load(c, kTiny, *be, p)->tensor_bytes);
    }
  const uint64_t one = ModelWeights::measure(c, kTiny, {});
  EXPECT_EQ(one, ModelWeights::load(c, kTiny, *be)->tensor_bytes);
  const uint64_t half = ModelWeights::measure(c, kTiny, {0, 2});
  EXPECT_LT(half, one);        // split tensors halve
  EXPECT_GT(2 * half, one);    // replicated ones (embedding, indexer, compressors, router) do not
}
