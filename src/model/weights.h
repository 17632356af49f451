// The model's weights as typed views into the mapped checkpoint (native formats), plus the few small
// tensors (norms, hyper-connection params, biases) copied to fp32.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dsv4 {

struct CompressorWeights {
  LinearWeight wkv, wgate;  // [coff*d, D], bf16 in the checkpoint, computed in fp32
  std::vector<float> ape;   // [ratio, coff*d]
  std::vector<float> norm;  // [d]
  int ratio = 0, d = 0, coff = 1;
};

struct HcWeights {
  std::vector<float> fn, base, scale;
};

struct LayerWeights {
  int ratio = 0;
  bool hash_routed = false;
  std::vector<float> attn_norm, ffn_norm;
  HcWeights hc_attn, hc_ffn;
  // attention
  LinearWeight wq_a, wq_b, wkv, wo_a, wo_b;
  std::vector<float> q_norm, kv_norm, attn_sink;
  CompressorWeights compressor;          // ratio != 0
  LinearWeight idx_wq_b, idx_weights_proj;  // ratio == 4
  CompressorWeights idx_compressor;
  // MoE
  LinearWeight gate;                     // [E, D]
  std::vector<float> gate_bias;          // score-routed layers
  std::vector<int32_t> tid2eid;          // hash-routed layers [vocab, k]
  struct Expert {
    LinearWeight w1, w2, w3;
  };
  std::vector<Expert> experts;
  Expert shared;
};

struct ModelWeights {
  std::unique_ptr<Checkpoint> ckpt;  // owns the mappings every view points into
  const uint16_t* embed = nullptr;   // bf16 [vocab, D] (or fp32 when embed_f32)
  const float* embed_f32 = nullptr;
  LinearWeight head;
  std::vector<float> norm;
  HcWeights hc_head;
  std::vector<LayerWeights> layers;

  // Loads and validates every tensor the config needs (errors name the file and tensor).
  static ModelWeights load(const ModelConfig& c, const std::string& dir);
};

}  // namespace dsv4
