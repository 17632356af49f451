// The model's weights placed in a backend's memory, in their checkpoint formats (FP8 block, FP4 group-32,
// bf16), plus the few small tensors (norms, hyper-connection params, biases) converted to fp32. Each tensor
// carries a shard spec following the official conversion's cuts (spec §4.4), so a tensor-parallel rank places
// only its slice; with one rank every spec is the whole tensor.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dsv4 {

// How a tensor is cut across `size` ranks: Replicated, SplitOut (rows of [out, in]: column-parallel linears,
// vocab-parallel embedding/head, per-head vectors), SplitIn (columns: row-parallel linears).
enum class ShardKind : uint8_t { Replicated, SplitOut, SplitIn };
struct Placement {
  int rank = 0, size = 1;
  bool expert_parallel = false;  // routed experts whole, split by expert id (else by width like the rest)
  // EPLB: the main layers' routed experts are not placed at load; ModelWeights::place_experts places the ones
  // each placement gives this rank (the drafter's layers keep the split by id).
  bool eplb = false;
  // Pipeline stage: only layers [first_layer, end_layer) are placed (end_layer -1: through the last), the
  // embedding only when the stage starts at layer 0, the final hc_head, norm and head only when it ends at the last.
  int first_layer = 0, end_layer = -1;
  bool whole_model(int n_layers) const { return first_layer == 0 && (end_layer < 0 || end_layer == n_layers); }
};
// The slice [begin, begin + count) of `n` that rank r of `size` holds (n must divide evenly).
struct ShardRange {
  int64_t begin = 0, count = 0;
};
ShardRange shard_range(int64_t n, const Placement& p, ShardKind kind, const std::string& what);

struct CompressorWeights {
  LinearWeight wkv, wgate;  // [coff*d, D], bf16 in the checkpoint, computed in fp32
  Tensor ape;               // f32 [ratio, coff*d]
  Tensor norm;              // f32 [d]
  int ratio = 0, d = 0, coff = 1;
};

struct HcWeights {
  Tensor fn, base, scale;  // f32
};

struct LayerWeights {
  int ratio = 0;
  bool hash_routed = false;
  Tensor attn_norm, ffn_norm;
  HcWeights hc_attn, hc_ffn;
  // attention
  LinearWeight wq_a, wq_b, wkv, wo_a, wo_b;
  Tensor q_norm, kv_norm, attn_sink;
  CompressorWeights compressor;             // ratio != 0
  LinearWeight idx_wq_b, idx_weights_proj;  // ratio == 4
  CompressorWeights idx_compressor;
  // MoE
  LinearWeight gate;  // [E, D]
  Tensor gate_bias;   // f32 [E], score-routed layers
  Tensor tid2eid;     // I32 [vocab, k], hash-routed layers
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
};

// The MTP drafter (spec §2.10): its block is layers[n_layers] (a ratio-0 layer with its own window ring);
// these are its extras. Embedding and head are the main model's.
struct MtpWeights {
  LinearWeight e_proj, h_proj;  // [D, D]
  Tensor enorm, hnorm, norm;    // f32 [D]
  HcWeights hc_head;
};

// The DSpark block drafter of 0731 checkpoints (spec §7.1, semantics from third-party ports; model/dspark.cpp):
// its stages are layers [n_layers, n_layers + n_dspark_stages) (`mtp.0.` ...), ratio-0 blocks with their own
// window rings; these are its extras. Embedding and head are the main model's. The confidence head
// (`confidence_head.proj`) is not loaded: nothing uses it (the drafts are always the whole block).
struct DSparkWeights {
  LinearWeight main_proj;  // mtp.0: [D, targets * D], over the target layers' mean hc streams
  Tensor main_norm;        // mtp.0: f32 [D]
  Tensor norm;             // last stage: f32 [D]
  HcWeights hc_head;       // last stage
  LinearWeight markov_w1;  // last stage: bf16 [vocab, rank]; its rows are gathered by the previous token
  LinearWeight markov_w2;  // last stage: bf16 [vocab, rank]
};

// Which drafter's weights (and KV layers) to load besides the model.
enum class Drafter : uint8_t { None, Mtp, DSpark };

// EPLB: routed experts of the main layers placed after load, the ones a placement gives this rank
// (model/eplb.h). Same cuts and formats as load(); on a backend that imports host memory each is a view into
// the model's imported checkpoint mapping (no copy, no backend call), otherwise uploaded into buffers of its own.
struct ExpertSet {
  std::vector<std::vector<ExpertWeights>> layers;  // [n_layers][n_routed_experts]; the experts not held stay empty
  std::vector<std::unique_ptr<Buffer>> buffers;
  uint64_t placed_bytes = 0, tensor_bytes = 0;
};

struct LoadProgress {
  std::function<void(uint64_t done, uint64_t total)> on_bytes;  // called while weight bytes are placed
};

struct ModelWeights {
  std::unique_ptr<Checkpoint> ckpt;  // the mappings imported or uploaded tensors came from
  std::vector<std::unique_ptr<Buffer>> buffers;
  Placement placement;
  Tensor embed;  // bf16 or f32 [vocab, D]
  LinearWeight head;
  Tensor norm;
  HcWeights hc_head;
  std::vector<LayerWeights> layers;  // n_layers, then the drafter's blocks (one MTP layer, or the DSpark stages)
  Drafter drafter = Drafter::None;
  MtpWeights mtp;
  DSparkWeights dspark;
  Tensor rope_main, rope_compress;  // f64 per-pair frequencies of the two RoPE regimes
  uint64_t placed_bytes = 0;        // backend memory taken by weights (imported mappings included)
  uint64_t tensor_bytes = 0;        // bytes of this rank's tensors (its shards: what it reads per token)
  std::map<const std::string*, Buffer*> imported;  // checkpoint file -> its zero-copy buffer (in `buffers`)

  // EPLB: places expert e of main layer l where held[l][e] (a checkpoint load only). Has the held experts'
  // checkpoint pages read ahead, so a step after the switch does not wait on disk for them. Safe beside running
  // steps on a backend that imports host memory (nothing but views are made there).
  std::unique_ptr<ExpertSet> place_experts(const ModelConfig& c, Backend& be,
                                           const std::vector<std::vector<bool>>& held) const;

  // Loads, validates (errors name the file and tensor) and places every tensor the config needs, and the
  // drafter's (`mtp.*`; an error naming what is missing when the checkpoint has none).
  static std::unique_ptr<ModelWeights> load(const ModelConfig& c, const std::string& dir, Backend& be,
                                            Placement placement = {}, const LoadProgress& progress = {},
                                            Drafter drafter = Drafter::None);
  // Bytes of the tensors rank placement.rank would hold (its shards), from the checkpoint's headers and the
  // same cuts as load(); nothing is placed and no weight bytes are read (`dsv4 inspect --tensor-parallel-size`).
  static uint64_t measure(const ModelConfig& c, const std::string& dir, Placement placement);
  // --load-format dummy: every tensor of the config with valid random values, placed as a checkpoint's would be
  // (no checkpoint on disk; for benchmarks at full size).
  static std::unique_ptr<ModelWeights> load_dummy(const ModelConfig& c, Backend& be, uint64_t seed = 1,
                                                  Placement placement = {}, const LoadProgress& progress = {},
                                                  Drafter drafter = Drafter::None);
};

}  // namespace dsv4
