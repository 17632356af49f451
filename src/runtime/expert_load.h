// Expert load statistics: tokens routed to each routed expert of each MoE layer, over a sliding window of the
// last `window` forward passes (the model counts them from the router's top-k output, one download per step;
// Dsv4Model::set_count_experts). Rank 0 keeps them: every rank routes the same tokens to the same experts.
// Read by /metrics (per-layer max/mean imbalance), GET /expert_load (the counts as JSON; `dsv4 expert-load`)
// and `dsv4 score --expert-load`. Thread-safe: the engine adds, HTTP threads read.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace dsv4 {

// EPLB: one placement as served (rank 0): its forward passes and the tokens each rank computed per layer,
// counted from the router's choices and the placement actually used (ModelRunner::eplb_epochs).
struct EplbEpochStats {
  uint64_t epoch = 0, steps = 0;
  int ranks = 1;
  std::vector<uint64_t> rank_tokens;  // [layers * ranks]
  // Each layer's busiest rank over the mean rank, averaged over the layers (1: even, or no tokens).
  double max_over_mean() const;
};

struct ExpertLoadSnapshot {
  int layers = 0, experts = 0;
  int window = 0;             // configured window, in steps (0: counting off)
  int steps = 0;              // steps now in the window (<= window)
  uint64_t total_steps = 0;   // steps counted since start
  std::vector<uint64_t> counts;  // [layers * experts]: tokens routed over the window (k per token per layer)
  std::vector<EplbEpochStats> eplb;  // with EPLB: every placement served, the current one last

  bool enabled() const { return window > 0; }
  std::vector<double> layer_load(int layer) const;
  // max / mean over the layer's experts (1 when the window holds no tokens).
  double imbalance(int layer) const;
  nlohmann::json to_json() const;
  static ExpertLoadSnapshot from_json(const nlohmann::json& j);  // throws dsv4::Error on a malformed document
};

class ExpertLoad {
 public:
  ExpertLoad(int layers, int experts, int window);
  // One step's counts, [layers * experts]; the oldest step leaves the window once it is full.
  void add(const std::vector<uint32_t>& step_counts);
  ExpertLoadSnapshot snapshot() const;

 private:
  mutable std::mutex mu_;
  int layers_, experts_, window_;
  uint64_t total_steps_ = 0;
  std::deque<std::vector<uint32_t>> steps_;
  std::vector<uint64_t> sums_;
};

// With EPLB: one line per placement served (steps, max/mean rank load measured under it).
std::string format_eplb_epochs(const std::vector<EplbEpochStats>& epochs);

// A text table: per layer the tokens, the hottest expert and its share, max/mean over experts; with
// ep_ranks > 1 also max/mean rank load with experts split by id (contiguous) and, with redundant > 0, under
// the EPLB placement the policy computes for these loads (model/expert_placement.h).
std::string format_expert_load(const ExpertLoadSnapshot& s, int ep_ranks, int redundant);

}  // namespace dsv4
