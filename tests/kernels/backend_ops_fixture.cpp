#include "backend_ops_fixture.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/dtype.h"

namespace dsv4::test {

void BackendOps::SetUp() {
  const std::string& name = GetParam();
  if (name == "cpu") {
    be = make_cpu_backend();
  } else if (name == "cpu_guard") {
    // Every op again with backend memory locked outside calls: an op that forgot its guard scope crashes.
    setenv("DSV4_GUARD_BACKEND_MEMORY", "1", 1);
    be = make_cpu_backend();
    unsetenv("DSV4_GUARD_BACKEND_MEMORY");
  } else if (name == "cuda") {
    std::string why;
    be = make_cuda_backend(0, &why);
    if (!be) GTEST_SKIP() << "cuda backend not tested: " << why;
  }
  ASSERT_TRUE(be) << name;
}

// Tolerances. The CPU backend sums in fp32 where the reference sums in double: 1e-5 of the values' scale.
// CUDA (documented expectations for its kernels): different summation orders (tiled GEMM, warp reductions, fast
// exp) give 1e-3 on long dot products (linear, moe, attention, hc mixes) and 1e-4 on short ones; byte formats
// (KV stores, rings, snapshots) and top-k indices must be identical on every backend.
double BackendOps::tol(const std::string& op) const {
  if (!is_cuda()) return 1e-5;
  static const std::map<std::string, double> cuda{
      {"linear", 1e-3}, {"moe", 1e-3},      {"attention", 1e-3}, {"hc", 1e-4},     {"rms_norm", 1e-5},
      {"rope", 1e-5},   {"compress", 1e-4}, {"route", 1e-5},     {"rounding", 0.0}};
  auto it = cuda.find(op);
  return it == cuda.end() ? 1e-3 : it->second;
}

void BackendOps::expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol,
                              const std::string& what, double flip_frac, double flip_tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double ss = 0;
  for (float v : ref) ss += double(v) * v;
  const double rms = ref.empty() ? 0 : std::sqrt(ss / double(ref.size()));
  size_t flips = 0, bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]), scale = std::max(std::fabs(double(ref[i])), rms);
    if (!(err <= tol * scale)) {
      if (err <= flip_tol * scale) {
        ++flips;
      } else if (bad++ < 8) {
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", reference " << ref[i] << " (scale " << scale
                      << ", tol " << tol << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": elements outside tolerance";
  EXPECT_LE(double(flips), flip_frac * double(ref.size())) << what << ": " << flips << " rounding flips";
}

void BackendOps::check_linear_every_option(const std::vector<float>& x, int64_t M, const ref::Weight& w, int groups,
                                           const std::string& what) {
  const LinearWeight lw = upload_weight(w);
  const int64_t in = int64_t(x.size()) / M;
  Tensor xt = up(x, DType::F32, {M, in});
  for (int opt = 0; opt < 4; ++opt) {
    LinearOpts o;
    o.act_fp8 = opt & 1;
    o.out_bf16 = opt & 2;
    o.groups = groups;
    Tensor yt = zeros(DType::F32, {M, lw.out});
    be->linear(xt, lw, yt, o);
    expect_close(down<float>(yt), ref::linear(x, M, w, o), tol("linear"),
                 what + " act_fp8=" + std::to_string(o.act_fp8) + " out_bf16=" + std::to_string(o.out_bf16),
                 o.out_bf16 ? 0.01 : 0, 1e-2);
  }
}

LinearWeight BackendOps::upload_weight(const ref::Weight& w) {
  LinearWeight lw;
  lw.fmt = w.fmt;
  lw.out = w.out;
  lw.in = w.in;
  lw.block = w.block;
  switch (w.fmt) {
    case WeightFormat::F32: lw.data = up(w.data, DType::F32, {w.out, w.in}); break;
    case WeightFormat::BF16: lw.data = up(w.data, DType::BF16, {w.out, w.in}); break;
    case WeightFormat::FP8Block: lw.data = up(w.data, DType::F8_E4M3, {w.out, w.in}); break;
    case WeightFormat::FP4Group32: lw.data = up(w.data, DType::U8, {w.out, w.in / 2}); break;
  }
  lw.scale_cols = w.scale_cols;
  if (!w.scale32.empty()) {
    lw.scale = up(w.scale32, DType::F32, {int64_t(w.scale32.size()) / w.scale_cols, w.scale_cols});
  } else if (!w.scale8.empty()) {
    lw.scale = up(w.scale8, DType::F8_E8M0, {int64_t(w.scale8.size()) / w.scale_cols, w.scale_cols});
  }
  return lw;
}

KvLayerView BackendOps::upload_arena(const ref::Arena& a) {
  KvLayerView v;
  v.arena = up(a.bytes, DType::U8, {int64_t(a.bytes.size())});
  v.shape = a.shape;
  v.layer = a.layer;
  return v;
}

BatchMeta BackendOps::upload_meta(const ref::Batch& b) {
  BatchMeta m;
  m.M = b.M();
  m.n_items = int64_t(b.items.size());
  for (const auto& it : b.items) m.max_blocks = std::max<int64_t>(m.max_blocks, int64_t(it.blocks.size()));
  m.max_blocks = std::max<int64_t>(m.max_blocks, 1);
  std::vector<int32_t> row_item(size_t(m.M), 0), items, table(size_t(m.n_items * m.max_blocks), 0);
  for (size_t i = 0; i < b.items.size(); ++i) {
    const auto& it = b.items[i];
    for (int t = 0; t < it.len; ++t) row_item[size_t(it.row0 + t)] = int32_t(i);
    items.insert(items.end(), {it.start, it.row0, it.len, it.slot});
    std::copy(it.blocks.begin(), it.blocks.end(), table.begin() + int64_t(i) * m.max_blocks);
  }
  m.pos = up(b.pos(), DType::I32, {m.M});
  m.row_item = up(row_item, DType::I32, {m.M});
  m.items = up(items, DType::I32, {m.n_items, BatchMeta::kItemFields});
  m.block_table = up(table, DType::I32, {m.n_items, m.max_blocks});
  return m;
}

EntryList BackendOps::upload_entries(const std::vector<ref::Entry>& e) {
  EntryList l;
  l.n = int64_t(e.size());
  std::vector<int32_t> row, item, index, pos;
  for (const auto& x : e) {
    row.push_back(x.row);
    item.push_back(x.item);
    index.push_back(x.index);
    pos.push_back(x.pos);
  }
  const int64_t n = std::max<int64_t>(l.n, 1);  // a zero-size tensor still needs a buffer
  row.resize(size_t(n));
  item.resize(size_t(n));
  index.resize(size_t(n));
  pos.resize(size_t(n));
  l.row = up(row, DType::I32, {n});
  l.item = up(item, DType::I32, {n});
  l.index = up(index, DType::I32, {n});
  l.pos = up(pos, DType::I32, {n});
  return l;
}

SnapshotList BackendOps::upload_snaps(const std::vector<std::pair<int, int>>& s) {
  SnapshotList l;
  l.n = int64_t(s.size());
  std::vector<int32_t> item, end;
  for (auto [i, e] : s) {
    item.push_back(i);
    end.push_back(e);
  }
  const int64_t n = std::max<int64_t>(l.n, 1);
  item.resize(size_t(n));
  end.resize(size_t(n));
  l.item = up(item, DType::I32, {n});
  l.end = up(end, DType::I32, {n});
  return l;
}

ref::Weight random_weight(Rng& r, WeightFormat fmt, int64_t out, int64_t in, bool f32_scale) {
  ref::Weight w;
  w.fmt = fmt;
  w.out = out;
  w.in = in;
  switch (fmt) {
    case WeightFormat::F32: {
      auto v = r.vec(size_t(out * in));
      w.data.resize(v.size() * 4);
      std::memcpy(w.data.data(), v.data(), w.data.size());
      break;
    }
    case WeightFormat::BF16: {
      w.data.resize(size_t(out * in) * 2);
      for (int64_t i = 0; i < out * in; ++i) {
        uint16_t h = f32_to_bf16(r.uni());
        std::memcpy(w.data.data() + 2 * i, &h, 2);
      }
      break;
    }
    case WeightFormat::FP8Block: {
      w.data.resize(size_t(out * in));
      for (auto& b : w.data) {
        b = uint8_t(r.next());
        if ((b & 0x7f) == 0x7f) b = 0x7e;  // no NaN codes in checkpoints
      }
      w.scale_cols = (in + 127) / 128;
      const int64_t n = (out + 127) / 128 * w.scale_cols;
      if (f32_scale) {
        for (int64_t i = 0; i < n; ++i) w.scale32.push_back(std::ldexp(1.f, -8 - int(r.below(4))) * (1 + r.uni(0, 1)));
      } else {
        for (int64_t i = 0; i < n; ++i) w.scale8.push_back(uint8_t(119 + r.below(4)));
      }
      break;
    }
    case WeightFormat::FP4Group32: {
      w.data.resize(size_t(out * in / 2));
      for (auto& b : w.data) b = uint8_t(r.next());
      w.scale_cols = in / 32;
      for (int64_t i = 0; i < out * w.scale_cols; ++i) w.scale8.push_back(uint8_t(122 + r.below(4)));
      break;
    }
  }
  return w;
}

KvCodec main_codec(KvDtype t, int dim, int rope) {
  KvCodec c;
  c.dtype = t;
  c.dim = dim;
  c.rope = rope;
  return c;
}

KvCodec index_codec(KvDtype t, int dim) {
  KvCodec c;
  c.dtype = t;
  c.dim = dim;
  c.index_key = true;
  return c;
}

ref::Arena random_arena(Rng& r, int ratio, int bt, int window, KvCodec main, KvCodec index, bool with_tail,
                        int n_blocks, int n_slots, bool integer_keys) {
  ref::Arena a;
  KvArenaShape& s = a.shape;
  KvLayerOffsets& l = a.layer;
  s.block_tokens = bt;
  s.window = window;
  s.with_tail = with_tail;
  s.main = main;
  s.index = index;
  s.main_d = main.dim;
  s.index_d = index.dim;
  l.ratio = ratio;
  auto align = [](int64_t x) { return (x + 15) / 16 * 16; };
  // Regions of a block, then of a slot, each 16-byte aligned.
  int64_t off = 0;
  auto take = [&](int64_t* at, int64_t bytes) {
    *at = off;
    off = align(off + bytes);
  };
  if (ratio) take(&l.comp_off, bt / ratio * main.bytes());
  if (ratio == 4) take(&l.idx_off, bt / 4 * index.bytes());
  if (with_tail) take(&l.tail_off, window * main.bytes());
  if (with_tail && ratio == 4) {
    take(&l.cstate_off, 4 * KvArenaShape::ring_token_floats(4, main.dim) * 4);
    take(&l.istate_off, 4 * KvArenaShape::ring_token_floats(4, index.dim) * 4);
  }
  s.block_bytes = std::max<int64_t>(off, 16);
  s.n_blocks = n_blocks;
  off = 0;
  take(&l.ring_off, window * main.bytes());
  if (ratio)
    take(&l.cring_off, KvArenaShape::ring_tokens(ratio) * KvArenaShape::ring_token_floats(ratio, main.dim) * 4);
  if (ratio == 4) take(&l.iring_off, 8 * KvArenaShape::ring_token_floats(4, index.dim) * 4);
  s.slot_bytes = off;
  s.slots_offset = s.n_blocks * s.block_bytes;
  s.n_slots = n_slots;
  a.bytes.assign(size_t(s.arena_bytes()), 0);

  auto vectors = [&](uint8_t* dst, int64_t n, const KvCodec& c, bool ints) {
    std::vector<float> v(size_t(c.dim));
    for (int64_t i = 0; i < n; ++i) {
      for (auto& x : v) x = ints ? float(r.below(9) - 4) : r.uni();
      c.encode(v.data(), dst + i * c.bytes());
    }
  };
  auto floats = [&](uint8_t* dst, int64_t bytes) {
    auto v = r.vec(size_t(bytes / 4));
    std::memcpy(dst, v.data(), size_t(bytes / 4) * 4);
  };
  for (int b = 0; b < n_blocks; ++b) {
    if (ratio) vectors(a.block(b, l.comp_off), bt / ratio, main, false);
    if (ratio == 4) vectors(a.block(b, l.idx_off), bt / 4, index, integer_keys);
    if (with_tail) vectors(a.block(b, l.tail_off), window, main, false);
    if (l.cstate_off >= 0) floats(a.block(b, l.cstate_off), 4 * KvArenaShape::ring_token_floats(4, main.dim) * 4);
    if (l.istate_off >= 0) floats(a.block(b, l.istate_off), 4 * KvArenaShape::ring_token_floats(4, index.dim) * 4);
  }
  for (int sl = 0; sl < n_slots; ++sl) {
    vectors(a.slot(sl, l.ring_off), window, main, false);
    if (ratio)
      floats(a.slot(sl, l.cring_off),
             KvArenaShape::ring_tokens(ratio) * KvArenaShape::ring_token_floats(ratio, main.dim) * 4);
    if (ratio == 4) floats(a.slot(sl, l.iring_off), 8 * KvArenaShape::ring_token_floats(4, index.dim) * 4);
  }
  return a;
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::Values("cpu", "cpu_guard", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace dsv4::test
