// The DeepSeek-V4 forward pass, written once against the Backend interface (spec §2).
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/sequence_state.h"
#include "model/weights.h"

namespace dsv4 {

// exact: fp32 activations, no rounding beyond the weights' own formats.
// reference: the official reference's rounding (FP8 per-128 linear inputs, bf16 activations, FP8 KV nope
// round trip, Hadamard + FP4 indexer, bf16 attention probabilities).
enum class Numerics { Exact, Reference };
Numerics parse_numerics(const std::string& s);

// One sequence's chunk in a batched forward call.
struct ForwardItem {
  SequenceState* seq = nullptr;
  std::span<const int32_t> tokens;  // processed at positions seq->pos, seq->pos + 1, ...
  bool all_logits = false;          // logits for every token (scoring) or only the last one
  bool skip_logits = false;         // no logits at all (a prefill chunk that does not end the prompt)
};

class Dsv4Model {
 public:
  Dsv4Model(const std::string& dir, Numerics numerics, std::unique_ptr<Backend> backend = nullptr);
  // KV storage dtype of sequences made by new_sequence(): f32 under exact numerics (lossless), bf16 under
  // reference numerics (lossless there too: the reference keeps KV in bf16 with FP8-rounded nope dims).
  KvDtype default_kv_dtype() const { return numerics_ == Numerics::Exact ? KvDtype::F32 : KvDtype::BF16; }

  const ModelConfig& config() const { return cfg_; }
  Numerics numerics() const { return numerics_; }
  // A standalone sequence with its own growing KV pool (scoring, tests).
  std::unique_ptr<SequenceState> new_sequence() const {
    return std::make_unique<SequenceState>(cfg_, nullptr, default_kv_dtype());
  }

  // Advances every item's sequence by its tokens. Logits rows ([rows, vocab] fp32) are appended to `logits`
  // in item order: T rows for all_logits items, one row otherwise.
  void forward(std::span<const ForwardItem> items, std::vector<float>& logits);

 private:
  struct Batch;
  void attention(int l, const Batch& b, const float* x, float* out);
  void compressor(int l, bool indexer, const Batch& b, const float* x);
  void moe(int l, const Batch& b, const float* x, float* out);
  void round(float* x, int64_t n) const;
  const RopeTable& rope_for(int l) const { return cfg_.ratio(l) ? rope_compress_ : rope_main_; }

  ModelConfig cfg_;
  Numerics numerics_;
  std::unique_ptr<Backend> be_;
  ModelWeights w_;
  RopeTable rope_main_, rope_compress_;
};

}  // namespace dsv4
