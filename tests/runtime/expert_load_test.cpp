// Expert load statistics (runtime/expert_load.h): the model's once-per-step counts against a brute-force count
// of every route op's output, the sliding window, and the JSON the server and `dsv4 expert-load` exchange.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <random>

#include "core/error.h"
#include "model/tiny_checkpoint.h"
#include "route_recorder.h"
#include "runtime/expert_load.h"
#include "runtime/session.h"

namespace fs = std::filesystem;
using namespace dsv4;

namespace {

// 4 layers (2 hash-routed, 2 score-routed), 16 experts top-2, a small vocabulary; skewed routing.
std::string skewed_model() {
  static const std::string dir = [] {
    nlohmann::json c = tiny_demo_config_json();
    c["vocab_size"] = 1024;
    c["n_routed_experts"] = 16;
    const fs::path d = fs::temp_directory_path() / ("dsv4-expert-load-" + std::to_string(::getpid()));
    make_random_checkpoint(d.string(), c, 5, 2.0);
    return d.string();
  }();
  return dir;
}

}  // namespace

TEST(ExpertLoad, CountsEqualABruteForceCountOfTheRouterOutputs) {
  test::RouteRecorder* rec = nullptr;
  SessionOptions o;
  o.model_dir = skewed_model();
  o.device = "cpu";
  o.numerics = Numerics::Exact;
  o.n_sequences = 2;
  o.max_tokens = 256;
  o.max_step_tokens = 256;
  o.expert_load_window = 3;
  o.backend_factory = [&rec] {
    auto r = std::make_unique<test::RouteRecorder>(make_cpu_backend());
    rec = r.get();
    return r;
  };
  Session s(o);
  const ModelConfig& c = s.config();
  const int L = c.n_layers, E = c.n_routed_experts;
  ASSERT_NE(s.runner().expert_load(), nullptr);
  std::mt19937 g(3);
  std::vector<int32_t> a(70), b(45);
  for (auto& t : a) t = int32_t(g() % 1024);
  for (auto& t : b) t = int32_t(g() % 1024);
  const int qa = s.new_sequence(), qb = s.new_sequence();
  // 5 steps: two prefills in one step, then chunks and single-token decodes; the window keeps the last 3.
  std::vector<std::vector<Session::Chunk>> steps = {
      {{qa, std::span<const int32_t>(a).subspan(0, 40)}, {qb, std::span<const int32_t>(b).subspan(0, 30)}},
      {{qa, std::span<const int32_t>(a).subspan(40, 30)}},
      {{qb, std::span<const int32_t>(b).subspan(30, 15)}},
      {{qa, std::span<const int32_t>(a).subspan(69, 1)}, {qb, std::span<const int32_t>(b).subspan(44, 1)}},
      {{qb, std::span<const int32_t>(b).subspan(0, 1)}},
  };
  std::vector<float> logits;
  std::vector<std::vector<uint64_t>> per_step;  // brute force, per step [L * E]
  for (auto& st : steps) {
    rec->routes.clear();
    s.forward(st, logits);
    ASSERT_EQ(int(rec->routes.size()), L);  // one route op per layer
    std::vector<uint64_t> n(size_t(L * E), 0);
    int64_t rows = 0;
    for (auto& ch : st) rows += int64_t(ch.tokens.size());
    for (int l = 0; l < L; ++l) {
      ASSERT_EQ(int64_t(rec->routes[size_t(l)].size()), rows * c.n_experts_per_tok);
      for (int32_t e : rec->routes[size_t(l)]) ++n[size_t(l * E + e)];
    }
    per_step.push_back(n);
  }
  const ExpertLoadSnapshot snap = s.runner().expert_load()->snapshot();
  EXPECT_EQ(snap.layers, L);
  EXPECT_EQ(snap.experts, E);
  EXPECT_EQ(snap.window, 3);
  EXPECT_EQ(snap.steps, 3);
  EXPECT_EQ(snap.total_steps, 5u);
  std::vector<uint64_t> want(size_t(L * E), 0);
  for (size_t k = 2; k < 5; ++k)
    for (size_t i = 0; i < want.size(); ++i) want[i] += per_step[k][i];
  EXPECT_EQ(snap.counts, want);
  // The skewed model's routing is skewed: the busiest expert of every layer is well above the mean.
  for (int l = 0; l < L; ++l) EXPECT_GT(snap.imbalance(l), 1.5) << "layer " << l;
}

