#include "model/weights.h"

#include <fmt/format.h>

#include <cstring>

#include "core/error.h"
#include "model/weight_schema.h"

namespace dsv4 {

namespace {

std::vector<float> to_f32(const TensorInfo& t) {
  std::vector<float> v(size_t(t.numel()));
  switch (t.dtype) {
    case DType::F32: std::memcpy(v.data(), t.data, t.nbytes); break;
    case DType::BF16:
      for (size_t i = 0; i < v.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, t.data + 2 * i, 2);
        v[i] = bf16_to_f32(h);
      }
      break;
    default: fail("{}: tensor '{}' has dtype {}, expected F32 or BF16", *t.file, t.name, dtype_name(t.dtype));
  }
  return v;
}

class Loader {
 public:
  explicit Loader(const Checkpoint& ck) : ck_(ck) {}

  const TensorInfo& tensor(const std::string& name, std::vector<int64_t> shape) {
    const TensorInfo& t = ck_.get(name);
    if (t.shape != shape) {
      TensorInfo want;
      want.shape = shape;
      fail("{}: tensor '{}' has shape {}, expected {}", *t.file, name, t.shape_str(), want.shape_str());
    }
    return t;
  }
  std::vector<float> vec(const std::string& name, std::vector<int64_t> shape) { return to_f32(tensor(name, shape)); }

  LinearWeight linear(const std::string& prefix, int64_t out, int64_t in) {
    const TensorInfo& w = ck_.get(prefix + ".weight");
    const TensorInfo* s = ck_.find(prefix + ".scale");
    LinearWeight lw;
    lw.out = out;
    lw.in = in;
    lw.data = w.data;
    auto bad = [&](const char* why) {
      TensorInfo want;
      want.shape = {out, in};
      fail("{}: tensor '{}' ({} {}): {} (logical shape {})", *w.file, w.name, dtype_name(w.dtype), w.shape_str(),
           why, want.shape_str());
    };
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
        int64_t B = block_;
        std::vector<int64_t> ss{(out + B - 1) / B, (in + B - 1) / B};
        if (s->shape != ss) bad(fmt::format("scale shape {} does not tile it by {}", s->shape_str(), B).c_str());
        lw.scale_cols = ss[1];
        lw.block = int(B);
        if (s->dtype == DType::F8_E8M0) lw.scale_e8m0 = s->data;
        else if (s->dtype == DType::F32) lw.scale_f32 = reinterpret_cast<const float*>(s->data);
        else bad("scale dtype is neither F8_E8M0 nor F32");
        break;
      }
      case DType::I8:
      case DType::U8: {
        if (w.shape != std::vector<int64_t>{out, in / 2} || in % 32) bad("wrong packed FP4 shape");
        if (!s || s->dtype != DType::F8_E8M0 || s->shape != std::vector<int64_t>{out, in / 32})
          bad("FP4 weight needs an F8_E8M0 scale [out, in/32]");
        lw.fmt = WeightFormat::FP4Group32;
        lw.scale_e8m0 = s->data;
        lw.scale_cols = in / 32;
        break;
      }
      default: bad("unsupported dtype for a linear weight");
    }
    return lw;
  }

  HcWeights hc(const std::string& p, int64_t rows, int64_t flat, int64_t nscale) {
    return {vec(p + "_fn", {rows, flat}), vec(p + "_base", {rows}), vec(p + "_scale", {nscale})};
  }

  CompressorWeights compressor(const std::string& p, int ratio, int d, int64_t D) {
    CompressorWeights c;
    c.ratio = ratio;
    c.d = d;
    c.coff = ratio == 4 ? 2 : 1;
    c.wkv = linear(p + ".wkv", c.coff * d, D);
    c.wgate = linear(p + ".wgate", c.coff * d, D);
    c.ape = vec(p + ".ape", {ratio, c.coff * d});
    c.norm = vec(p + ".norm.weight", {d});
    return c;
  }

  int64_t block_ = 128;

 private:
  const Checkpoint& ck_;
};

}  // namespace

