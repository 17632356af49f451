// The model's config.json (HF root format of DeepSeek-V4 checkpoints), parsed and validated.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dsv4 {

enum class ExpertFormat { FP4, FP8 };

struct ModelConfig {
  int vocab_size = 0;
  int dim = 0;               // hidden_size
  int n_layers = 0;          // num_hidden_layers
  int n_heads = 0;           // num_attention_heads
  int head_dim = 0;
  int rope_dim = 0;          // qk_rope_head_dim: RoPE on the LAST rope_dim dims of a head
  int q_lora_rank = 0;
  int o_lora_rank = 0;
  int o_groups = 0;
  int window = 0;            // sliding_window
  std::vector<int> compress_ratios;  // one per layer, then one per MTP / DSpark stage
  double rope_theta = 0, compress_rope_theta = 0;
  // YaRN (applied to ratio != 0 layers only)
  double rope_factor = 1;
  int rope_original_max_pos = 0;
  double beta_fast = 32, beta_slow = 1;
  int64_t max_position_embeddings = 0;
  int index_n_heads = 0, index_head_dim = 0, index_topk = 0;
  int n_routed_experts = 0, n_shared_experts = 0, n_experts_per_tok = 0;
  int moe_inter_dim = 0;
  int n_hash_layers = 0;
  std::string scoring_func;  // sqrtsoftplus | sigmoid | softmax
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1;
  double swiglu_limit = 0;
  int hc_mult = 0, hc_sinkhorn_iters = 0;
  double hc_eps = 0, rms_norm_eps = 0;
  int n_mtp_layers = 0;      // num_nextn_predict_layers (V4 MTP)
  int n_dspark_stages = 0;   // 0731 DSpark drafter stages (mtp.0 .. mtp.{n-1})
  int dspark_block_size = 0, dspark_noise_token_id = -1, dspark_markov_rank = 0;
  std::vector<int> dspark_target_layer_ids;
  int bos_token_id = 0, eos_token_id = 1;
  int weight_block = 128;    // quantization_config.weight_block_size
  bool fp8_weights = true;   // quantization_config present with fmt e4m3
  bool has_expert_dtype = false;
  ExpertFormat expert_format = ExpertFormat::FP4;

  int ratio(int layer) const { return compress_ratios.at(size_t(layer)); }
  int nope_dim() const { return head_dim - rope_dim; }
  int64_t params_per_expert() const { return 3LL * moe_inter_dim * dim; }
  int hc_mix() const { return (2 + hc_mult) * hc_mult; }

  static ModelConfig from_json(const nlohmann::json& j);
  static ModelConfig load(const std::string& path);  // a config.json file
};

}  // namespace dsv4
