#include "server/metrics.h"

#include "runtime/grammar/matcher.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace dsv4::server {

namespace {

// Shortest round-trip text; Prometheus spells infinities +Inf / -Inf and NaN as NaN.
std::string num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

void header(std::string& out, const std::string& name, const char* type, const std::string& help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void single(std::string& out, const std::string& name, const char* type, const std::string& help, double v) {
  header(out, name, type, help);
  out += fmt::format("{} {}\n", name, num(v));
}

// Label values escape backslash, double quote and newline.
std::string label_value(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '\\' || c == '"') r += '\\';
    if (c == '\n') {
      r += "\\n";
      continue;
    }
    r += c;
  }
  return r;
}

}  // namespace

void Histogram::observe(double v) {
  size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(const std::string& name, const std::string& help, std::string& out) const {
  header(out, name, "histogram", help);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, num(bounds_[i]), cum);
  }
  out +=
      fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, num(sum_), name, count_);
}

// vLLM's bucket boundaries, so dashboards built for it read the same.
Metrics::Metrics()
    : ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
             1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}),
      itl_({0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}),
      e2e_({0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
            30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}) {}

void Metrics::record_http(const std::string& method, const std::string& endpoint, int status) {
  std::lock_guard lk(mu_);
  ++http_[{method, endpoint, status}];
}

void Metrics::record_finished(const std::string& reason) {
  std::lock_guard lk(mu_);
  ++finished_[reason];
}

void Metrics::add_prompt_tokens(int64_t n) {
  std::lock_guard lk(mu_);
  prompt_tokens_ += uint64_t(std::max<int64_t>(n, 0));
}

void Metrics::add_generation_tokens(int64_t n) {
  std::lock_guard lk(mu_);
  generation_tokens_ += uint64_t(std::max<int64_t>(n, 0));
}

void Metrics::observe_ttft(double s) {
  std::lock_guard lk(mu_);
  ttft_.observe(s);
}

void Metrics::observe_inter_token(double s) {
  std::lock_guard lk(mu_);
  itl_.observe(s);
}

void Metrics::observe_e2e(double s) {
  std::lock_guard lk(mu_);
  e2e_.observe(s);
}

