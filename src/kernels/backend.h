// The compute interface the DeepSeek-V4 graph is written against. One implementation per device
// (kernels/cpu now, kernels/cuda next); the graph in model/ never does arithmetic on activations itself.
// Buffers are row-major float32 in the backend's memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/linear_weight.h"

namespace dsv4 {

// Per-pair angular frequencies of one RoPE regime (plain, or YaRN-scaled), rotating the LAST 2*freqs dims.
struct RopeTable {
  std::vector<double> freqs;
  static RopeTable make(int rope_dim, double base, int original_max_pos, double factor, double beta_fast,
                        double beta_slow);
};

struct LinearOpts {
  bool act_fp8 = false;   // reference numerics: FP8 e4m3 per-128 quantization of the input rows
  bool out_bf16 = false;  // reference numerics: round the output to bf16
};

// Manifold-constrained hyper-connection parameters of one site (spec §2.3).
struct HcParams {
  const float* fn = nullptr;     // [rows, hc * D]
  const float* base = nullptr;   // [rows]
  const float* scale = nullptr;  // [3] (block sites) or [1] (head)
  int hc = 4, D = 0, sinkhorn_iters = 20;
  float norm_eps = 1e-6f, hc_eps = 1e-6f;
};

struct AttentionArgs {
  int64_t M = 0, H = 0, hd = 0;
  const float* q = nullptr;                               // [M, H, hd]
  const float* sink = nullptr;                            // [H] per-head sink logit
  const std::vector<std::vector<const float*>>* keys = nullptr;  // per query row: K=V vectors (hd floats)
  float scale = 1.f;
  bool probs_bf16 = false;  // reference numerics: probabilities rounded to bf16 before P.V
  float* out = nullptr;     // [M, H, hd]
};

// One compressor (spec §2.6) fed T consecutive tokens of one sequence, starting at position `start`.
// State slots: [0, ratio) = previous window (overlap only), then the current window; each slot holds the
// token's values and its gate logits (+ ape) for all coff*d channels.
struct CompressArgs {
  int ratio = 4, coff = 2, d = 0;
  const float* u = nullptr;    // [T, coff*d] values  (wkv . x)
  const float* g = nullptr;    // [T, coff*d] gate logits (wgate . x), ape not yet added
  const float* ape = nullptr;  // [ratio, coff*d]
  int64_t start = 0, T = 0;
  float* state_kv = nullptr;     // [coff*ratio, coff*d]
  float* state_score = nullptr;  // [coff*ratio, coff*d]
  float* out = nullptr;          // room for T/ratio + 1 pooled entries of d floats
};

// MoE routing of M tokens (spec §2.8): experts by bias-corrected top-k or by the token-id hash table,
// weights = unbiased scores at those experts, normalized, times route_scale.
struct RouteArgs {
  const float* logits = nullptr;   // [M, E]
  int64_t M = 0;
  int E = 0, k = 0;
  int score_func = 0;              // 0 sqrtsoftplus, 1 sigmoid, 2 softmax
  const float* bias = nullptr;     // [E] (score routing) or null
  const int32_t* tid2eid = nullptr;  // [vocab, k] (hash routing) or null
  const int32_t* tokens = nullptr;   // [M] for hash routing
  bool normalize = true;
  float route_scale = 1.f;
  int32_t* experts = nullptr;      // out [M, k]
  float* weights = nullptr;        // out [M, k]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // y[M, w.out] = x[M, w.in] . W^T in the weight's own format.
  virtual void linear(const float* x, int64_t M, const LinearWeight& w, float* y, LinearOpts o) = 0;
  // y = x / sqrt(mean(x^2) + eps) * w per row (w may be null). x == y allowed.
  virtual void rms_norm(const float* x, int64_t M, int64_t D, const float* w, float eps, float* y) = 0;
  // Rotates the last 2*freqs dims of each of the H vectors (stride hd) of row m at position pos[m].
  virtual void rope(float* x, int64_t M, int64_t H, int64_t hd, const int64_t* pos, const RopeTable& t,
                    bool inverse) = 0;
  // HC_pre: X [M, hc, D] -> y [M, D], post [M, hc], comb [M, hc, hc] (Sinkhorn-normalized).
  virtual void hc_pre(const float* X, int64_t M, const HcParams& p, float* y, float* post, float* comb) = 0;
  // HC_post: Xout[m, k] = post[m, k] * y[m] + sum_j comb[m, j, k] * X[m, j]. Xout != X.
  virtual void hc_post(const float* y, const float* X, const float* post, const float* comb, int64_t M, int hc,
                       int64_t D, float* Xout) = 0;
  // HyperHead: y[m] = sum_h (sigmoid(mix_h * scale + base_h) + eps) * X[m, h].
  virtual void hc_head(const float* X, int64_t M, const HcParams& p, float* y) = 0;
  // Sparse attention with a per-head sink: each query row attends to its own list of K=V vectors.
  virtual void attention(const AttentionArgs& a) = 0;
  // Lightning-indexer scores of one query: score[j] = sum_h w[h] * relu(q[h] . keys[j]).
  virtual void index_scores(const float* q, const float* w, int64_t heads, int64_t dim, const float* keys,
                            int64_t n_keys, float* scores, bool bf16) = 0;
  // Returns the number of entries pooled into a.out.
  virtual int64_t compress(const CompressArgs& a) = 0;
  virtual void route(const RouteArgs& a) = 0;
  // Indices of the k largest of scores[0, n), highest first; exact ties go to the LOWEST index.
  virtual void topk(const float* scores, int64_t n, int64_t k, int32_t* out) = 0;
  // SwiGLU with the checkpoint's clamp: h = silu(min(g, limit)) * clamp(u, -limit, limit) * weight[m].
  virtual void swiglu(const float* gate, const float* up, int64_t M, int64_t N, float limit, const float* weight,
                      float* h) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace dsv4
