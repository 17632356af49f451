// KV storage: codecs (sizes users' tooling expects, round trips), block layout, and resuming a sequence
// from cached blocks with the same logits as computing it whole.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/quant.h"
#include "model/kv_cache.h"
#include "runtime/kv_block_manager.h"
#include "session_util.h"

using namespace dsv4;

TEST(KvCodec, Fp8EntrySizesMatchVllmLayout) {
  KvCodec main{KvDtype::FP8, 512, 64, false}, idx{KvDtype::FP8, 128, 0, true};
  EXPECT_EQ(main.bytes(), 584);  // 448 e4m3 + 64 bf16 rope (128 B) + 7 E8M0 scales + 1 pad
  EXPECT_EQ(idx.bytes(), 132);   // 128 e4m3 + fp32 scale
  EXPECT_EQ((KvCodec{KvDtype::BF16, 512, 64, false}.bytes()), 1024);
}

TEST(KvCodec, Fp8IsLosslessOnReferenceRoundedValues) {
  // A vector whose nope dims went through the reference FP8 round trip (64-blocks) and whose rope dims are
  // bf16 comes back bit-exact from the fp8 entry.
  std::vector<float> x(512), y(512);
  for (int i = 0; i < 512; ++i) x[size_t(i)] = std::sin(0.37f * float(i)) * (i < 64 ? 0.01f : 3.f);
  fp8_roundtrip(x.data(), 448, 64);
  round_bf16(x.data() + 448, 64);
  KvCodec c{KvDtype::FP8, 512, 64, false};
  std::vector<uint8_t> buf(size_t(c.bytes()));
  c.encode(x.data(), buf.data());
  c.decode(buf.data(), y.data());
  EXPECT_EQ(x, y);
  // Arbitrary values: error bounded by e4m3's half-ulp (1/16 relative to the block scale).
  for (int i = 0; i < 512; ++i) x[size_t(i)] = std::cos(1.3f * float(i));
  c.encode(x.data(), buf.data());
  c.decode(buf.data(), y.data());
  for (int i = 0; i < 448; ++i) EXPECT_NEAR(y[size_t(i)], x[size_t(i)], 1.0 / 16 + 1e-6) << i;
}

TEST(KvLayout, BlocksHoldEveryCompressedLayer) {
  ModelConfig c = ModelConfig::load(std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a/config.json");
  auto L = KvLayout::make(c, 256, KvDtype::F32, false);
  // tiny-a: layer 1 ratio 4 (64 entries x 128 + 64 keys x 64), layer 2 ratio 128 (2 x 128), layer 3 ratio 4
  EXPECT_EQ(L.layers[0].comp_off, -1);
  EXPECT_EQ(L.entries_per_block(1), 64);
  EXPECT_EQ(L.entries_per_block(2), 2);
  EXPECT_GE(L.block_bytes(), 4 * (2 * (64 * 128 + 64 * 64) + 2 * 128));
  EXPECT_THROW(KvLayout::make(c, 100, KvDtype::F32, false), Error);
  auto T = KvLayout::make(c, 256, KvDtype::F32, true);
  EXPECT_GT(T.block_bytes(), L.block_bytes());
  // Slots: a window ring on every layer (stored in the cache dtype), compressor token rings on compressed ones.
  for (int l = 0; l < c.n_layers; ++l) {
    EXPECT_GE(L.layers[size_t(l)].ring_off, 0);
    EXPECT_EQ(L.layers[size_t(l)].cring_off >= 0, c.ratio(l) != 0);
    EXPECT_EQ(L.layers[size_t(l)].iring_off >= 0, c.ratio(l) == 4);
  }
  auto B = KvLayout::make(c, 256, KvDtype::BF16, false);
  EXPECT_LT(B.slot_bytes(), L.slot_bytes());  // bf16 window rings are half the f32 ones
  const KvLayout sized = L.sized(3, 2);
  EXPECT_GE(sized.shape.slots_offset, 3 * L.block_bytes());
  EXPECT_EQ(sized.shape.arena_bytes(), sized.shape.slots_offset + 2 * L.slot_bytes());
  BlockPool pool(2);
  int32_t a = pool.allocate(), b = pool.allocate();
  EXPECT_EQ(pool.allocate(), -1);
  pool.retain(a);
  pool.release(a);
  EXPECT_EQ(pool.used(), 2);
  pool.release(a);
  pool.release(b);
  EXPECT_EQ(pool.used(), 0);
  EXPECT_THROW(pool.release(b), Error);
}

TEST(KvLayout, ResumeFromCachedBlocksEqualsWholeRun) {
  const std::string dir = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";
  ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors")) << dir << " missing";
  for (Numerics num : {Numerics::Exact, Numerics::Reference}) {
    Session m(test::session_options(dir, num, 2, 768, "auto", true));
    std::vector<int32_t> ids(700);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 131 + 7) % 2000);
    // Whole run, in odd chunks that straddle the block boundaries.
    const int a = m.new_sequence();
    std::vector<float> whole;
    for (size_t i = 0; i < ids.size(); i += 97) {
      Session::Chunk it{a, std::span<const int32_t>(ids).subspan(i, std::min<size_t>(97, ids.size() - i)), LogitRows::All};
      m.forward(std::span<const Session::Chunk>(&it, 1), whole);
    }
    // Resume from a's first two blocks (positions 0..511) and compute the rest.
    const int b = m.new_sequence();
    m.resume_from(b, a, 2);
    EXPECT_EQ(m.pos(b), 512);
    std::vector<float> rest;
    Session::Chunk it{b, std::span<const int32_t>(ids).subspan(512), LogitRows::All};
    m.forward(std::span<const Session::Chunk>(&it, 1), rest);
    const size_t V = size_t(m.config().vocab_size);
    ASSERT_EQ(rest.size(), (ids.size() - 512) * V);
    double num2 = 0, den = 0;
    for (size_t i = 0; i < rest.size(); ++i) {
      double d = double(rest[i]) - whole[512 * V + i];
      num2 += d * d;
      den += double(whole[512 * V + i]) * whole[512 * V + i];
    }
    EXPECT_LE(std::sqrt(num2 / den), 1e-5) << (num == Numerics::Exact ? "exact" : "reference");
    EXPECT_EQ(m.pool().refcount(m.blocks(a)[0]), 2);
  }
}
