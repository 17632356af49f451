// Prometheus text rendering of the server metrics.
#include "server/metrics.h"

#include <gtest/gtest.h>

using namespace dsv4;
using namespace dsv4::server;

TEST(ServerMetrics, HistogramBucketsAreCumulative) {
  Histogram h({0.1, 1.0});
  h.observe(0.05);
  h.observe(0.1);  // le is inclusive
  h.observe(0.5);
  h.observe(7);
  std::string out;
  h.render("x_seconds", "help text", out);
  EXPECT_EQ(out,
            "# HELP x_seconds help text\n# TYPE x_seconds histogram\n"
            "x_seconds_bucket{le=\"0.1\"} 2\nx_seconds_bucket{le=\"1\"} 3\nx_seconds_bucket{le=\"+Inf\"} 4\n"
            "x_seconds_sum 7.65\nx_seconds_count 4\n");
}

TEST(ServerMetrics, RenderHasEveryFamilyWithHelpAndType) {
  Metrics m;
  m.record_http("POST", "/v1/chat/completions", 200);
  m.record_http("POST", "/v1/chat/completions", 400);
  m.record_finished("stop");
  m.add_prompt_tokens(12);
  m.add_generation_tokens(5);
  m.observe_ttft(0.2);
  m.observe_inter_token(0.01);
  EngineStats e;
  e.running = 2;
  e.waiting = 1;
  e.kv_blocks_used = 3;
  e.kv_blocks_total = 12;
  e.prefix_queries = 100;
  e.prefix_hits = 25;
  const std::string out = m.render(e);
  for (const char* want :
       {"dsv4_http_requests_total{method=\"POST\",endpoint=\"/v1/chat/completions\",status=\"400\"} 1",
        "dsv4_requests_finished_total{finished_reason=\"stop\"} 1",
        "dsv4_requests_finished_total{finished_reason=\"abort\"} 0", "dsv4_prompt_tokens_total 12",
        "dsv4_generation_tokens_total 5", "dsv4_time_to_first_token_seconds_count 1",
        "dsv4_inter_token_latency_seconds_bucket{le=\"0.01\"} 1", "dsv4_num_requests_running 2",
        "dsv4_num_requests_waiting 1", "dsv4_kv_cache_usage_ratio 0.25", "dsv4_kv_cache_blocks_used 3",
        "dsv4_prefix_cache_hit_ratio 0.25", "# TYPE dsv4_e2e_request_latency_seconds histogram"})
    EXPECT_NE(out.find(want), std::string::npos) << want << "\n" << out;
  // Every sample line belongs to a family announced by # TYPE.
  size_t pos = 0;
  std::string last_type;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    std::string line = out.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.rfind("# TYPE ", 0) == 0) {
      last_type = line.substr(7, line.find(' ', 7) - 7);
    } else if (line[0] != '#') {
      EXPECT_EQ(line.rfind(last_type, 0), 0u) << line;
    }
  }
}

TEST(ServerMetrics, EndpointLabelsAreBounded) {
  EXPECT_EQ(endpoint_label("/v1/chat/completions"), "/v1/chat/completions");
  EXPECT_EQ(endpoint_label("/v1/chat/completions/../x"), "other");
  EXPECT_EQ(endpoint_label("/anything/a-client/made/up"), "other");
}

// Issue 9, item 11: blocks only the prefix cache holds are reusable, not in use.
TEST(ServerMetrics, ReusablePrefixBlocksDoNotCountAsUsed) {
  Metrics m;
  EngineStats e;
  e.kv_blocks_total = 32;
  e.kv_blocks_used = 31;
  e.kv_blocks_reusable = 31;  // an idle server that served long prompts
  std::string out = m.render(e);
  EXPECT_NE(out.find("dsv4_kv_cache_usage_ratio 0\n"), std::string::npos) << out;
  EXPECT_NE(out.find("dsv4_kv_cache_blocks_used 0\n"), std::string::npos);
  EXPECT_NE(out.find("dsv4_kv_cache_blocks_reusable 31\n"), std::string::npos);
  e.kv_blocks_reusable = 23;  // 8 held by running sequences
  out = m.render(e);
  EXPECT_NE(out.find("dsv4_kv_cache_usage_ratio 0.25\n"), std::string::npos) << out;
}

// Issue 13, item 2: per-layer expert load imbalance (max / mean tokens per expert) over the window.
TEST(ServerMetrics, ExpertLoadGaugesPerLayerOnlyWhenCounted) {
  Metrics m;
  EngineStats e;
  EXPECT_EQ(m.render(e).find("dsv4_expert_load"), std::string::npos);  // window 0: not counted
  e.expert_load.layers = 2;
  e.expert_load.experts = 4;
  e.expert_load.window = 100;
  e.expert_load.steps = 7;
  e.expert_load.counts = {4, 4, 4, 4, 10, 0, 0, 6};
  const std::string out = m.render(e);
  for (const char* want : {"# TYPE dsv4_expert_load_imbalance gauge\n", "dsv4_expert_load_imbalance{layer=\"0\"} 1\n",
                           "dsv4_expert_load_imbalance{layer=\"1\"} 2.5\n", "dsv4_expert_load_window_steps 100\n",
                           "dsv4_expert_load_steps 7\n"})
    EXPECT_NE(out.find(want), std::string::npos) << want << "\n" << out;
}
