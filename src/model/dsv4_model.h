// The DeepSeek-V4 forward pass (spec §2), written once against the Backend interface. Host-free: the graph
// only calls backend ops on tensors in backend memory; what it needs to know on the host (entries completed,
// block ends reached) it computes from the step's positions, never by reading results back.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/eplb.h"
#include "model/kv_cache.h"
#include "model/pipeline.h"
#include "model/step_batch.h"
#include "model/weights.h"
#include "model/workspace.h"

namespace dsv4 {

// exact: fp32 activations, no rounding beyond the weights' own formats.
// reference: the official reference's rounding (FP8 per-128 linear inputs, bf16 activations, FP8 KV nope
// round trip, Hadamard + FP4 indexer, bf16 attention probabilities).
enum class Numerics { Exact, Reference };
Numerics parse_numerics(const std::string& s);
// KV dtype that is lossless under the numerics: f32 (exact), bf16 (reference keeps KV in bf16 with FP8-rounded
// nope dims).
KvDtype default_kv_dtype(Numerics n);

// Backend calls made by one forward pass, for the benchmarks' per-step report.
struct ForwardStats {
  uint64_t ops_total = 0, ops_per_layer_max = 0, ops_per_layer_min = 0;
  uint64_t downloads_in_layers = 0;
  double host_seconds = 0;  // host time to build the tables and issue every op (the device may still be running)
};

class Dsv4Model {
 public:
  // `comm` (optional) is this rank's tensor-parallel data plane; the weights are then this rank's shards
  // (w.placement). Per step and layer it adds one all-reduce after the attention output projection and one
  // after the MoE, plus one all-gather of the vocab-split logits (docs/perf-notes.md has the byte counts).
  Dsv4Model(const ModelConfig& cfg, const ModelWeights& w, Backend& be, Numerics numerics,
            dist::Communicator* comm = nullptr);

  // Pipeline parallelism (before workspace_bytes): this rank runs stage.layers only. forward() then takes the
  // residual streams from the stage before (the first stage embeds) and sends its own to the stage after; only
  // the last stage applies the head and returns logits (the others return an invalid tensor). The weights and KV
  // must be placed for the stage.
  void set_pipeline(const PipelineStage& stage);
  const PipelineStage& pipeline() const { return pipe_; }

  const ModelConfig& config() const { return cfg_; }
  Numerics numerics() const { return numerics_; }
  // Workspace bytes a step within `limits` needs (for a KV layout with `block_tokens`-token blocks).
  uint64_t workspace_bytes(const StepLimits& limits, int block_tokens) const;
  // Of those, the indexer's score scratch (0 without ratio-4 layers): max_rows x the backend's columns.
  uint64_t index_scratch_bytes(const StepLimits& limits) const;

  // Advances every item by its tokens. Returns the logits ([logit_rows, vocab] f32, in item order: every row
  // of All items, the last of Last items) as a tensor in `ws`, valid until the next forward. With N ranks the
  // vocabulary is split: the tensor is [N, logit_rows, vocab / N] (rank r's columns in block r), the same on
  // every rank.
  // An MTP batch (batch.mtp) runs the drafter instead: its logits are the draft distributions' logits.
  Tensor forward(const StepBatch& batch, KvStorage& kv, Workspace& ws, ForwardStats* stats = nullptr);

  // Speculative decoding with the MTP drafter (weights loaded with_mtp): allocates the hidden store the MTP
  // batches read (the main model's last-layer streams, the drafter's own for its recursive steps).
  void enable_mtp(const StepLimits& limits);
  bool mtp_enabled() const { return hidden_buf_ != nullptr; }
  // Speculative decoding with the DSpark block drafter (weights loaded with Drafter::DSpark; model/dspark.cpp):
  // from then on every main batch also writes each stage's window ring from the target layers' streams, and
  // DSpark batches (batch.dspark) run the drafter's block or Markov pass. Before workspace_bytes.
  void enable_dspark(const StepLimits& limits);
  bool dspark_enabled() const { return dspark_buf_ != nullptr; }
  // Expert-load counting (set before workspace_bytes): each layer's router output stays in the workspace and
  // one download after the last layer reads them all, never one inside the graph. expert_counts() is then
  // the last step's tokens per (layer, expert), [n_layers * n_routed_experts].
  void set_count_experts(bool on) { count_experts_ = on; }
  const std::vector<uint32_t>& expert_counts() const { return expert_counts_; }
  // With expert counting: the last step's top-k ids, [n_layers, rows, k].
  const std::vector<int32_t>& routes() const { return routes_; }
  // EPLB (weights placed with Placement::eplb): the main layers' routed experts and each layer's row split
  // come from `p` from the next forward on (switched between steps; `p` must outlive its use).
  void set_eplb(const EplbRankExperts* p) { eplb_ = p; }

 private:
  struct Step;
  void block(int l, Step& s);
  void mtp_input(Step& s, const StepBatch& batch);
  // This step's K=V rows of layer l from its input x (projection, norm, RoPE, the KV format's rounding) into s.kv.
  void window_kv(int l, Step& s, const Tensor& x);
  // DSpark (model/dspark.cpp; the forward calls them where it says DSpark). stream_mean: X [M, hc * D] ->
  // means [M, hc * D], every stream the mean of X's. main_x: the context feature (each row's target-layer means,
  // gathered by fidx from means) through main_proj and main_norm into x [M, D]. markov: logits [M, V] =
  // markov_w2 . markov_w1[tokens[m]] into e [M, rank] then logits.
  void dspark_stream_mean(const Tensor& X, const Tensor& means) const;
  void dspark_main_x(const Tensor& means, const Tensor& fidx, const Tensor& feat, const Tensor& x) const;
  void dspark_markov(const Tensor& tokens, const Tensor& e, const Tensor& logits) const;
  void attention(int l, Step& s, const Tensor& x, const Tensor& out);
  void compressor(int l, bool indexer, Step& s, const Tensor& x);
  void moe(int l, Step& s, const Tensor& x, const Tensor& out);
  void count_routes(const Step& s);
  void round(const Tensor& x) const;
  const Tensor& rope_for(int l) const { return cfg_.ratio(l) ? w_.rope_compress : w_.rope_main; }
  HcParams hc_params(const HcWeights& h) const;

  // Sums a row-parallel result over the ranks, then applies the bf16 rounding the single-rank linear would
  // have applied to the whole sum.
  void reduce(const Tensor& x) const;
  ModelConfig cfg_;
  const ModelWeights& w_;
  Backend& be_;
  Numerics numerics_;
  dist::Communicator* comm_ = nullptr;
  int tp_ = 1;  // ranks sharing each layer
  PipelineStage pipe_;  // the whole model by default
  // MTP: hidden store [max_rows + max_logit_rows, hc * D], and the constants that add the embedding term to
  // every stream through hc_post (post = 1, comb = identity).
  std::unique_ptr<Buffer> hidden_buf_;
  Tensor hidden_, ones_, ident_;
  int64_t hidden_main_rows_ = 0;
  // DSpark: the constants of the stream mean through hc_post (post = 0, y = 0, comb = 1 / hc), and for each main
  // layer its index among the target layers (-1: not one).
  std::unique_ptr<Buffer> dspark_buf_;
  Tensor ds_zero_post_, ds_zero_y_, ds_mean_comb_;
  std::vector<int> ds_target_;
  bool count_experts_ = false;
  const EplbRankExperts* eplb_ = nullptr;
  std::vector<uint32_t> expert_counts_;
  std::vector<int32_t> routes_;  // the last step's top-k ids, [n_layers, M, K] (reused buffer)
};

}  // namespace dsv4
