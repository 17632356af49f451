#include "model/weights.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>

#include "core/error.h"
#include "kernels/rope_table.h"
#include "model/weight_schema.h"

namespace dsv4 {

ShardRange shard_range(int64_t n, const Placement& p, ShardKind kind, const std::string& what) {
  if (kind == ShardKind::Replicated || p.size == 1) return {0, n};
  if (n % p.size) fail("{}: dimension {} does not split evenly across {} ranks", what, n, p.size);
  const int64_t c = n / p.size;
  return {int64_t(p.rank) * c, c};
}

namespace {

// Collects every tensor's bytes first and places them at the end, so that host-side conversions (fp32 copies
// of small tensors, column slices) are done before any buffer is handed to the backend (whose memory the host
// may not touch afterwards; see DSV4_GUARD_BACKEND_MEMORY).
class Placer {
 public:
  // be == nullptr: measuring only (ModelWeights::measure): tensors are counted, nothing is copied or placed.
  Placer(Backend* be, ModelWeights& mw)
      : be_(be), ckpt_(mw.ckpt.get()), buffers_(mw.buffers), placed_(mw.placed_bytes), tensors_(mw.tensor_bytes),
        imported_out_(&mw.imported) {}
  // EPLB's expert sets: views into the model's imported mappings, else uploads into the set's own buffers.
  Placer(Backend* be, const ModelWeights& mw, ExpertSet& set)
      : be_(be), buffers_(set.buffers), placed_(set.placed_bytes), tensors_(set.tensor_bytes), imported_(mw.imported) {}
  bool measuring() const { return be_ == nullptr; }

  // A tensor whose bytes are host-made (converted or gathered): staged, uploaded at finish().
  void staged(Tensor* t, DType dt, std::initializer_list<int64_t> shape, const void* src, size_t bytes) {
    staged_bytes_ += bytes;
    if (measuring()) {
      *t = Tensor(nullptr, 0, dt, shape);
      return;
    }
    const size_t off = (staging_.size() + 255) / 256 * 256;
    staging_.resize(off + bytes);
    std::memcpy(staging_.data() + off, src, bytes);
    *t = Tensor(nullptr, int64_t(off), dt, shape);
    staged_.push_back(t);
  }
  // A tensor that is a byte range of the checkpoint mapping: imported (zero copy) or uploaded at finish().
  void mapped(Tensor* t, const TensorInfo& info, int64_t byte_off, DType dt, std::initializer_list<int64_t> shape) {
    *t = Tensor(nullptr, 0, dt, shape);
    mapped_.push_back({t, info.data + byte_off, info.file});
  }

  void finish(const LoadProgress& progress) {
    uint64_t tensors = staged_bytes_;
    for (auto& m : mapped_) tensors += uint64_t(m.t->nbytes());
    tensors_ = tensors;
    if (measuring()) return;
    uint64_t total = staging_.size();
    for (auto& m : mapped_) total += uint64_t(m.t->nbytes());
    Backend& be = *be_;
    uint64_t done = 0;
    auto report = [&](uint64_t n) {
      done += n;
      if (progress.on_bytes) progress.on_bytes(done, total);
    };
    if (!staging_.empty()) {
      auto buf = be.alloc(staging_.size(), BufferUsage::Weights);
      be.upload(Tensor(buf.get(), 0, DType::U8, {int64_t(staging_.size())}), staging_.data(), staging_.size());
      for (Tensor* t : staged_) t->buf = buf.get();
      placed_ += staging_.size();
      report(staging_.size());
      buffers_.push_back(std::move(buf));
      std::vector<uint8_t>().swap(staging_);
    }
    // Zero copy where the backend addresses host memory: one buffer per checkpoint file.
    std::map<const std::string*, Buffer*>& imported = imported_;
    if (ckpt_)
      for (auto& f : ckpt_->files()) {
        auto buf = be.import_host(f->mapping(), f->file_size(), BufferUsage::Weights);
        if (!buf) break;
        imported[&f->path()] = buf.get();
        placed_ += f->file_size();
        buffers_.push_back(std::move(buf));
      }
    if (imported_out_) *imported_out_ = imported;
    if (!imported.empty()) {
      for (auto& m : mapped_) {
        Buffer* b = imported.at(m.file);
        m.t->buf = b;
        m.t->offset = m.src - b->base();
      }
      report(total - done);
      return;
    }
    // Otherwise one device buffer for every mapped tensor, filled in checkpoint order.
    uint64_t bytes = 0;
    for (auto& m : mapped_) bytes = (bytes + 255) / 256 * 256 + uint64_t(m.t->nbytes());
    auto buf = be.alloc(bytes, BufferUsage::Weights);
    uint64_t off = 0;
    for (auto& m : mapped_) {
      off = (off + 255) / 256 * 256;
      m.t->buf = buf.get();
      m.t->offset = int64_t(off);
      be.upload(*m.t, m.src, size_t(m.t->nbytes()));
      off += uint64_t(m.t->nbytes());
      report(uint64_t(m.t->nbytes()));
    }
    placed_ += bytes;
    buffers_.push_back(std::move(buf));
  }

