#include "model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv4 {

namespace {
using nlohmann::json;

template <typename T>
T req(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) fail("config.json: missing key '{}'", key);
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("config.json: key '{}' has the wrong type ({})", key, it->type_name());
  }
}
template <typename T>
T opt(const json& j, const char* key, T def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail("config.json: key '{}' has the wrong type ({})", key, it->type_name());
  }
}
void positive(int v, const char* key) {
  if (v <= 0) fail("config.json: '{}' must be positive, got {}", key, v);
}
}  // namespace

ModelConfig ModelConfig::from_json(const json& j) {
  if (!j.is_object()) fail("config.json: not a JSON object");
  ModelConfig c;
  auto mt = opt<std::string>(j, "model_type", "deepseek_v4");
  if (mt != "deepseek_v4") fail("config.json: model_type '{}' is not deepseek_v4", mt);
  c.vocab_size = req<int>(j, "vocab_size");
  c.dim = req<int>(j, "hidden_size");
  c.n_layers = req<int>(j, "num_hidden_layers");
  c.n_heads = req<int>(j, "num_attention_heads");
  c.head_dim = req<int>(j, "head_dim");
  c.rope_dim = req<int>(j, "qk_rope_head_dim");
  c.q_lora_rank = req<int>(j, "q_lora_rank");
  c.o_lora_rank = req<int>(j, "o_lora_rank");
  c.o_groups = req<int>(j, "o_groups");
  c.window = req<int>(j, "sliding_window");
  c.compress_ratios = req<std::vector<int>>(j, "compress_ratios");
  c.rope_theta = req<double>(j, "rope_theta");
  c.compress_rope_theta = req<double>(j, "compress_rope_theta");
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    const json& rs = *it;
    if (!rs.is_object()) fail("config.json: 'rope_scaling' must be an object");
    auto type = rs.contains("type") ? rs.at("type").get<std::string>() : opt<std::string>(rs, "rope_type", "");
    if (type != "yarn") fail("config.json: rope_scaling.type '{}' is not supported (only yarn)", type);
    c.rope_factor = req<double>(rs, "factor");
    c.rope_original_max_pos = req<int>(rs, "original_max_position_embeddings");
    c.beta_fast = opt<double>(rs, "beta_fast", 32);
    c.beta_slow = opt<double>(rs, "beta_slow", 1);
  }
  c.max_position_embeddings = req<int64_t>(j, "max_position_embeddings");
  c.index_n_heads = req<int>(j, "index_n_heads");
  c.index_head_dim = req<int>(j, "index_head_dim");
  c.index_topk = req<int>(j, "index_topk");
  c.n_routed_experts = req<int>(j, "n_routed_experts");
  c.n_shared_experts = req<int>(j, "n_shared_experts");
  c.n_experts_per_tok = req<int>(j, "num_experts_per_tok");
  c.moe_inter_dim = req<int>(j, "moe_intermediate_size");
  c.n_hash_layers = req<int>(j, "num_hash_layers");
  c.scoring_func = req<std::string>(j, "scoring_func");
  c.norm_topk_prob = opt<bool>(j, "norm_topk_prob", true);
  c.routed_scaling_factor = req<double>(j, "routed_scaling_factor");
  c.swiglu_limit = opt<double>(j, "swiglu_limit", 0.0);
  c.hc_mult = req<int>(j, "hc_mult");
  c.hc_sinkhorn_iters = req<int>(j, "hc_sinkhorn_iters");
  c.hc_eps = req<double>(j, "hc_eps");
  c.rms_norm_eps = req<double>(j, "rms_norm_eps");
  c.n_mtp_layers = opt<int>(j, "num_nextn_predict_layers", 0);
  c.bos_token_id = opt<int>(j, "bos_token_id", 0);
  c.eos_token_id = opt<int>(j, "eos_token_id", 1);
  if (j.contains("dspark_block_size")) {
    c.dspark_block_size = req<int>(j, "dspark_block_size");
    c.dspark_noise_token_id = req<int>(j, "dspark_noise_token_id");
    c.dspark_markov_rank = req<int>(j, "dspark_markov_rank");
    c.dspark_target_layer_ids = req<std::vector<int>>(j, "dspark_target_layer_ids");
    // num_nextn_predict_layers is stale in 0731 configs: the stage count is the extra compress_ratios entries.
    c.n_dspark_stages = int(c.compress_ratios.size()) - c.n_layers;
    c.n_mtp_layers = 0;
  }
  if (auto it = j.find("quantization_config"); it != j.end() && !it->is_null()) {
    const json& q = *it;
    auto fmt_ = opt<std::string>(q, "fmt", "e4m3");
    if (fmt_ != "e4m3") fail("config.json: quantization_config.fmt '{}' is not supported (only e4m3)", fmt_);
    auto wbs = opt<std::vector<int>>(q, "weight_block_size", {128, 128});
    if (wbs.size() != 2 || wbs[0] != wbs[1] || wbs[0] <= 0)
      fail("config.json: quantization_config.weight_block_size must be [b, b]");
    c.weight_block = wbs[0];
  } else {
    c.fp8_weights = false;
  }
  if (j.contains("expert_dtype")) {
    c.has_expert_dtype = true;
    auto ed = req<std::string>(j, "expert_dtype");
    if (ed == "fp4") c.expert_format = ExpertFormat::FP4;
    else if (ed == "fp8") c.expert_format = ExpertFormat::FP8;
    else fail("config.json: expert_dtype '{}' is not supported (fp4 or fp8)", ed);
  }

  // ---- validation: everything the graph relies on
  positive(c.vocab_size, "vocab_size");
  positive(c.dim, "hidden_size");
  positive(c.n_layers, "num_hidden_layers");
  positive(c.n_heads, "num_attention_heads");
  positive(c.head_dim, "head_dim");
  positive(c.rope_dim, "qk_rope_head_dim");
  positive(c.q_lora_rank, "q_lora_rank");
  positive(c.o_lora_rank, "o_lora_rank");
  positive(c.o_groups, "o_groups");
  positive(c.window, "sliding_window");
  positive(c.index_n_heads, "index_n_heads");
  positive(c.index_head_dim, "index_head_dim");
  positive(c.index_topk, "index_topk");
  positive(c.n_routed_experts, "n_routed_experts");
  positive(c.n_experts_per_tok, "num_experts_per_tok");
  positive(c.moe_inter_dim, "moe_intermediate_size");
  positive(c.hc_mult, "hc_mult");
  positive(c.hc_sinkhorn_iters, "hc_sinkhorn_iters");
  if (j.value("num_key_value_heads", 1) != 1) fail("config.json: num_key_value_heads must be 1 (shared K=V head)");
  if (c.n_shared_experts != 1) fail("config.json: n_shared_experts must be 1, got {}", c.n_shared_experts);
  if (c.rope_dim % 2 || c.rope_dim > c.head_dim)
    fail("config.json: qk_rope_head_dim {} must be even and <= head_dim {}", c.rope_dim, c.head_dim);
  if (c.rope_dim > c.index_head_dim)
    fail("config.json: qk_rope_head_dim {} exceeds index_head_dim {}", c.rope_dim, c.index_head_dim);
  if (c.n_heads % c.o_groups)
    fail("config.json: num_attention_heads {} is not divisible by o_groups {}", c.n_heads, c.o_groups);
  if (c.n_experts_per_tok > c.n_routed_experts)
    fail("config.json: num_experts_per_tok {} > n_routed_experts {}", c.n_experts_per_tok, c.n_routed_experts);
  if (c.n_hash_layers < 0 || c.n_hash_layers > c.n_layers)
    fail("config.json: num_hash_layers {} out of range", c.n_hash_layers);
  if (c.scoring_func != "sqrtsoftplus" && c.scoring_func != "sigmoid" && c.scoring_func != "softmax")
    fail("config.json: scoring_func '{}' is not supported", c.scoring_func);
  int extra = c.n_dspark_stages ? c.n_dspark_stages : c.n_mtp_layers;
  if (int(c.compress_ratios.size()) < c.n_layers + extra)
    fail("config.json: compress_ratios has {} entries, need {} layers + {} MTP stages", c.compress_ratios.size(),
         c.n_layers, extra);
  for (size_t i = 0; i < c.compress_ratios.size(); ++i) {
    int r = c.compress_ratios[i];
    if (r != 0 && r != 4 && r != 128)
      fail("config.json: compress_ratios[{}] = {} is not supported (0, 4 or 128)", i, r);
    if (i >= size_t(c.n_layers) && r != 0)
      fail("config.json: compress_ratios[{}] = {}: MTP stages must be ratio 0", i, r);
  }
  if (j.contains("dspark_block_size")) {  // 0731's DSpark drafter (spec §7.1)
    if (c.n_dspark_stages < 1)
      fail("config.json: dspark_block_size is set but compress_ratios has no entries for the DSpark stages ({} for "
           "{} layers)", c.compress_ratios.size(), c.n_layers);
    positive(c.dspark_block_size, "dspark_block_size");
    positive(c.dspark_markov_rank, "dspark_markov_rank");
    if (c.dspark_noise_token_id < 0 || c.dspark_noise_token_id >= c.vocab_size)
      fail("config.json: dspark_noise_token_id {} is outside the vocabulary [0, {})", c.dspark_noise_token_id,
           c.vocab_size);
    if (c.dspark_target_layer_ids.empty()) fail("config.json: dspark_target_layer_ids is empty");
  }
  for (int t : c.dspark_target_layer_ids)
    if (t < 0 || t >= c.n_layers) fail("config.json: dspark_target_layer_ids entry {} out of range", t);
  if (c.hc_mix() <= 0) fail("config.json: bad hc_mult");
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail("cannot open config file '{}'", path);
  json j;
  try {
    f >> j;
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", path, e.what());
  }
  try {
    return from_json(j);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

}  // namespace dsv4
