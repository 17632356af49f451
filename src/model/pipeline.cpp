#include "model/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdio>

#include "core/error.h"
#include "model/weight_schema.h"

namespace dsv4 {

std::vector<uint64_t> layer_weight_bytes(const ModelConfig& c) {
  std::vector<uint64_t> b(size_t(c.n_layers), 0);
  for (const TensorSpec& t : expected_tensors(c, c.expert_format)) {
    int l = -1;
    if (std::sscanf(t.name.c_str(), "layers.%d.", &l) != 1 || l < 0 || l >= c.n_layers) continue;
    uint64_t n = dtype_size(t.dtypes.at(0));
    for (int64_t d : t.shape) n *= uint64_t(d);
    b[size_t(l)] += n;
  }
  return b;
}

uint64_t head_weight_bytes(const ModelConfig& c) {
  uint64_t b = 0;
  for (const TensorSpec& t : expected_tensors(c, c.expert_format)) {
    if (t.name != "head.weight" && t.name != "norm.weight" && t.name.rfind("hc_head", 0) != 0) continue;
    uint64_t n = dtype_size(t.dtypes.at(0));
    for (int64_t d : t.shape) n *= uint64_t(d);
    b += n;
  }
  return b;
}

namespace {

int parse_layer(const std::string& s, const std::string& spec) {
  int v = -1;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || v < 0)
    fail("--pipeline-layers '{}': '{}' is not a layer number", spec, s);
  return v;
}

// Contiguous split of `bytes` into `k` parts minimising the largest part, the last part also carrying `tail`
// (the lowest boundaries on ties).
std::vector<StageLayers> balanced(const std::vector<uint64_t>& bytes, int k, uint64_t tail) {
  const int n = int(bytes.size());
  std::vector<uint64_t> pre(size_t(n + 1), 0);
  for (int i = 0; i < n; ++i) pre[size_t(i + 1)] = pre[size_t(i)] + bytes[size_t(i)];
  // best[j][i]: the smallest largest part splitting the first i layers into j parts; cut[j][i] its last start.
  const uint64_t inf = UINT64_MAX;
  std::vector<std::vector<uint64_t>> best(size_t(k + 1), std::vector<uint64_t>(size_t(n + 1), inf));
  std::vector<std::vector<int>> cut(size_t(k + 1), std::vector<int>(size_t(n + 1), 0));
  best[0][0] = 0;
  for (int j = 1; j <= k; ++j)
    for (int i = j; i <= n; ++i)
      for (int s = j - 1; s < i; ++s) {
        if (best[size_t(j - 1)][size_t(s)] == inf) continue;
        const uint64_t part = pre[size_t(i)] - pre[size_t(s)] + (j == k && i == n ? tail : 0);
        const uint64_t v = std::max(best[size_t(j - 1)][size_t(s)], part);
        if (v < best[size_t(j)][size_t(i)]) best[size_t(j)][size_t(i)] = v, cut[size_t(j)][size_t(i)] = s;
      }
  std::vector<StageLayers> out(static_cast<size_t>(k));
  for (int j = k, i = n; j >= 1; --j) {
    out[size_t(j - 1)] = {cut[size_t(j)][size_t(i)], i};
    i = cut[size_t(j)][size_t(i)];
  }
  return out;
}

}  // namespace

std::vector<StageLayers> pipeline_stages(const ModelConfig& c, int stages, const std::string& spec) {
  if (stages < 1) fail("--pipeline-parallel-size must be >= 1");
  if (stages > c.n_layers)
    fail("--pipeline-parallel-size {} exceeds the model's {} layers (each stage needs one)", stages, c.n_layers);
  if (spec.empty()) return balanced(layer_weight_bytes(c), stages, head_weight_bytes(c));
  std::vector<StageLayers> out;
  size_t at = 0;
  while (at <= spec.size()) {
    const size_t comma = std::min(spec.find(',', at), spec.size());
    const std::string part = spec.substr(at, comma - at);
    const size_t dash = part.find('-');
    if (dash == std::string::npos)
      fail("--pipeline-layers '{}': stage '{}' is not FIRST-LAST (e.g. 0-3,4-7)", spec, part);
    const int a = parse_layer(part.substr(0, dash), spec), b = parse_layer(part.substr(dash + 1), spec);
    if (b < a) fail("--pipeline-layers '{}': stage '{}' ends before it starts", spec, part);
    const int expect = out.empty() ? 0 : out.back().end;
    if (a != expect)
      fail("--pipeline-layers '{}': stage {} starts at layer {}, expected {} (stages are contiguous from layer 0)",
           spec, out.size(), a, expect);
    out.push_back({a, b + 1});
    at = comma + 1;
  }
  if (int(out.size()) != stages)
    fail("--pipeline-layers '{}' names {} stages, --pipeline-parallel-size is {}", spec, out.size(), stages);
  if (out.back().end != c.n_layers)
    fail("--pipeline-layers '{}' ends at layer {}, the model has layers 0-{}", spec, out.back().end - 1,
         c.n_layers - 1);
  return out;
}

std::string format_stages(const std::vector<StageLayers>& s) {
  std::string out;
  for (auto& st : s) out += fmt::format("{}{}-{}", out.empty() ? "" : ",", st.begin, st.end - 1);
  return out;
}

}  // namespace dsv4
