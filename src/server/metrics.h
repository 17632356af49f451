// Server metrics in the Prometheus text format (version 0.0.4), the vLLM set under dsv4_ names (promtool's
// linter rejects vLLM's `vllm:` colons): requests by endpoint and status, finished requests by reason, prompt
// and generation tokens, TTFT / inter-token / end-to-end latency histograms, plus engine gauges (running,
// waiting, KV usage, prefix-cache hits) read at scrape time. Thread-safe.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/engine.h"

namespace dsv4::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // Appends HELP/TYPE and the _bucket/_sum/_count series.
  void render(const std::string& name, const std::string& help, std::string& out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = above every bound
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  void record_http(const std::string& method, const std::string& endpoint, int status);
  void record_finished(const std::string& reason);  // stop | length | tool_calls | abort | error
  void add_prompt_tokens(int64_t n);
  void add_generation_tokens(int64_t n);
  void observe_ttft(double seconds);
  void observe_inter_token(double seconds);
  void observe_e2e(double seconds);

  std::string render(const EngineStats& engine) const;

 private:
  mutable std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, uint64_t> http_;
  std::map<std::string, uint64_t> finished_;
  uint64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  Histogram ttft_, itl_, e2e_;
};

// The endpoint label for a request path: the route itself for known routes, "other" for anything else (a
// client must not be able to create unbounded label values).
std::string endpoint_label(const std::string& path);

}  // namespace dsv4::server