  // Asks the kernel to read every mapped tensor's checkpoint pages in ahead (MADV_WILLNEED: no access from
  // here, so it holds under guard mode, where the imported mapping is backend memory).
  void prefetch_sources() const {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    for (auto& m : mapped_) {
      const uintptr_t lo = uintptr_t(m.src) / page * page, hi = uintptr_t(m.src) + uintptr_t(m.t->nbytes());
      if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_WILLNEED);  // a hint: failure is harmless
    }
  }

 private:
  struct Mapped {
    Tensor* t;
    const uint8_t* src;
    const std::string* file;
  };
  Backend* be_;
  const Checkpoint* ckpt_ = nullptr;  // imported at finish() (a model load)
  std::vector<std::unique_ptr<Buffer>>& buffers_;
  uint64_t& placed_;
  uint64_t& tensors_;
  std::map<const std::string*, Buffer*> imported_;
  std::map<const std::string*, Buffer*>* imported_out_ = nullptr;
  uint64_t staged_bytes_ = 0;  // unpadded, as the tensors' own sizes
  std::vector<uint8_t> staging_;
  std::vector<Tensor*> staged_;
  std::vector<Mapped> mapped_;
};

// Where the loader finds tensors by name: the checkpoint, or the dummy tensors of --load-format dummy.
struct TensorSource {
  std::function<const TensorInfo*(const std::string&)> find;
  const TensorInfo& get(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (!t) fail("missing tensor '{}'", name);
    return *t;
  }
};

class Loader {
 public:
  Loader(const TensorSource& ck, Placer& placer, Placement p, int64_t block) : ck_(ck), pl_(placer), p_(p), block_(block) {}

  const TensorInfo& tensor(const std::string& name, std::vector<int64_t> shape) {
    const TensorInfo& t = ck_.get(name);
    if (t.shape != shape) {
      TensorInfo want;
      want.shape = shape;
      fail("{}: tensor '{}' has shape {}, expected {}", *t.file, name, t.shape_str(), want.shape_str());
    }
    return t;
  }

  // A small fp32 vector or matrix (F32 or BF16 in the checkpoint), optionally split along its first dim.
  void vec(Tensor* dst, const std::string& name, std::vector<int64_t> shape, ShardKind kind = ShardKind::Replicated) {
    const TensorInfo& t = tensor(name, shape);
    if (t.dtype != DType::F32 && t.dtype != DType::BF16)
      fail("{}: tensor '{}' has dtype {}, expected F32 or BF16", *t.file, t.name, dtype_name(t.dtype));
    const int64_t inner = t.numel() / shape[0];
    const ShardRange r = shard_range(shape[0], p_, kind, name);
    std::vector<float> v(size_t(r.count * inner));
    for (size_t i = 0; i < v.size(); ++i) {
      const size_t src = size_t(r.begin * inner) + i;
      if (t.dtype == DType::F32) {
        std::memcpy(&v[i], t.data + 4 * src, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * src, 2);
        v[i] = bf16_to_f32(h);
      }
    }
    if (shape.size() == 1) pl_.staged(dst, DType::F32, {r.count}, v.data(), v.size() * 4);
    else pl_.staged(dst, DType::F32, {r.count, inner}, v.data(), v.size() * 4);
  }