TEST(ExpertLoad, WindowSlidesAndJsonRoundTrips) {
  ExpertLoad w(2, 3, 2);
  EXPECT_EQ(w.snapshot().imbalance(0), 1.0);  // nothing counted yet
  w.add({1, 2, 3, 4, 5, 6});
  w.add({10, 0, 0, 0, 0, 10});
  w.add({0, 0, 6, 1, 1, 1});  // the first step leaves the window
  const ExpertLoadSnapshot s = w.snapshot();
  EXPECT_EQ(s.counts, (std::vector<uint64_t>{10, 0, 6, 1, 1, 11}));
  EXPECT_EQ(s.steps, 2);
  EXPECT_EQ(s.total_steps, 3u);
  EXPECT_DOUBLE_EQ(s.imbalance(0), 10.0 / (16.0 / 3));
  EXPECT_DOUBLE_EQ(s.imbalance(1), 11.0 / (13.0 / 3));
  const ExpertLoadSnapshot r = ExpertLoadSnapshot::from_json(nlohmann::json::parse(s.to_json().dump()));
  EXPECT_EQ(r.counts, s.counts);
  EXPECT_EQ(r.window, 2);
  EXPECT_EQ(r.steps, 2);
  EXPECT_EQ(r.total_steps, 3u);
  EXPECT_THROW(w.add({1, 2}), std::exception);
  nlohmann::json bad = s.to_json();
  bad["counts"][1] = {1, 2};
  EXPECT_THROW(ExpertLoadSnapshot::from_json(bad), std::exception);
}

TEST(ExpertLoad, TableShowsRankLoadsByIdAndUnderEplb) {
  ExpertLoad w(1, 4, 10);
  w.add({90, 5, 3, 2});
  const std::string t = format_expert_load(w.snapshot(), 2, 2);
  // By id: ranks hold {0,1} = 95 and {2,3} = 5: max/mean 1.9. EPLB with 2 redundant slots: 90 split in 3.
  EXPECT_NE(t.find("1.900"), std::string::npos) << t;
  EXPECT_NE(t.find("EPLB +2"), std::string::npos) << t;
  EXPECT_NE(t.find("90.0%"), std::string::npos) << t;
}

TEST(ExpertLoad, EplbPlacementsServedRoundTripAndPrint) {
  ExpertLoad el(2, 4, 3);
  el.add({1, 2, 3, 4, 5, 6, 7, 8});
  ExpertLoadSnapshot s = el.snapshot();
  s.eplb = {{0, 5, 2, {30, 10, 20, 20}}, {1, 4, 2, {16, 14, 15, 15}}};
  EXPECT_NEAR(s.eplb[0].max_over_mean(), (1.5 + 1.0) / 2, 1e-12);  // layer 0: 30 of 20 mean; layer 1 even
  const ExpertLoadSnapshot back = ExpertLoadSnapshot::from_json(s.to_json());
  ASSERT_EQ(back.eplb.size(), 2u);
  EXPECT_EQ(back.eplb[1].epoch, 1u);
  EXPECT_EQ(back.eplb[1].steps, 4u);
  EXPECT_EQ(back.eplb[1].rank_tokens, s.eplb[1].rank_tokens);
  const std::string table = format_expert_load(back, 1, 0);
  EXPECT_NE(table.find("EPLB placements served"), std::string::npos) << table;
  EXPECT_NE(table.find("1.250"), std::string::npos) << table;
  nlohmann::json bad = s.to_json();
  bad["eplb"][0]["rank_tokens"] = {1, 2, 3};  // not layers x ranks
  EXPECT_THROW(ExpertLoadSnapshot::from_json(bad), Error);
  EXPECT_FALSE(ExpertLoadSnapshot::from_json(el.snapshot().to_json()).to_json().contains("eplb"));  // none: absent
}
