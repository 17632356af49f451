#include "model/known_configs.h"

#include "model/tiny_checkpoint.h"

namespace dsv4 {

nlohmann::json v4_flash_config_json(int n_layers) {
  nlohmann::json c = tiny_demo_config_json();  // every key of the real root config
  std::vector<int> ratios;
  for (int l = 0; l < n_layers; ++l) ratios.push_back(l < 2 ? 0 : (l % 2 == 0 ? 4 : 128));
  ratios.push_back(0);  // the MTP slot entry (num_nextn_predict_layers 0 here)
  c["vocab_size"] = 129280;
  c["hidden_size"] = 4096;
  c["num_hidden_layers"] = n_layers;
  c["num_attention_heads"] = 64;
  c["head_dim"] = 512;
  c["qk_rope_head_dim"] = 64;
  c["q_lora_rank"] = 1024;
  c["o_lora_rank"] = 1024;
  c["o_groups"] = 8;
  c["sliding_window"] = 128;
  c["compress_ratios"] = ratios;
  c["index_n_heads"] = 64;
  c["index_head_dim"] = 128;
  c["index_topk"] = 512;
  c["n_routed_experts"] = 256;
  c["n_shared_experts"] = 1;
  c["num_experts_per_tok"] = 6;
  c["moe_intermediate_size"] = 2048;
  c["num_hash_layers"] = std::min(3, n_layers);
  c["num_nextn_predict_layers"] = 0;
  c["max_position_embeddings"] = 1048576;
  return c;
}

nlohmann::json mid_size_config_json() {
  nlohmann::json c = v4_flash_config_json(8);
  c["compress_ratios"] = {0, 0, 4, 128, 4, 128, 4, 0, 0};
  c["vocab_size"] = 4096;
  c["hidden_size"] = 1024;
  c["num_attention_heads"] = 16;
  c["q_lora_rank"] = 512;
  c["o_lora_rank"] = 512;
  c["o_groups"] = 4;
  c["index_n_heads"] = 16;
  c["index_topk"] = 64;
  c["n_routed_experts"] = 16;
  c["num_experts_per_tok"] = 4;
  c["moe_intermediate_size"] = 512;
  c["num_hash_layers"] = 2;
  return c;
}

}  // namespace dsv4