  // Writes into *dst in place: the placer keeps pointers to its tensors.
  void linear(LinearWeight* dst, const std::string& prefix, int64_t out, int64_t in,
              ShardKind kind = ShardKind::Replicated) {
    const TensorInfo& w = ck_.get(prefix + ".weight");
    const TensorInfo* s = ck_.find(prefix + ".scale");
    LinearWeight& lw = *dst;
    auto bad = [&](const std::string& why) {
      TensorInfo want;
      want.shape = {out, in};
      fail("{}: tensor '{}' ({} {}): {} (logical shape {})", *w.file, w.name, dtype_name(w.dtype), w.shape_str(),
           why, want.shape_str());
    };
    int64_t scale_rows = 0, scale_cols = 0, elem_div = 1;  // elem_div: logical elements per stored byte (FP4: 2)
    DType data_dtype = w.dtype;
    switch (w.dtype) {
      case DType::F32:
      case DType::BF16:
        if (w.shape != std::vector<int64_t>{out, in}) bad("wrong shape");
        lw.fmt = w.dtype == DType::F32 ? WeightFormat::F32 : WeightFormat::BF16;
        break;
      case DType::F8_E4M3: {
        if (w.shape != std::vector<int64_t>{out, in}) bad("wrong shape");
        if (!s) fail("{}: FP8 tensor '{}' has no '{}.scale'", *w.file, w.name, prefix);
        lw.fmt = WeightFormat::FP8Block;
        const int64_t B = block_;
        std::vector<int64_t> ss{(out + B - 1) / B, (in + B - 1) / B};
        if (s->shape != ss) bad(fmt::format("scale shape {} does not tile it by {}", s->shape_str(), B));
        if (s->dtype != DType::F8_E8M0 && s->dtype != DType::F32) bad("scale dtype is neither F8_E8M0 nor F32");
        lw.block = int(B);
        scale_rows = ss[0];
        scale_cols = ss[1];
        break;
      }
      case DType::I8:
      case DType::U8: {
        if (w.shape != std::vector<int64_t>{out, in / 2} || in % 32) bad("wrong packed FP4 shape");
        if (!s || s->dtype != DType::F8_E8M0 || s->shape != std::vector<int64_t>{out, in / 32})
          bad("FP4 weight needs an F8_E8M0 scale [out, in/32]");
        lw.fmt = WeightFormat::FP4Group32;
        data_dtype = DType::U8;
        scale_rows = out;
        scale_cols = in / 32;
        elem_div = 2;
        break;
      }
      default: bad("unsupported dtype for a linear weight");
    }
    const DType scale_dtype = s && s->dtype == DType::F32 ? DType::F32 : DType::U8;
    const ShardRange ro = shard_range(out, p_, kind == ShardKind::SplitOut ? kind : ShardKind::Replicated, prefix);
    const ShardRange ri = shard_range(in, p_, kind == ShardKind::SplitIn ? kind : ShardKind::Replicated, prefix);
    lw.out = ro.count;
    lw.in = ri.count;
    const int64_t esz = int64_t(dtype_size(w.dtype));
    if (ri.count == in) {
      // Whole rows: the slice is a contiguous byte range of the mapping (scale tiles too; row0 marks where the
      // slice starts inside its first FP8 tile).
      const int64_t row_bytes = in * esz / elem_div;
      pl_.mapped(&lw.data, w, ro.begin * row_bytes, data_dtype, {ro.count, in / elem_div});
      if (lw.fmt == WeightFormat::FP8Block) {
        const int64_t t0 = ro.begin / block_, t1 = (ro.begin + ro.count + block_ - 1) / block_;
        lw.row0 = ro.begin - t0 * block_;
        pl_.mapped(&lw.scale, *s, t0 * scale_cols * int64_t(dtype_size(s->dtype)), scale_dtype, {t1 - t0, scale_cols});
      } else if (lw.fmt == WeightFormat::FP4Group32) {
        pl_.mapped(&lw.scale, *s, ro.begin * scale_cols, DType::U8, {ro.count, scale_cols});
      }
      (void)scale_rows;
    } else {
      // A column slice (row-parallel linear): gathered on the host. Quantized formats need the cut on their
      // scale groups.
      const int64_t group = lw.fmt == WeightFormat::FP8Block ? block_ : lw.fmt == WeightFormat::FP4Group32 ? 32 : 1;
      // Whole scale groups, or a slice inside one group (it keeps that group's scale: column j of the slice
      // still finds its scale at j / group = 0).
      const bool inside_one = ri.begin / group == (ri.begin + ri.count - 1) / group;
      if ((ri.begin % group || ri.count % group) && !inside_one)
        fail("{}: column slice [{}, {}) is not on the {}-column scale groups", prefix, ri.begin, ri.begin + ri.count,
             group);
      const int64_t src_row = in * esz / elem_div, dst_row = ri.count * esz / elem_div, off = ri.begin * esz / elem_div;
      std::vector<uint8_t> buf(pl_.measuring() ? 0 : size_t(ro.count * dst_row));
      for (int64_t r = 0; r < ro.count && !pl_.measuring(); ++r)
        std::memcpy(buf.data() + r * dst_row, w.data + (ro.begin + r) * src_row + off, size_t(dst_row));
      pl_.staged(&lw.data, data_dtype, {ro.count, dst_row / int64_t(dtype_size(data_dtype))}, buf.data(),
                 size_t(ro.count * dst_row));
      if (lw.quantized()) {
        const int64_t ss = int64_t(dtype_size(s->dtype)), rows = scale_rows, c0 = ri.begin / group,
                      cn = (ri.count + group - 1) / group;
        std::vector<uint8_t> sb(size_t(rows * cn * ss));
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(sb.data() + r * cn * ss, s->data + (r * scale_cols + c0) * ss, size_t(cn * ss));
        pl_.staged(&lw.scale, scale_dtype, {rows, cn}, sb.data(), sb.size());
        scale_cols = cn;
      }
    }
    lw.scale_cols = scale_cols;
  }