std::string Metrics::render(const EngineStats& e) const {
  std::string out;
  std::lock_guard lk(mu_);
  header(out, "dsv4_http_requests_total", "counter", "HTTP requests by method, endpoint and status code.");
  for (const auto& [k, v] : http_)
    out += fmt::format("dsv4_http_requests_total{{method=\"{}\",endpoint=\"{}\",status=\"{}\"}} {}\n",
                       label_value(std::get<0>(k)), label_value(std::get<1>(k)), std::get<2>(k), v);
  header(out, "dsv4_requests_finished_total", "counter",
         "Generation requests (each choice of n) finished, by finish reason.");
  // Every reason is always present, so rates work from the first scrape.
  std::map<std::string, uint64_t> fin = {{"stop", 0}, {"length", 0}, {"tool_calls", 0}, {"abort", 0}, {"error", 0}};
  for (const auto& [k, v] : finished_) fin[k] = v;
  for (const auto& [k, v] : fin)
    out += fmt::format("dsv4_requests_finished_total{{finished_reason=\"{}\"}} {}\n", label_value(k), v);
  single(out, "dsv4_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", double(prompt_tokens_));
  single(out, "dsv4_generation_tokens_total", "counter", "Generated tokens streamed to clients.",
         double(generation_tokens_));
  ttft_.render("dsv4_time_to_first_token_seconds", "Time from request arrival to its first generated token.", out);
  itl_.render("dsv4_inter_token_latency_seconds", "Time between successive outputs of a request.", out);
  e2e_.render("dsv4_e2e_request_latency_seconds", "Time from request arrival to its last token.", out);

  {  // structured outputs (runtime/grammar): process-wide counters
    const auto& G = grammar::grammar_metrics();
    single(out, "dsv4_structured_output_mask_seconds_total", "counter",
           "Sampling-path time for grammar token masks (waiting for or computing them, and applying them), summed over steps.",
           double(G.mask_ns.load()) * 1e-9);
    single(out, "dsv4_structured_output_mask_steps_total", "counter",
           "Sampling steps under a grammar (one mask each).", double(G.mask_steps.load()));
    single(out, "dsv4_structured_output_masks_computed_total", "counter",
           "Grammar masks computed by a vocabulary walk (the other steps hit the per-state cache).",
           double(G.mask_computed.load()));
    single(out, "dsv4_structured_output_mask_walk_seconds_total", "counter",
           "Time spent in grammar mask vocabulary walks wherever they ran (the prefetch thread included).",
           double(G.walk_ns.load()) * 1e-9);
    single(out, "dsv4_structured_output_masks_prefetched_total", "counter",
           "Grammar masks queued for the background thread while the forward pass runs.", double(G.prefetched.load()));
    single(out, "dsv4_structured_output_compile_seconds_total", "counter", "Time spent compiling grammars.",
           double(G.compile_ns.load()) * 1e-9);
    single(out, "dsv4_structured_output_compiles_total", "counter", "Grammars compiled (cache misses).",
           double(G.compiles.load()));
  }
  single(out, "dsv4_num_requests_running", "gauge", "Sequences in the running batch.", e.running);
  single(out, "dsv4_num_requests_waiting", "gauge", "Sequences waiting to be scheduled.", e.waiting);
  // Blocks only the prefix cache holds are free on demand: counting them as used made an idle server that had
  // served long prompts report ~0.97 (as vLLM, usage excludes them).
  const int64_t in_use = std::max<int64_t>(0, e.kv_blocks_used - e.kv_blocks_reusable);
  single(out, "dsv4_kv_cache_usage_ratio", "gauge",
         "Fraction of KV cache blocks held by sequences (0 to 1); reusable prefix-cache blocks count as free.",
         e.kv_blocks_total > 0 ? double(in_use) / double(e.kv_blocks_total) : 0.0);
  single(out, "dsv4_kv_cache_blocks_used", "gauge", "KV cache blocks held by sequences.", double(in_use));
  single(out, "dsv4_kv_cache_blocks_reusable", "gauge",
         "KV cache blocks held only by the prefix cache: kept for reuse, evicted when space is needed.",
         double(e.kv_blocks_reusable));
  single(out, "dsv4_kv_cache_blocks_capacity", "gauge", "KV cache blocks in the pool.", double(e.kv_blocks_total));
  single(out, "dsv4_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
         double(e.prefix_queries));
  single(out, "dsv4_prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
         double(e.prefix_hits));
  single(out, "dsv4_prefix_cache_hit_ratio", "gauge", "Prefix cache hits / queries since start (tokens).",
         e.prefix_queries > 0 ? double(e.prefix_hits) / double(e.prefix_queries) : 0.0);
  if (e.kv_offload) {  // the disk tier (--kv-offload-dir)
    single(out, "dsv4_kv_offload_hit_tokens_total", "counter",
           "Prompt tokens whose KV was restored from the disk tier instead of recomputed (part of the prefix hits).",
           double(e.prefix_disk_hits));
    single(out, "dsv4_kv_offload_hit_blocks_total", "counter", "KV blocks read and verified from the disk tier.",
           double(e.disk.hit_blocks));
    single(out, "dsv4_kv_offload_read_bytes_total", "counter", "Bytes read from the disk tier.",
           double(e.disk.bytes_read));
    single(out, "dsv4_kv_offload_written_bytes_total", "counter", "Bytes written to the disk tier.",
           double(e.disk.bytes_written));
    single(out, "dsv4_kv_offload_written_files_total", "counter",
           "Files written to the disk tier (block bodies and resume snapshots).",
           double(e.disk.files_written));
    single(out, "dsv4_kv_offload_restore_seconds_total", "counter",
           "Time spent reading and verifying blocks from the disk tier, summed over restores.",
           e.disk.restore_seconds);
    single(out, "dsv4_kv_offload_restores_total", "counter", "Prefix restores that read the disk tier.",
           double(e.disk.restores));
    single(out, "dsv4_kv_offload_bad_files_total", "counter",
           "Block files that failed verification (corrupt, truncated): ignored, recomputed.", double(e.disk.bad_files));
    single(out, "dsv4_kv_offload_evicted_files_total", "counter", "Block files removed to stay within the size.",
           double(e.disk.evicted_files));
    single(out, "dsv4_kv_offload_writable", "gauge", "1 while the disk tier takes writes (0: full or read-only).",
           e.disk.writable ? 1.0 : 0.0);
  }
  single(out, "dsv4_num_preemptions_total", "counter", "Sequences preempted (recomputed later) for KV space.",
         double(e.preemptions));
  if (!e.spec_accepted_per_pos.empty()) {  // speculative decoding, under vLLM's names (vllm bench serve reads them)
    single(out, "vllm:spec_decode_num_drafts_total", "counter", "Verify steps (draft sequences checked).",
           double(e.spec_num_drafts));
    single(out, "vllm:spec_decode_num_draft_tokens_total", "counter", "Draft tokens proposed.",
           double(e.spec_num_draft_tokens));
    single(out, "vllm:spec_decode_num_accepted_tokens_total", "counter", "Draft tokens accepted.",
           double(e.spec_num_accepted_tokens));
    header(out, "vllm:spec_decode_num_accepted_tokens_per_pos_total", "counter",
           "Draft tokens accepted, by position in the draft.");
    for (size_t i = 0; i < e.spec_accepted_per_pos.size(); ++i)
      out += fmt::format("vllm:spec_decode_num_accepted_tokens_per_pos_total{{position=\"{}\"}} {}\n", i,
                         e.spec_accepted_per_pos[i]);
  }
  if (const ExpertLoadSnapshot& el = e.expert_load; el.enabled()) {
    single(out, "dsv4_expert_load_window_steps", "gauge", "Steps the expert load statistics span at most.",
           el.window);
    single(out, "dsv4_expert_load_steps", "gauge", "Steps in the expert load window now.", el.steps);
    header(out, "dsv4_expert_load_imbalance", "gauge",
           "Per MoE layer: tokens routed to its busiest expert over the mean per expert, over the window (1 = even).");
    for (int l = 0; l < el.layers; ++l)
      out += fmt::format("dsv4_expert_load_imbalance{{layer=\"{}\"}} {}\n", l, num(el.imbalance(l)));
    if (!el.eplb.empty()) {  // EPLB: the placement serving now, and its rank loads as measured so far
      single(out, "dsv4_eplb_rebalances_total", "counter", "Placement switches since start.",
             double(el.eplb.back().epoch));
      single(out, "dsv4_eplb_rank_load_imbalance", "gauge",
             "Current EPLB placement: tokens its busiest rank computed over the mean rank, averaged over the layers "
             "(1 = even).", el.eplb.back().max_over_mean());
    }
  }
  return out;
}

std::string endpoint_label(const std::string& path) {
  static const std::array<const char*, 12> known = {"/expert_load",
                                                    "/v1/chat/completions",
                                                    "/v1/completions",
                                                    "/v1/models",
                                                    "/v1/messages",
                                                    "/v1/messages/count_tokens",
                                                    "/tokenize",
                                                    "/detokenize",
                                                    "/health",
                                                    "/metrics",
                                                    "/version",
                                                    "/ping"};
  for (const char* k : known)
    if (path == k) return k;
  return "other";
}

}  // namespace dsv4::server
