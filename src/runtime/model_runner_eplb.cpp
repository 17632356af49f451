// ModelRunner's expert-parallel load balancing (RunnerOptions::eplb). Rank 0 recomputes the placement from
// the expert load window every `interval` forward passes and broadcasts it on the control plane; every rank
// prepares its experts of it on a background thread while steps go on; once rank 0's own preparation is done
// it tells every rank to switch before the next step plan, so all ranks change placement between the same two
// steps (a rank whose preparation is still running finishes it first: slower, never inconsistent).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "runtime/model_runner.h"

namespace dsv4 {

std::vector<EplbEpochStats> ModelRunner::eplb_epochs() const {
  std::lock_guard<std::mutex> lk(eplb_mu_);
  return eplb_epochs_;
}

void ModelRunner::eplb_start() {
  const int ranks = tp_size_, rank = control_->tensor_group()->rank();
  eplb_cur_ = EplbRankExperts::prepare(EplbPlacement::initial(cfg_, ranks, opts_.eplb.redundant), rank, cfg_,
                                       *weights_, *be_);
  model_->set_eplb(eplb_cur_.get());
  eplb_owner_.clear();
  for (int l = 0; l < cfg_.n_layers; ++l) eplb_owner_.push_back(eplb_cur_->placement.replica_ranks(l));
  if (rank == 0) {
    std::lock_guard<std::mutex> lk(eplb_mu_);
    eplb_epochs_.push_back({0, 0, ranks, std::vector<uint64_t>(size_t(cfg_.n_layers * ranks), 0)});
  }
  spdlog::info("EPLB: {} experts + {} redundant slots per layer over {} ranks ({} slots each), rebalanced every {} "
               "steps", cfg_.n_routed_experts, opts_.eplb.redundant, ranks, eplb_cur_->placement.slots_per_rank(),
               opts_.eplb.interval);
}

void ModelRunner::eplb_prepare(EplbPlacement p) {
  DSV4_CHECK(eplb_cur_ && !eplb_next_.valid(), "EPLB: a new placement while another is being prepared");
  p.validate(cfg_.n_layers, cfg_.n_routed_experts);
  const int rank = control_->tensor_group()->rank();
  // Only host work and views into the imported checkpoint on the CPU backend (the runner refuses others).
  eplb_next_ = std::async(std::launch::async, [this, p = std::move(p), rank]() mutable {
    return EplbRankExperts::prepare(std::move(p), rank, cfg_, *weights_, *be_);
  });
}

void ModelRunner::eplb_switch(uint64_t epoch) {
  DSV4_CHECK(eplb_next_.valid(), "EPLB: told to switch to placement {} with none prepared", epoch);
  eplb_install(eplb_next_.get(), epoch);  // waits if this rank is still preparing
}

void ModelRunner::eplb_install(std::unique_ptr<EplbRankExperts> next, uint64_t epoch) {
  DSV4_CHECK(next->placement.epoch == epoch, "EPLB: told to switch to placement {}, prepared {}", epoch,
             next->placement.epoch);
  model_->set_eplb(next.get());
  eplb_cur_ = std::move(next);  // the old experts' views go; no step is running
  eplb_owner_.clear();
  for (int l = 0; l < cfg_.n_layers; ++l) eplb_owner_.push_back(eplb_cur_->placement.replica_ranks(l));
  if (control_->rank() != 0) return;
  std::lock_guard<std::mutex> lk(eplb_mu_);
  const EplbEpochStats& done = eplb_epochs_.back();
  spdlog::info("EPLB: placement {} served {} steps at max/mean rank load {:.3f}; switching to placement {}",
               done.epoch, done.steps, done.max_over_mean(), epoch);
  eplb_epochs_.push_back({epoch, 0, tp_size_, std::vector<uint64_t>(size_t(cfg_.n_layers * tp_size_), 0)});
}

void ModelRunner::eplb_before_step() {
  if (!eplb_next_.valid() || eplb_next_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
  // Rank 0's own preparation is done; a failure in it surfaces here, before any rank is told to switch.
  std::unique_ptr<EplbRankExperts> next = eplb_next_.get();
  const uint64_t epoch = next->placement.epoch;
  send(kEplbSwitch, std::to_string(epoch));
  eplb_install(std::move(next), epoch);
}

void ModelRunner::eplb_after_step() {
  // The step's tokens per (layer, rank) under the placement it ran with: row m's product with expert e ran on
  // the rank of replica m % copies[e] (kernels/backend.h ExpertShare).
  const std::vector<int32_t>& routes = model_->routes();
  const int64_t L = cfg_.n_layers, K = cfg_.n_experts_per_tok, ranks = tp_size_;
  const int64_t M = int64_t(routes.size()) / (L * K);
  {
    std::lock_guard<std::mutex> lk(eplb_mu_);
    EplbEpochStats& cur = eplb_epochs_.back();
    ++cur.steps;
    for (int64_t l = 0; l < L; ++l) {
      const LayerPlacement& P = eplb_cur_->placement.layers[size_t(l)];
      const ExpertShare& sh = eplb_cur_->shares[size_t(l)];
      for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < K; ++j) {
          const int32_t e = routes[size_t((l * M + m) * K + j)];
          const int32_t owner = eplb_owner_[size_t(l)][size_t(sh.offset[size_t(e)] + m % P.logcnt[size_t(e)])];
          ++cur.rank_tokens[size_t(l * ranks + owner)];
        }
    }
  }
  if (++eplb_steps_ < uint64_t(opts_.eplb.interval) || eplb_next_.valid()) return;
  eplb_steps_ = 0;
  const ExpertLoadSnapshot snap = expert_load_->snapshot();
  std::vector<std::vector<double>> loads;
  for (int l = 0; l < cfg_.n_layers; ++l) loads.push_back(snap.layer_load(l));
  EplbPlacement next = EplbPlacement::compute(loads, int(ranks), opts_.eplb.redundant, eplb_cur_->placement.epoch + 1);
  if (next.same_slots(eplb_cur_->placement)) return;  // nothing moves: keep serving as is
  spdlog::info("EPLB: placement {} computed from {} steps of expert load; preparing it on every rank", next.epoch,
               snap.steps);
  send(kEplbPlacement, next.serialize());
  eplb_prepare(std::move(next));
}

}  // namespace dsv4