  // A routed expert (`p` = "layers.N.ffn.experts.E."), cut by width unless whole (expert parallelism).
  void expert(ExpertWeights* ew, const std::string& p, int64_t inter, int64_t D, bool whole) {
    const ShardKind out_cut = whole ? ShardKind::Replicated : ShardKind::SplitOut;
    const ShardKind in_cut = whole ? ShardKind::Replicated : ShardKind::SplitIn;
    linear(&ew->w1, p + "w1", inter, D, out_cut);
    linear(&ew->w2, p + "w2", D, inter, in_cut);
    linear(&ew->w3, p + "w3", inter, D, out_cut);
  }

  void hc(HcWeights* h, const std::string& p, int64_t rows, int64_t flat, int64_t nscale) {
    vec(&h->fn, p + "_fn", {rows, flat});
    vec(&h->base, p + "_base", {rows});
    vec(&h->scale, p + "_scale", {nscale});
  }

  void compressor(CompressorWeights* c, const std::string& p, int ratio, int d, int64_t D) {
    c->ratio = ratio;
    c->d = d;
    c->coff = ratio == 4 ? 2 : 1;
    linear(&c->wkv, p + ".wkv", c->coff * d, D);
    linear(&c->wgate, p + ".wgate", c->coff * d, D);
    vec(&c->ape, p + ".ape", {ratio, c->coff * d});
    vec(&c->norm, p + ".norm.weight", {d});
  }

