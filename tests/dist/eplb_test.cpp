// Expert-parallel load balancing with real processes on a made model with skewed routing (`dsv4 make-tiny
// --route-skew 2`): `dsv4 score` rebalancing every 3 steps gives the logits of one rank and of plain expert
// parallelism (to float rounding, as EP itself), the placements it switched to balance the ranks' measured
// loads better than the start, and invalid combinations are refused with the reason.
#include <gtest/gtest.h>

#include <regex>

#include "score_run.h"

namespace fs = std::filesystem;
using namespace score_run;

namespace {

const std::string& skewed_model() {
  static const std::string dir = [] {
    const fs::path d = temp_dir() / "skew";
    const std::string cmd = kBin + " make-tiny --out " + d.string() + " --route-skew 2 --tokenizer " +
                            std::string(DSV4_SOURCE_DIR) + "/assets/tokenizer/tokenizer.json > " + d.string() +
                            ".log 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return d.string();
  }();
  return dir;
}

// The "max/mean rank load X" of each "placement N served S steps" log line, in order.
std::vector<double> served_imbalance(const std::string& log) {
  std::vector<double> v;
  const std::regex re(R"(placement \d+ served \d+ steps at max/mean rank load ([0-9.]+))");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it)
    v.push_back(std::stod((*it)[1]));
  return v;
}

std::string run_log(const std::string& model, const std::string& extra) {
  const fs::path log = temp_dir() / "refused.log";
  const std::string cmd = kBin + " score --device cpu --model " + model + " --ids " + write_ids(10, 2048, 4) +
                          " --out " + (temp_dir() / "refused.bin").string() + " --master-port " +
                          std::to_string(free_port()) + " " + extra + " > " + log.string() + " 2>&1";
  EXPECT_NE(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream f(log);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

TEST(EplbServing, RebalancingEveryFewStepsKeepsTheLogitsAndEvensTheRankLoads) {
  const std::string model = skewed_model();
  const std::string ids = write_ids(240, 2048, 5);
  const auto one = score(model, ids, "--chunk 16");
  ASSERT_FALSE(one.empty());
  const auto ep = score(model, ids, "--chunk 16 --tensor-parallel-size 2 --enable-expert-parallel");
  std::string log;
  const auto eplb = score(model, ids,
                          "--chunk 16 --tensor-parallel-size 2 --enable-expert-parallel --enable-eplb "
                          "--num-redundant-experts 2 --eplb-step-interval 3", &log);
  // Each (token, expert) product once, on whichever rank holds the chosen copy: only the order of the
  // all-reduced partial sums moves, as between EP and one rank (measured 6e-7 on this model).
  EXPECT_LT(rel(one, ep), 1e-5);
  EXPECT_LT(rel(one, eplb), 1e-5);
  EXPECT_LT(rel(ep, eplb), 1e-5);
  // 15 steps rebalanced every 3: several switches while scoring, each measured under its own placement.
  const std::vector<double> served = served_imbalance(log);
  ASSERT_GE(served.size(), 3u) << log;
  double later = 0;
  for (size_t i = 1; i < served.size(); ++i) later = std::max(later, served[i]);
  EXPECT_GT(served[0], 1.15) << log;  // the start placement (equal loads assumed) under skewed routing
  EXPECT_LT(later, served[0]) << log;
  EXPECT_NE(log.find("EPLB placements served"), std::string::npos) << log;
}

TEST(EplbServing, InvalidCombinationsAreRefusedWithTheReason) {
  const std::string model = skewed_model();
  // 8 experts + 1 redundant slot do not split over 2 ranks.
  EXPECT_NE(run_log(model, "--tensor-parallel-size 2 --enable-expert-parallel --enable-eplb --num-redundant-experts 1")
                .find("do not split evenly over 2 expert-parallel ranks"),
            std::string::npos);
  EXPECT_NE(run_log(model, "--tensor-parallel-size 2 --enable-eplb").find("--enable-eplb needs --enable-expert-parallel"),
            std::string::npos);
  EXPECT_NE(run_log(model, "--pipeline-parallel-size 2 --tensor-parallel-size 2 --enable-expert-parallel --enable-eplb")
                .find("with --pipeline-parallel-size is not supported yet"),
            std::string::npos);
  EXPECT_NE(run_log(model, "--tensor-parallel-size 2 --enable-expert-parallel --num-redundant-experts 2")
                .find("--num-redundant-experts needs --enable-eplb"),
            std::string::npos);
}
