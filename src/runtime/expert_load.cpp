#include "runtime/expert_load.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "model/expert_placement.h"

namespace dsv4 {

std::vector<double> ExpertLoadSnapshot::layer_load(int l) const {
  DSV4_CHECK(l >= 0 && l < layers, "expert load: layer {} of {}", l, layers);
  return {counts.begin() + int64_t(l) * experts, counts.begin() + int64_t(l + 1) * experts};
}

double ExpertLoadSnapshot::imbalance(int l) const { return max_over_mean(layer_load(l)); }

double EplbEpochStats::max_over_mean() const {
  const size_t R = size_t(std::max(ranks, 1)), layers = rank_tokens.size() / R;
  if (!layers) return 1;
  double sum = 0;
  for (size_t l = 0; l < layers; ++l)
    sum += dsv4::max_over_mean(std::vector<double>(rank_tokens.begin() + long(l * R), rank_tokens.begin() + long((l + 1) * R)));
  return sum / double(layers);
}

std::string format_eplb_epochs(const std::vector<EplbEpochStats>& epochs) {
  std::string out = "EPLB placements served (rank load: tokens each rank computed, max/mean over ranks, mean over layers)\n";
  out += fmt::format("{:>9} {:>8} {:>12} {:>15}\n", "placement", "steps", "tokens", "max/mean rank");
  for (const EplbEpochStats& e : epochs)
    out += fmt::format("{:>9} {:>8} {:>12} {:>15.3f}\n", e.epoch, e.steps,
                       std::accumulate(e.rank_tokens.begin(), e.rank_tokens.end(), uint64_t(0)), e.max_over_mean());
  return out;
}

nlohmann::json ExpertLoadSnapshot::to_json() const {
  nlohmann::json rows = nlohmann::json::array();
  for (int l = 0; l < layers; ++l) rows.push_back(std::vector<uint64_t>(counts.begin() + int64_t(l) * experts,
                                                                        counts.begin() + int64_t(l + 1) * experts));
  nlohmann::json j = {{"layers", layers}, {"experts", experts}, {"window_steps", window}, {"steps", steps},
                      {"total_steps", total_steps}, {"counts", rows}};
  if (!eplb.empty()) {
    j["eplb"] = nlohmann::json::array();
    for (const EplbEpochStats& e : eplb)
      j["eplb"].push_back({{"placement", e.epoch}, {"steps", e.steps}, {"ranks", e.ranks},
                           {"rank_tokens", e.rank_tokens}, {"max_over_mean", e.max_over_mean()}});
  }
  return j;
}

ExpertLoadSnapshot ExpertLoadSnapshot::from_json(const nlohmann::json& j) {
  try {
    ExpertLoadSnapshot s;
    s.layers = j.at("layers").get<int>();
    s.experts = j.at("experts").get<int>();
    s.window = j.at("window_steps").get<int>();
    s.steps = j.at("steps").get<int>();
    s.total_steps = j.at("total_steps").get<uint64_t>();
    const auto& rows = j.at("counts");
    if (s.layers < 0 || s.experts < 0 || int(rows.size()) != s.layers)
      fail("expert load: {} rows of counts for {} layers", rows.size(), s.layers);
    for (const auto& r : rows) {
      if (int(r.size()) != s.experts) fail("expert load: a row of {} counts for {} experts", r.size(), s.experts);
      for (const auto& v : r) s.counts.push_back(v.get<uint64_t>());
    }
    if (j.contains("eplb"))
      for (const auto& e : j.at("eplb")) {
        EplbEpochStats st{e.at("placement").get<uint64_t>(), e.at("steps").get<uint64_t>(), e.at("ranks").get<int>(),
                          e.at("rank_tokens").get<std::vector<uint64_t>>()};
        if (st.ranks < 1 || st.rank_tokens.size() != size_t(s.layers) * size_t(st.ranks))
          fail("expert load: EPLB placement {} has {} rank counts for {} layers x {} ranks", st.epoch,
               st.rank_tokens.size(), s.layers, st.ranks);
        s.eplb.push_back(std::move(st));
      }
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail("expert load: malformed document: {}", e.what());
  }
}

ExpertLoad::ExpertLoad(int layers, int experts, int window)
    : layers_(layers), experts_(experts), window_(window), sums_(size_t(layers) * size_t(experts), 0) {
  DSV4_CHECK(window > 0, "expert load window must be at least one step");
}

void ExpertLoad::add(const std::vector<uint32_t>& c) {
  DSV4_CHECK(c.size() == sums_.size(), "expert load: {} counts for {} layers x {} experts", c.size(), layers_,
             experts_);
  std::lock_guard lk(mu_);
  if (int(steps_.size()) == window_) {
    const auto& old = steps_.front();
    for (size_t i = 0; i < sums_.size(); ++i) sums_[i] -= old[i];
    steps_.pop_front();
  }
  for (size_t i = 0; i < sums_.size(); ++i) sums_[i] += c[i];
  steps_.push_back(c);
  ++total_steps_;
}

ExpertLoadSnapshot ExpertLoad::snapshot() const {
  std::lock_guard lk(mu_);
  ExpertLoadSnapshot s;
  s.layers = layers_;
  s.experts = experts_;
  s.window = window_;
  s.steps = int(steps_.size());
  s.total_steps = total_steps_;
  s.counts = sums_;
  return s;
}

std::string format_expert_load(const ExpertLoadSnapshot& s, int ep_ranks, int redundant) {
  std::string out = fmt::format("expert load over {} of {} steps ({} counted in all): {} layers x {} experts\n",
                                s.steps, s.window, s.total_steps, s.layers, s.experts);
  out += fmt::format("{:>5} {:>10} {:>7} {:>7} {:>9}", "layer", "tokens", "hottest", "share", "max/mean");
  const bool ranks = ep_ranks > 1, eplb = ranks && redundant > 0;
  if (ranks) out += fmt::format(" {:>15}", fmt::format("EP={} by id", ep_ranks));
  if (eplb) out += fmt::format(" {:>15}", fmt::format("EPLB +{}", redundant));
  out += "\n";
  for (int l = 0; l < s.layers; ++l) {
    const std::vector<double> load = s.layer_load(l);
    const double total = std::accumulate(load.begin(), load.end(), 0.0);
    const int hot = int(std::max_element(load.begin(), load.end()) - load.begin());
    out += fmt::format("{:>5} {:>10} {:>7} {:>6.1f}% {:>9.3f}", l, uint64_t(total), hot,
                       total > 0 ? 100 * load[size_t(hot)] / total : 0.0, max_over_mean(load));
    if (ranks)
      out += fmt::format(" {:>15.3f}", max_over_mean(rank_loads(load, contiguous_placement(s.experts, ep_ranks), ep_ranks)));
    if (eplb) {
      const LayerPlacement p = rebalance_experts(load, {s.experts + redundant, 1, 1, ep_ranks});
      out += fmt::format(" {:>15.3f}", max_over_mean(rank_loads(load, p, ep_ranks)));
    }
    out += "\n";
  }
  if (ranks) out += "rank columns: max/mean tokens per rank, an expert's tokens split evenly over its copies\n";
  if (!s.eplb.empty()) out += format_eplb_epochs(s.eplb);
  return out;
}

}  // namespace dsv4