ModelWeights ModelWeights::load(const ModelConfig& c, const std::string& dir) {
  ModelWeights mw;
  mw.ckpt = std::make_unique<Checkpoint>(dir);
  Loader L(*mw.ckpt);
  L.block_ = c.weight_block;
  const int64_t D = c.dim, V = c.vocab_size;
  const TensorInfo& emb = L.tensor("embed.weight", {V, D});
  if (emb.dtype == DType::BF16) mw.embed = reinterpret_cast<const uint16_t*>(emb.data);
  else if (emb.dtype == DType::F32) mw.embed_f32 = reinterpret_cast<const float*>(emb.data);
  else fail("{}: embed.weight must be BF16 or F32", *emb.file);
  mw.head = L.linear("head", V, D);
  mw.norm = L.vec("norm.weight", {D});
  const int64_t flat = int64_t(c.hc_mult) * D;
  mw.hc_head = L.hc("hc_head", c.hc_mult, flat, 1);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("layers.{}.", l);
    LayerWeights lw;
    lw.ratio = c.ratio(l);
    lw.hash_routed = l < c.n_hash_layers;
    lw.attn_norm = L.vec(p + "attn_norm.weight", {D});
    lw.ffn_norm = L.vec(p + "ffn_norm.weight", {D});
    lw.hc_attn = L.hc(p + "hc_attn", c.hc_mix(), flat, 3);
    lw.hc_ffn = L.hc(p + "hc_ffn", c.hc_mix(), flat, 3);
    const std::string a = p + "attn.";
    lw.wq_a = L.linear(a + "wq_a", c.q_lora_rank, D);
    lw.q_norm = L.vec(a + "q_norm.weight", {c.q_lora_rank});
    lw.wq_b = L.linear(a + "wq_b", int64_t(c.n_heads) * c.head_dim, c.q_lora_rank);
    lw.wkv = L.linear(a + "wkv", c.head_dim, D);
    lw.kv_norm = L.vec(a + "kv_norm.weight", {c.head_dim});
    lw.wo_a = L.linear(a + "wo_a", int64_t(c.o_groups) * c.o_lora_rank, int64_t(c.n_heads) * c.head_dim / c.o_groups);
    lw.wo_b = L.linear(a + "wo_b", D, int64_t(c.o_groups) * c.o_lora_rank);
    lw.attn_sink = L.vec(a + "attn_sink", {c.n_heads});
    if (lw.ratio) lw.compressor = L.compressor(a + "compressor", lw.ratio, c.head_dim, D);
    if (lw.ratio == 4) {
      lw.idx_wq_b = L.linear(a + "indexer.wq_b", int64_t(c.index_n_heads) * c.index_head_dim, c.q_lora_rank);
      lw.idx_weights_proj = L.linear(a + "indexer.weights_proj", c.index_n_heads, D);
      lw.idx_compressor = L.compressor(a + "indexer.compressor", 4, c.index_head_dim, D);
    }
    const std::string f = p + "ffn.";
    lw.gate = L.linear(f + "gate", c.n_routed_experts, D);
    if (lw.hash_routed) {
      const TensorInfo& t = L.tensor(f + "gate.tid2eid", {V, c.n_experts_per_tok});
      lw.tid2eid.resize(size_t(t.numel()));
      for (size_t i = 0; i < lw.tid2eid.size(); ++i) {
        int64_t v;
        if (t.dtype == DType::I64) std::memcpy(&v, t.data + 8 * i, 8);
        else if (t.dtype == DType::I32) { int32_t v32; std::memcpy(&v32, t.data + 4 * i, 4); v = v32; }
        else fail("{}: '{}' must be I64 or I32", *t.file, t.name);
        if (v < 0 || v >= c.n_routed_experts) fail("{}: '{}' holds expert id {} out of range", *t.file, t.name, v);
        lw.tid2eid[i] = int32_t(v);
      }
    } else {
      lw.gate_bias = L.vec(f + "gate.bias", {c.n_routed_experts});
    }
    lw.experts.resize(size_t(c.n_routed_experts));
    for (int e = 0; e < c.n_routed_experts; ++e) {
      const std::string ep = fmt::format("{}experts.{}.", f, e);
      lw.experts[size_t(e)] = {L.linear(ep + "w1", c.moe_inter_dim, D), L.linear(ep + "w2", D, c.moe_inter_dim),
                               L.linear(ep + "w3", c.moe_inter_dim, D)};
    }
    lw.shared = {L.linear(f + "shared_experts.w1", c.moe_inter_dim, D),
                 L.linear(f + "shared_experts.w2", D, c.moe_inter_dim),
                 L.linear(f + "shared_experts.w3", c.moe_inter_dim, D)};
    mw.layers.push_back(std::move(lw));
  }
  return mw;
}

}  // namespace dsv4
