#include "runtime/step_plan.h"

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
  }
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
  }
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

}  // namespace dsv4
