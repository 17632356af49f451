#include "model/weight_schema.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"

namespace dsv4 {

namespace {
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Builder {
  const ModelConfig& c;
  ExpertFormat ef;
  std::vector<TensorSpec> out;

  void add(std::string name, std::vector<DType> dt, std::vector<int64_t> shape) {
    out.push_back({std::move(name), std::move(dt), std::move(shape)});
  }
  // An FP8 block-quantized linear (or bf16 when the checkpoint has no quantization_config).
  void fp8_linear(const std::string& p, int64_t out_f, int64_t in_f) {
    if (!c.fp8_weights) {
      add(p + ".weight", {DType::BF16, DType::F32}, {out_f, in_f});
      return;
    }
    add(p + ".weight", {DType::F8_E4M3}, {out_f, in_f});
    add(p + ".scale", {DType::F8_E8M0, DType::F32}, {cdiv(out_f, c.weight_block), cdiv(in_f, c.weight_block)});
  }
  void expert_linear(const std::string& p, int64_t out_f, int64_t in_f) {
    if (ef == ExpertFormat::FP4) {
      add(p + ".weight", {DType::I8, DType::U8}, {out_f, in_f / 2});
      add(p + ".scale", {DType::F8_E8M0}, {out_f, in_f / 32});
    } else {
      fp8_linear(p, out_f, in_f);
    }
  }
  void norm(const std::string& p, int64_t d) { add(p + ".weight", {DType::BF16, DType::F32}, {d}); }
  void hc(const std::string& p, int rows) {
    int64_t flat = int64_t(c.hc_mult) * c.dim;
    add(p + "_fn", {DType::F32}, {rows, flat});
    add(p + "_base", {DType::F32}, {rows});
    add(p + "_scale", {DType::F32}, {rows == c.hc_mult ? 1 : 3});
  }
  void compressor(const std::string& p, int ratio, int d) {
    int coff = ratio == 4 ? 2 : 1;
    add(p + ".wkv.weight", {DType::BF16, DType::F32}, {coff * d, c.dim});
    add(p + ".wgate.weight", {DType::BF16, DType::F32}, {coff * d, c.dim});
    add(p + ".ape", {DType::F32}, {ratio, coff * d});
    norm(p + ".norm", d);
  }
  // One transformer block: attention (+ compressor / indexer by ratio) and MoE.
  void block(const std::string& p, int ratio, bool hash_routed) {
    const int64_t D = c.dim;
    norm(p + "attn_norm", D);
    norm(p + "ffn_norm", D);
    hc(p + "hc_attn", c.hc_mix());
    hc(p + "hc_ffn", c.hc_mix());
    const std::string a = p + "attn.";
    fp8_linear(a + "wq_a", c.q_lora_rank, D);
    norm(a + "q_norm", c.q_lora_rank);
    fp8_linear(a + "wq_b", int64_t(c.n_heads) * c.head_dim, c.q_lora_rank);
    fp8_linear(a + "wkv", c.head_dim, D);
    norm(a + "kv_norm", c.head_dim);
    fp8_linear(a + "wo_a", int64_t(c.o_groups) * c.o_lora_rank, int64_t(c.n_heads) * c.head_dim / c.o_groups);
    fp8_linear(a + "wo_b", D, int64_t(c.o_groups) * c.o_lora_rank);
    add(a + "attn_sink", {DType::F32}, {c.n_heads});
    if (ratio) compressor(a + "compressor", ratio, c.head_dim);
    if (ratio == 4) {
      fp8_linear(a + "indexer.wq_b", int64_t(c.index_n_heads) * c.index_head_dim, c.q_lora_rank);
      add(a + "indexer.weights_proj.weight", {DType::BF16, DType::F32}, {c.index_n_heads, D});
      compressor(a + "indexer.compressor", 4, c.index_head_dim);
    }
    const std::string f = p + "ffn.";
    add(f + "gate.weight", {DType::BF16, DType::F32}, {c.n_routed_experts, D});
    if (hash_routed)
      add(f + "gate.tid2eid", {DType::I64, DType::I32}, {c.vocab_size, c.n_experts_per_tok});
    else
      add(f + "gate.bias", {DType::F32, DType::BF16}, {c.n_routed_experts});
    for (int e = 0; e < c.n_routed_experts; ++e) {
      std::string ep = fmt::format("{}experts.{}.", f, e);
      expert_linear(ep + "w1", c.moe_inter_dim, D);
      expert_linear(ep + "w3", c.moe_inter_dim, D);
      expert_linear(ep + "w2", D, c.moe_inter_dim);
    }
    fp8_linear(f + "shared_experts.w1", c.moe_inter_dim, D);
    fp8_linear(f + "shared_experts.w3", c.moe_inter_dim, D);
    fp8_linear(f + "shared_experts.w2", D, c.moe_inter_dim);
  }
};
}  // namespace

ExpertFormat detect_expert_format(const ModelConfig& c, const Checkpoint& ck) {
  if (c.has_expert_dtype) return c.expert_format;
  const TensorInfo* t = ck.find("layers.0.ffn.experts.0.w1.weight");
  if (t && t->dtype == DType::F8_E4M3) return ExpertFormat::FP8;
  return ExpertFormat::FP4;
}

std::vector<TensorSpec> expected_tensors(const ModelConfig& c, ExpertFormat ef) {
  Builder b{c, ef, {}};
  const int64_t D = c.dim;
  b.add("embed.weight", {DType::BF16, DType::F32}, {c.vocab_size, D});
  b.add("head.weight", {DType::BF16, DType::F32}, {c.vocab_size, D});
  b.norm("norm", D);
  b.hc("hc_head", c.hc_mult);
  for (int l = 0; l < c.n_layers; ++l) b.block(fmt::format("layers.{}.", l), c.ratio(l), l < c.n_hash_layers);
  for (int s = 0; s < c.n_mtp_layers; ++s) {  // V4 MTP: e/h projections + a ratio-0 block + its own head mix
    std::string p = fmt::format("mtp.{}.", s);
    b.block(p, 0, false);
    b.fp8_linear(p + "e_proj", D, D);
    b.fp8_linear(p + "h_proj", D, D);
    b.norm(p + "enorm", D);
    b.norm(p + "hnorm", D);
    b.norm(p + "norm", D);
    b.hc(p + "hc_head", c.hc_mult);
  }
  for (int s = 0; s < c.n_dspark_stages; ++s) {  // 0731 DSpark drafter stages (spec §7.1)
    std::string p = fmt::format("mtp.{}.", s);
    b.block(p, 0, false);
    if (s == 0) {
      b.fp8_linear(p + "main_proj", D, D * int64_t(c.dspark_target_layer_ids.size()));
      b.norm(p + "main_norm", D);
    }
    if (s == c.n_dspark_stages - 1) {
      b.norm(p + "norm", D);
      b.hc(p + "hc_head", c.hc_mult);
      b.add(p + "markov_head.markov_w1.weight", {DType::BF16}, {c.vocab_size, c.dspark_markov_rank});
      b.add(p + "markov_head.markov_w2.weight", {DType::BF16}, {c.vocab_size, c.dspark_markov_rank});
      b.add(p + "confidence_head.proj.weight", {DType::BF16}, {1, D + c.dspark_markov_rank});
    }
  }
  return b.out;
}

InspectReport inspect_checkpoint(const ModelConfig& c, const Checkpoint& ck) {
  InspectReport r;
  auto specs = expected_tensors(c, detect_expert_format(c, ck));
  std::set<std::string> expected;
  for (auto& s : specs) {
    expected.insert(s.name);
    const TensorInfo* t = ck.find(s.name);
    if (!t) {
      r.missing.push_back(s.name);
      continue;
    }
    bool dt_ok = false;
    for (auto d : s.dtypes) dt_ok |= (d == t->dtype);
    if (!dt_ok || t->shape != s.shape) {
      TensorInfo want;
      want.shape = s.shape;
      r.mismatched.push_back(fmt::format("{}: found {} {}, expected {} {}", s.name, dtype_name(t->dtype),
                                         t->shape_str(), dtype_name(s.dtypes[0]), want.shape_str()));
    }
  }
  for (auto& [name, t] : ck.all()) {
    if (!expected.count(name)) r.unexpected.push_back(name);
    std::string dn(dtype_name(t->dtype));
    r.bytes_per_dtype[dn] += t->nbytes;
    r.tensors_per_dtype[dn] += 1;
    r.total_bytes += t->nbytes;
    r.n_tensors += 1;
    bool is_scale = name.size() > 6 && name.compare(name.size() - 6, 6, ".scale") == 0;
    // Scales and integer tables (tid2eid) are not parameters, as in the official counts.
    if (is_scale || t->dtype == DType::I64 || t->dtype == DType::I32) continue;
    uint64_t p = uint64_t(t->numel()) * ((t->dtype == DType::I8 || t->dtype == DType::U8) ? 2 : 1);
    r.n_params += p;
    if (name.rfind("mtp.", 0) == 0) r.n_params_mtp += p;
  }
  return r;
}

}  // namespace dsv4
