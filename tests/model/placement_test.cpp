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

TEST(Placement, ACutInsideAScaleTileIsAClearError) {
  // tiny-a's FP8 shared expert is 128 wide: 2 ranks would cut its single 128-column scale tile.
  ASSERT_TRUE(std::filesystem::exists(kTiny + "/model.safetensors")) << kTiny << " missing";
  const ModelConfig c = ModelConfig::load(kTiny + "/config.json");
  auto be = make_cpu_backend();
  try {
    ModelWeights::load(c, kTiny, *be, {1, 2});
    FAIL() << "a cut inside an FP8 scale tile was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scale groups"), std::string::npos) << e.what();
  }
}