  void tid2eid(Tensor* dst, const std::string& name, int64_t V, int64_t k, int64_t E) {
    const TensorInfo& t = tensor(name, {V, k});
    std::vector<int32_t> v(size_t(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) {
      int64_t x;
      if (t.dtype == DType::I64) {
        std::memcpy(&x, t.data + 8 * i, 8);
      } else if (t.dtype == DType::I32) {
        int32_t x32;
        std::memcpy(&x32, t.data + 4 * i, 4);
        x = x32;
      } else {
        fail("{}: '{}' must be I64 or I32", *t.file, t.name);
      }
      if (x < 0 || x >= E) fail("{}: '{}' holds expert id {} out of range", *t.file, t.name, x);
      v[i] = int32_t(x);
    }
    pl_.staged(dst, DType::I32, {V, k}, v.data(), v.size() * 4);
  }

  void embed(Tensor* dst, int64_t V, int64_t D) {
    const TensorInfo& emb = tensor("embed.weight", {V, D});
    if (emb.dtype != DType::BF16 && emb.dtype != DType::F32) fail("{}: embed.weight must be BF16 or F32", *emb.file);
    pl_.mapped(dst, emb, 0, emb.dtype, {V, D});
  }

 private:
  const TensorSource& ck_;
  Placer& pl_;
  Placement p_;
  int64_t block_;
};

}  // namespace

namespace {

void place_all(const ModelConfig& c, const TensorSource& src, Backend* be, ModelWeights* mw, Placement placement,
               const LoadProgress& progress, Drafter drafter);

}  // namespace

std::unique_ptr<ModelWeights> ModelWeights::load(const ModelConfig& c, const std::string& dir, Backend& be,
                                                 Placement placement, const LoadProgress& progress, Drafter drafter) {
  if (placement.size < 1 || placement.rank < 0 || placement.rank >= placement.size)
    fail("invalid placement: rank {} of {}", placement.rank, placement.size);
  auto mw = std::make_unique<ModelWeights>();
  mw->placement = placement;
  mw->ckpt = std::make_unique<Checkpoint>(dir);
  const Checkpoint& ck = *mw->ckpt;
  TensorSource src{[&ck](const std::string& n) { return ck.find(n); }};
  place_all(c, src, &be, mw.get(), placement, progress, drafter);
  return mw;
}

uint64_t ModelWeights::measure(const ModelConfig& c, const std::string& dir, Placement placement) {
  if (placement.size < 1 || placement.rank < 0 || placement.rank >= placement.size)
    fail("invalid placement: rank {} of {}", placement.rank, placement.size);
  ModelWeights mw;
  mw.placement = placement;
  mw.ckpt = std::make_unique<Checkpoint>(dir);
  const Checkpoint& ck = *mw.ckpt;
  TensorSource src{[&ck](const std::string& n) { return ck.find(n); }};
  place_all(c, src, nullptr, &mw, placement, {}, Drafter::None);
  return mw.tensor_bytes;
}

std::unique_ptr<ModelWeights> ModelWeights::load_dummy(const ModelConfig& c, Backend& be, uint64_t seed,
                                                       Placement placement, const LoadProgress& progress,
                                                       Drafter drafter) {
  auto mw = std::make_unique<ModelWeights>();
  mw->placement = placement;
  // Per dtype one pool of valid random values as large as the largest tensor of that dtype; every tensor's
  // bytes come from its dtype's pool (values do not matter for speed, only that they are finite codes).
  const auto specs = expected_tensors(c, c.expert_format);
  std::map<DType, size_t> need;
  for (auto& t : specs) {
    size_t n = dtype_size(t.dtypes.at(0));
    for (int64_t d : t.shape) n *= size_t(d);
    need[t.dtypes.at(0)] = std::max(need[t.dtypes.at(0)], n);
  }
  std::map<DType, std::vector<uint8_t>> pools;
  uint64_t st = seed * 0x9e3779b97f4a7c15ull + 1;
  auto next = [&] {
    st ^= st << 13, st ^= st >> 7, st ^= st << 17;
    return st;
  };
  for (auto& [dt, n] : need) {
    auto& p = pools[dt];
    p.resize(n);
    switch (dt) {
      case DType::F8_E8M0: std::fill(p.begin(), p.end(), uint8_t(120)); break;  // 2^-7
      case DType::F8_E4M3:
        for (auto& b : p) b = uint8_t(next() % 0x7f) | uint8_t(next() & 0x80);  // never the NaN codes
        break;
      case DType::BF16:
      case DType::F32:
        for (size_t i = 0; i + dtype_size(dt) <= n; i += dtype_size(dt)) {
          const float v = (float(next() % 2001) - 1000.f) * 2e-5f;
          if (dt == DType::F32) std::memcpy(&p[i], &v, 4);
          else {
            const uint16_t h = f32_to_bf16(v);
            std::memcpy(&p[i], &h, 2);
          }
        }
        break;
      case DType::I64:
        for (size_t i = 0; i < n / 8; ++i) {
          const int64_t e = int64_t(i * 7 % size_t(std::max(c.n_routed_experts, 1)));
          std::memcpy(&p[i * 8], &e, 8);
        }
        break;
      default:
        for (auto& b : p) b = uint8_t(next());
    }
  }
  static const std::string kDummy = "<dummy weights>";
  std::map<std::string, TensorInfo> infos;
  for (auto& t : specs) {
    TensorInfo ti;
    ti.name = t.name;
    ti.dtype = t.dtypes.at(0);
    ti.shape = t.shape;
    ti.nbytes = size_t(ti.numel()) * dtype_size(ti.dtype);
    ti.data = pools.at(ti.dtype).data();
    ti.file = &kDummy;
    infos[t.name] = ti;
  }
  TensorSource src{[&infos](const std::string& n) -> const TensorInfo* {
    auto it = infos.find(n);
    return it == infos.end() ? nullptr : &it->second;
  }};
  place_all(c, src, &be, mw.get(), placement, progress, drafter);
  return mw;
}

namespace {

void place_all(const ModelConfig& c, const TensorSource& src, Backend* be, ModelWeights* mw, Placement placement,
               const LoadProgress& progress, Drafter drafter) {
  Placer P(be, *mw);  // be: null when measuring
  Loader L(src, P, placement, c.weight_block);
  const int64_t D = c.dim, V = c.vocab_size, H = c.n_heads, hd = c.head_dim;
  // Column-parallel (SplitOut) and row-parallel (SplitIn) cuts of the official convert.py (spec §4.4). The
  // embedding stays whole on every rank here: a rank needs every token's row.
  const int first = placement.first_layer, end = placement.end_layer < 0 ? c.n_layers : placement.end_layer;
  if (first < 0 || first >= end || end > c.n_layers)
    fail("invalid pipeline stage: layers [{}, {}) of {}", first, end, c.n_layers);
  if (!placement.whole_model(c.n_layers) && drafter != Drafter::None)
    fail("speculative decoding with pipeline parallelism is not supported yet (the drafter needs the embedding "
         "of the first stage and the head of the last)");
  const int64_t flat = int64_t(c.hc_mult) * D;
  if (first == 0) L.embed(&mw->embed, V, D);
  if (end == c.n_layers) {
    L.linear(&mw->head, "head", V, D, ShardKind::SplitOut);
    L.vec(&mw->norm, "norm.weight", {D});
    L.hc(&mw->hc_head, "hc_head", c.hc_mult, flat, 1);
  }
  if (drafter == Drafter::Mtp) {
    if (c.n_dspark_stages) fail("this checkpoint has a DSpark drafter, not an MTP layer: use the dspark method");
    if (c.n_mtp_layers < 1)
      fail("speculative method mtp: the checkpoint has no MTP layer (config.json num_nextn_predict_layers is 0)");
    if (!src.find("mtp.0.e_proj.weight"))
      fail("speculative method mtp: the checkpoint has no MTP weights (no tensor 'mtp.0.e_proj.weight')");
  }
  if (drafter == Drafter::DSpark) {
    if (!c.n_dspark_stages)
      fail("speculative method dspark: the checkpoint has no DSpark drafter (config.json has no dspark_block_size "
           "and no extra compress_ratios entries for its stages)");
    if (!src.find("mtp.0.main_proj.weight"))
      fail("speculative method dspark: the checkpoint has no DSpark weights (no tensor 'mtp.0.main_proj.weight')");
  }
  // Sized up front: the placer keeps pointers into it. The drafter's blocks follow the model's (ratio 0).
  const int extra = drafter == Drafter::Mtp ? 1 : drafter == Drafter::DSpark ? c.n_dspark_stages : 0;
  mw->layers.resize(size_t(c.n_layers + extra));
  mw->drafter = drafter;
  for (int l = 0; l < int(mw->layers.size()); ++l) {
    const bool mtp = l >= c.n_layers;
    if (!mtp && (l < first || l >= end)) continue;  // another pipeline stage's layer: left empty
    const std::string p = mtp ? fmt::format("mtp.{}.", l - c.n_layers) : fmt::format("layers.{}.", l);
    LayerWeights& lw = mw->layers[size_t(l)];
    lw.ratio = c.ratio(l);
    lw.hash_routed = !mtp && l < c.n_hash_layers;
    L.vec(&lw.attn_norm, p + "attn_norm.weight", {D});
    L.vec(&lw.ffn_norm, p + "ffn_norm.weight", {D});
    L.hc(&lw.hc_attn, p + "hc_attn", c.hc_mix(), flat, 3);
    L.hc(&lw.hc_ffn, p + "hc_ffn", c.hc_mix(), flat, 3);
    const std::string a = p + "attn.";
    L.linear(&lw.wq_a, a + "wq_a", c.q_lora_rank, D);
    L.vec(&lw.q_norm, a + "q_norm.weight", {c.q_lora_rank});
    L.linear(&lw.wq_b, a + "wq_b", H * hd, c.q_lora_rank, ShardKind::SplitOut);
    L.linear(&lw.wkv, a + "wkv", hd, D);
    L.vec(&lw.kv_norm, a + "kv_norm.weight", {hd});
    L.linear(&lw.wo_a, a + "wo_a", int64_t(c.o_groups) * c.o_lora_rank, H * hd / c.o_groups, ShardKind::SplitOut);
    L.linear(&lw.wo_b, a + "wo_b", D, int64_t(c.o_groups) * c.o_lora_rank, ShardKind::SplitIn);
    L.vec(&lw.attn_sink, a + "attn_sink", {H}, ShardKind::SplitOut);
    if (lw.ratio) L.compressor(&lw.compressor, a + "compressor", lw.ratio, c.head_dim, D);
    if (lw.ratio == 4) {
      // Replicated (see Dsv4Model::attention): every rank selects the same entries with no collective.
      L.linear(&lw.idx_wq_b, a + "indexer.wq_b", int64_t(c.index_n_heads) * c.index_head_dim, c.q_lora_rank);
      L.linear(&lw.idx_weights_proj, a + "indexer.weights_proj", c.index_n_heads, D);
      L.compressor(&lw.idx_compressor, a + "indexer.compressor", 4, c.index_head_dim, D);
    }
    const std::string f = p + "ffn.";
    L.linear(&lw.gate, f + "gate", c.n_routed_experts, D);
    if (lw.hash_routed) L.tid2eid(&lw.tid2eid, f + "gate.tid2eid", V, c.n_experts_per_tok, c.n_routed_experts);
    else L.vec(&lw.gate_bias, f + "gate.bias", {c.n_routed_experts});
    lw.experts.resize(size_t(c.n_routed_experts));
    // Expert parallelism: this rank's experts whole (the others stay empty); otherwise each split by width.
    // EPLB: none of the main layers' (ModelWeights::place_experts places them per placement).
    const ShardRange mine = placement.eplb && !mtp ? ShardRange{0, 0}
                            : placement.expert_parallel
                                ? shard_range(c.n_routed_experts, placement, ShardKind::SplitOut, "routed experts")
                                : ShardRange{0, c.n_routed_experts};
    for (int64_t e = mine.begin; e < mine.begin + mine.count; ++e)
      L.expert(&lw.experts[size_t(e)], fmt::format("{}experts.{}.", f, e), c.moe_inter_dim, D, placement.expert_parallel);
    L.linear(&lw.shared.w1, f + "shared_experts.w1", c.moe_inter_dim, D, ShardKind::SplitOut);
    L.linear(&lw.shared.w2, f + "shared_experts.w2", D, c.moe_inter_dim, ShardKind::SplitIn);
    L.linear(&lw.shared.w3, f + "shared_experts.w3", c.moe_inter_dim, D, ShardKind::SplitOut);
  }
  if (drafter == Drafter::DSpark) {
    DSparkWeights& d = mw->dspark;
    const std::string last = fmt::format("mtp.{}.", c.n_dspark_stages - 1);
    L.linear(&d.main_proj, "mtp.0.main_proj", D, D * int64_t(c.dspark_target_layer_ids.size()));
    L.vec(&d.main_norm, "mtp.0.main_norm.weight", {D});
    L.vec(&d.norm, last + "norm.weight", {D});
    L.hc(&d.hc_head, last + "hc_head", c.hc_mult, flat, 1);
    L.linear(&d.markov_w1, last + "markov_head.markov_w1", V, c.dspark_markov_rank);
    L.linear(&d.markov_w2, last + "markov_head.markov_w2", V, c.dspark_markov_rank, ShardKind::SplitOut);  // as the head
  }
  if (drafter == Drafter::Mtp) {
    MtpWeights& m = mw->mtp;
    L.linear(&m.e_proj, "mtp.0.e_proj", D, D);
    L.linear(&m.h_proj, "mtp.0.h_proj", D, D);
    L.vec(&m.enorm, "mtp.0.enorm.weight", {D});
    L.vec(&m.hnorm, "mtp.0.hnorm.weight", {D});
    L.vec(&m.norm, "mtp.0.norm.weight", {D});
    L.hc(&m.hc_head, "mtp.0.hc_head", c.hc_mult, flat, 1);
  }
  const RopeTable rm = RopeTable::make(c.rope_dim, c.rope_theta, 0, 1.0, c.beta_fast, c.beta_slow);
  const RopeTable rc = RopeTable::make(c.rope_dim, c.compress_rope_theta, c.rope_original_max_pos, c.rope_factor,
                                       c.beta_fast, c.beta_slow);
  P.staged(&mw->rope_main, DType::F64, {int64_t(rm.freqs.size())}, rm.freqs.data(), rm.freqs.size() * 8);
  P.staged(&mw->rope_compress, DType::F64, {int64_t(rc.freqs.size())}, rc.freqs.data(), rc.freqs.size() * 8);
  P.finish(progress);
}

}  // namespace

std::unique_ptr<ExpertSet> ModelWeights::place_experts(const ModelConfig& c, Backend& be,
                                                       const std::vector<std::vector<bool>>& held) const {
  if (!ckpt) fail("EPLB places expert replicas from the checkpoint: it needs --load-format auto, not dummy");
  DSV4_CHECK(int(held.size()) == c.n_layers, "place_experts: {} layers of {}", held.size(), c.n_layers);
  auto set = std::make_unique<ExpertSet>();
  Placer P(&be, *this, *set);
  const Checkpoint& ck = *ckpt;
  TensorSource src{[&ck](const std::string& n) { return ck.find(n); }};
  Loader L(src, P, Placement{}, c.weight_block);
  set->layers.resize(size_t(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    DSV4_CHECK(int(held[size_t(l)].size()) == c.n_routed_experts, "place_experts: layer {} holds {} experts", l,
               held[size_t(l)].size());
    set->layers[size_t(l)].resize(size_t(c.n_routed_experts));
    for (int e = 0; e < c.n_routed_experts; ++e)
      if (held[size_t(l)][size_t(e)])
        L.expert(&set->layers[size_t(l)][size_t(e)], fmt::format("layers.{}.ffn.experts.{}.", l, e), c.moe_inter_dim,
                 c.dim, true);
  }
  P.prefetch_sources();
  P.finish({});
  return set;
}

}  // namespace dsv4
