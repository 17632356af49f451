#include "runtime/step_plan.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace dsv4 {

namespace {

class Writer {
 public:
  template <typename T>
  void put(T v) {
    s_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  template <typename T>
  void vec(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    s_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  std::string s_;
};

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, s_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  template <typename T>
  std::vector<T> vec() {
    const uint64_t n = get<uint64_t>();
    if (n > (s_.size() - at_) / sizeof(T)) fail("step plan: truncated (a vector of {} elements)", n);
    std::vector<T> v(static_cast<size_t>(n));
    std::memcpy(v.data(), s_.data() + at_, size_t(n) * sizeof(T));
    at_ += size_t(n) * sizeof(T);
    return v;
  }
  bool done() const { return at_ == s_.size(); }

 private:
  void need(size_t n) {
    if (s_.size() - at_ < n) fail("step plan: truncated at byte {}", at_);
  }
  const std::string& s_;
  size_t at_ = 0;
};

constexpr uint32_t kMagic = 0x50345344;  // "DS4P"

}  // namespace

std::string StepPlan::serialize() const {
  Writer w;
  w.put(kMagic);
  w.put(step);
  w.put<uint64_t>(batch.items.size());
  for (const StepItem& it : batch.items) {
    w.put(it.slot);
    w.put(it.start);
    w.put(uint8_t(it.logits));
    w.vec(it.tokens);
    w.vec(it.blocks);
    w.vec(it.hidden);
  }
  w.put(uint8_t(batch.mtp));
  w.put(uint8_t(batch.dspark));
  w.put(uint8_t(batch.keep_hidden));
  w.vec(copies);
  return std::move(w.s_);
}

StepPlan StepPlan::deserialize(const std::string& bytes) {
  Reader r(bytes);
  if (r.get<uint32_t>() != kMagic) fail("step plan: bad magic (not a dsv4 step plan, or another version)");
  StepPlan p;
  p.step = r.get<uint64_t>();
  const uint64_t n = r.get<uint64_t>();
  if (n > bytes.size()) fail("step plan: {} items in {} bytes", n, bytes.size());
  p.batch.items.resize(size_t(n));
  for (StepItem& it : p.batch.items) {
    it.slot = r.get<int32_t>();
    it.start = r.get<int64_t>();
    const uint8_t lr = r.get<uint8_t>();
    if (lr > uint8_t(LogitRows::All)) fail("step plan: bad logits mode {}", lr);
    it.logits = LogitRows(lr);
    it.tokens = r.vec<int32_t>();
    it.blocks = r.vec<int32_t>();
    it.hidden = r.vec<int32_t>();
  }
  p.batch.mtp = r.get<uint8_t>() != 0;
  const uint8_t ds = r.get<uint8_t>();
  if (ds > uint8_t(DSparkPass::Markov)) fail("step plan: bad DSpark pass {}", ds);
  p.batch.dspark = DSparkPass(ds);
  p.batch.keep_hidden = r.get<uint8_t>() != 0;
  p.copies = r.vec<ArenaCopy>();
  if (!r.done()) fail("step plan: trailing bytes");
  return p;
}

void append_resume_copies(const KvLayout& layout, int32_t slot, int32_t block, int64_t end,
                          std::vector<ArenaCopy>& out) {
  const KvArenaShape& S = layout.shape;
  DSV4_CHECK(S.with_tail, "resuming from cached blocks needs a KV layout made for prefix caching");
  DSV4_CHECK(end % S.block_tokens == 0 && end >= S.window, "resume position {} is not a block end", end);
  const int64_t b0 = S.block_offset(block), s0 = S.slot_offset(slot), eb = S.main.bytes();
  for (const KvLayerOffsets& L : layout.layers) {
    for (int64_t t = end - S.window; t < end; ++t)
      out.push_back({b0 + L.tail_off + (t - (end - S.window)) * eb, s0 + L.ring_off + (t % S.window) * eb, eb});
    if (L.ratio == 4) {  // the next entry's A halves: tokens end-4 .. end-1, ring slot t % 8
      for (int idx = 0; idx < 2; ++idx) {
        const int64_t rec = KvArenaShape::ring_token_floats(4, idx ? S.index_d : S.main_d) * 4;
        const int64_t src = idx ? L.istate_off : L.cstate_off, dst = idx ? L.iring_off : L.cring_off;
        for (int64_t t = end - 4; t < end; ++t)
          out.push_back({b0 + src + (t - (end - 4)) * rec, s0 + dst + (t % 8) * rec, rec});
      }
    }
  }
}

std::vector<SpecSave> spec_saves(const KvLayout& layout, int32_t slot, std::span<const int32_t> blocks, int l0,
                                 int l1, int64_t first, int n, int64_t area) {
  const KvArenaShape& S = layout.shape;
  DSV4_CHECK(layout.save_off >= 0, "speculative saves need a KV layout with a save area");
  DSV4_CHECK(l0 >= 0 && l1 <= int(layout.layers.size()) && n <= layout.spec.draft_tokens,
             "speculative saves: layers [{}, {}) / {} positions out of the layout", l0, l1, n);
  const int64_t s0 = S.slot_offset(slot), eb = S.main.bytes(), bt = S.block_tokens;
  int64_t at = s0 + layout.save_off + area;
  std::vector<SpecSave> out;
  auto add = [&](int64_t pos, int64_t src, int64_t bytes) {
    out.push_back({pos, {src, at, bytes}});
    at += bytes;
  };
  auto block = [&](int64_t p) {
    DSV4_CHECK(p / bt < int64_t(blocks.size()), "speculative saves: position {} has no KV block", p);
    return S.block_offset(blocks[size_t(p / bt)]);
  };
  for (int64_t p = first; p < first + n; ++p)
    for (int l = l0; l < l1; ++l) {
      const KvLayerOffsets& L = layout.layers[size_t(l)];
      add(p, s0 + L.ring_off + (p % S.window) * eb, eb);
      if (L.ratio) {
        const int64_t r = L.ratio, ntok = KvArenaShape::ring_tokens(L.ratio);
        for (int idx = 0; idx < (r == 4 ? 2 : 1); ++idx) {
          const int64_t rec = KvArenaShape::ring_token_floats(L.ratio, idx ? S.index_d : S.main_d) * 4;
          add(p, s0 + (idx ? L.iring_off : L.cring_off) + (p % ntok) * rec, rec);
        }
        if ((p + 1) % r == 0) {  // entry j = p / r completes here
          const int64_t j = p / r, per = bt / r;
          add(p, block(p) + L.comp_off + (j % per) * eb, eb);
          if (r == 4) add(p, block(p) + L.idx_off + (j % per) * S.index.bytes(), S.index.bytes());
        }
      }
      if (S.with_tail && (p + 1) % bt == 0) {  // a block end: its tail and ratio-4 snapshots
        add(p, block(p) + L.tail_off, S.window * eb);
        if (L.ratio == 4) {
          add(p, block(p) + L.cstate_off, 4 * KvArenaShape::ring_token_floats(4, S.main_d) * 4);
          add(p, block(p) + L.istate_off, 4 * KvArenaShape::ring_token_floats(4, S.index_d) * 4);
        }
      }
    }
  DSV4_CHECK(at - (s0 + layout.save_off) <= layout.save_bytes, "speculative saves overflow the save area");
  return out;
}

void append_spec_saves(std::span<const SpecSave> saves, std::vector<ArenaCopy>& out) {
  for (const SpecSave& s : saves) out.push_back(s.save);
}

void append_spec_restores(std::span<const SpecSave> saves, int64_t from, std::vector<ArenaCopy>& out) {
  for (const SpecSave& s : saves)
    if (s.pos >= from) out.push_back({s.save.dst, s.save.src, s.save.bytes});
}

std::vector<StepBatch> split_micro_batches(const StepBatch& batch, int n) {
  DSV4_CHECK(n >= 1, "micro-batches: {} requested", n);
  const int64_t items = int64_t(batch.items.size()), total = batch.rows();
  n = int(std::min<int64_t>(n, std::max<int64_t>(items, 1)));
  std::vector<StepBatch> out(static_cast<size_t>(n));
  for (auto& b : out) b.mtp = batch.mtp, b.dspark = batch.dspark, b.keep_hidden = batch.keep_hidden;
  // Group k closes before item i when stopping short of its share (k + 1) / n of the tokens lands nearer the
  // share than taking i would, or when each later group needs one of the items left.
  int64_t done = 0;
  size_t k = 0;
  for (int64_t i = 0; i < items; ++i) {
    const int64_t t = int64_t(batch.items[size_t(i)].tokens.size()), share = total * int64_t(k + 1);
    const int64_t later = n - int64_t(k) - 1;
    if (later > 0 && !out[k].items.empty() && (items - i == later || (done + t) * n - share > share - done * n)) ++k;
    out[k].items.push_back(batch.items[size_t(i)]);
    done += t;
  }
  return out;
}

}  // namespace dsv4
