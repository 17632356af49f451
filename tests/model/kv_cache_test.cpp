// KV storage: codecs (sizes users' tooling expects, round trips), block layout, and resuming a sequence
// from cached blocks with the same logits as computing it whole.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/quant.h"
#include "model/dsv4_model.h"
#include "model/kv_cache.h"

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
  EXPECT_GE(L.block_bytes, 4 * (2 * (64 * 128 + 64 * 64) + 2 * 128));
  EXPECT_THROW(KvLayout::make(c, 100, KvDtype::F32, false), Error);
  auto T = KvLayout::make(c, 256, KvDtype::F32, true);
  EXPECT_GT(T.block_bytes, L.block_bytes);
  KvPool pool(L, 2);
  int32_t a = pool.allocate(), b = pool.allocate();
  EXPECT_EQ(pool.allocate(), -1);
  pool.retain(a);
  pool.release(a);
  EXPECT_EQ(pool.used(), 2);
  pool.release(a);
  pool.release(b);
  EXPECT_EQ(pool.used(), 0);
}

TEST(KvLayout, ResumeFromCachedBlocksEqualsWholeRun) {
  const std::string dir = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";
  if (!std::filesystem::exists(dir + "/model.safetensors")) GTEST_SKIP();
  for (Numerics num : {Numerics::Exact, Numerics::Reference}) {
    Dsv4Model m(dir, num);
    std::vector<int32_t> ids(700);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 131 + 7) % 2000);
    KvPool pool(KvLayout::make(m.config(), 256, m.default_kv_dtype(), true), 0);
    // Whole run, in odd chunks that straddle the block boundaries.
    SequenceState a(m.config(), &pool);
    std::vector<float> whole;
    for (size_t i = 0; i < ids.size(); i += 97) {
      ForwardItem it{&a, std::span<const int32_t>(ids).subspan(i, std::min<size_t>(97, ids.size() - i)), true};
      m.forward(std::span<const ForwardItem>(&it, 1), whole);
    }
    // Resume from a's first two blocks (positions 0..511) and compute the rest.
    SequenceState b(m.config(), &pool);
    b.resume_from_blocks({a.blocks()[0], a.blocks()[1]});
    EXPECT_EQ(b.pos, 512);
    std::vector<float> rest;
    ForwardItem it{&b, std::span<const int32_t>(ids).subspan(512), true};
    m.forward(std::span<const ForwardItem>(&it, 1), rest);
    const size_t V = size_t(m.config().vocab_size);
    ASSERT_EQ(rest.size(), (ids.size() - 512) * V);
    double num2 = 0, den = 0;
    for (size_t i = 0; i < rest.size(); ++i) {
      double d = double(rest[i]) - whole[512 * V + i];
      num2 += d * d;
      den += double(whole[512 * V + i]) * whole[512 * V + i];
    }
    EXPECT_LE(std::sqrt(num2 / den), 1e-5) << (num == Numerics::Exact ? "exact" : "reference");
    EXPECT_EQ(pool.refcount(a.blocks()[0]), 2);
  }
}
