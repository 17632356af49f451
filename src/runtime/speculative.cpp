#include "runtime/speculative.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "core/error.h"

namespace dsv4 {

SpeculativeConfig parse_speculative_config(const std::string& text) {
  SpeculativeConfig sc;
  if (text.empty()) return sc;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("--speculative-config is not valid JSON: {}", e.what());
  }
  if (!j.is_object()) fail("--speculative-config must be a JSON object, e.g. {{\"method\": \"mtp\", \"num_speculative_tokens\": 2}}");
  for (auto& [k, v] : j.items())
    if (k != "method" && k != "num_speculative_tokens")
      fail("--speculative-config: unsupported key '{}' (method, num_speculative_tokens)", k);
  if (!j.contains("method") || !j["method"].is_string()) fail("--speculative-config needs a \"method\" string");
  sc.method = j["method"].get<std::string>();
  if (sc.method != "mtp" && sc.method != "dspark")
    fail("--speculative-config: method '{}' is not supported (mtp or dspark)", sc.method);
  if (sc.method == "dspark") {  // the block size comes from config.json (resolve_speculative_config)
    if (j.contains("num_speculative_tokens")) {
      if (!j["num_speculative_tokens"].is_number_integer() || j["num_speculative_tokens"].get<int64_t>() < 1)
        fail("--speculative-config: num_speculative_tokens must be a positive integer (for dspark: the block size, "
             "or leave it out)");
      sc.num_speculative_tokens = int(std::min<int64_t>(j["num_speculative_tokens"].get<int64_t>(), 1 << 20));
    }
    return sc;
  }
  if (!j.contains("num_speculative_tokens") || !j["num_speculative_tokens"].is_number_integer())
    fail("--speculative-config: method mtp needs an integer \"num_speculative_tokens\" (1 to 4)");
  const int64_t n = j["num_speculative_tokens"].get<int64_t>();
  if (n < 1 || n > 4) fail("--speculative-config: num_speculative_tokens {} is out of range (1 to 4)", n);
  sc.num_speculative_tokens = int(n);
  return sc;
}

SpeculativeConfig resolve_speculative_config(SpeculativeConfig sc, const ModelConfig& mc) {
  if (!sc.enabled()) return sc;
  if (sc.dspark()) {
    if (!mc.n_dspark_stages)
      fail("speculative method dspark: the checkpoint has no DSpark drafter (config.json has no dspark_block_size; "
           "{})", mc.n_mtp_layers ? "it has an MTP layer: use method mtp" : "it has no drafter at all");
    const int B = mc.dspark_block_size;
    if (sc.num_speculative_tokens && sc.num_speculative_tokens != B)
      fail("speculative method dspark: num_speculative_tokens {} is not the checkpoint's block size {} (the "
           "drafter proposes one whole block per step; drafting past it collapses acceptance): leave it out or set {}",
           sc.num_speculative_tokens, B, B);
    sc.num_speculative_tokens = B;
    return sc;
  }
  if (mc.n_dspark_stages)
    fail("speculative method mtp: this checkpoint ships a DSpark drafter, not an MTP layer: use "
         "'{{\"method\": \"dspark\"}}'");
  if (mc.n_mtp_layers < 1)
    fail("speculative method mtp: the checkpoint has no MTP layer (config.json num_nextn_predict_layers is 0)");
  return sc;
}

int32_t draw_token(std::span<const TokenProb> dist, double u) {
  DSV4_CHECK(!dist.empty(), "draw_token: empty distribution");
  double total = 0;
  for (const TokenProb& t : dist) total += t.prob;
  const double x = u * total;
  double cum = 0;
  for (const TokenProb& t : dist) {
    cum += t.prob;
    if (x < cum && t.prob > 0) return t.token;
  }
  for (size_t i = dist.size(); i-- > 0;)  // rounding at the very end: the last token with mass
    if (dist[i].prob > 0) return dist[i].token;
  return dist.back().token;
}

namespace {

float prob_of(std::span<const TokenProb> d, int32_t tok) {
  for (const TokenProb& t : d)
    if (t.token == tok) return t.prob;
  return 0.0f;
}

SampleResult with_logprobs(const SamplerState& s, std::span<const float> row, int32_t tok) {
  SampleResult r;
  r.token = tok;
  if (s.params().logprobs >= 0) compute_logprobs(row, tok, s.params().logprobs, r);
  return r;
}

}  // namespace

std::vector<SampleResult> verify_drafts(SamplerState& sampler, std::span<const float> logits, int64_t vocab,
                                        std::span<const Draft> drafts, int* accepted) {
  DSV4_CHECK(int64_t(logits.size()) == int64_t(drafts.size() + 1) * vocab, "verify_drafts: {} logits for {} drafts",
             logits.size(), drafts.size());
  const bool greedy = sampler.params().greedy();
  std::vector<SampleResult> out;
  *accepted = 0;
  for (size_t k = 0; k < drafts.size(); ++k) {
    const std::span<const float> row = logits.subspan(k * size_t(vocab), size_t(vocab));
    const std::vector<TokenProb> p = sampler.distribution(row);
    const Draft& d = drafts[k];
    const float pd = prob_of(p, d.token), qd = prob_of(d.q, d.token);
    // Greedy: both are point masses; accept exactly when the draft is the target's argmax (no RNG draw).
    const bool accept = greedy ? pd >= 1.0f : (qd > 0 && sampler.draw_uniform() * double(qd) < double(pd));
    if (accept) {
      out.push_back(with_logprobs(sampler, row, d.token));
      sampler.record_output(d.token);
      ++*accepted;
      continue;
    }
    int32_t tok;
    if (greedy) {
      tok = p.front().token;
    } else {
      // The residual max(0, p - q): every token of p's support, less q's mass there.
      std::vector<TokenProb> res;
      res.reserve(p.size());
      double mass = 0;
      for (const TokenProb& t : p) {
        const float r = std::max(0.0f, t.prob - prob_of(d.q, t.token));
        if (r > 0) res.push_back({t.token, r}), mass += r;
      }
      tok = draw_token(mass > 0 ? std::span<const TokenProb>(res) : std::span<const TokenProb>(p),
                       sampler.draw_uniform());
    }
    out.push_back(with_logprobs(sampler, row, tok));
    sampler.record_output(tok);
    return out;
  }
  // Every draft accepted: the bonus token from the last row, an ordinary sample.
  out.push_back(sampler.sample(logits.subspan(drafts.size() * size_t(vocab), size_t(vocab))));
  return out;
}

}  // namespace dsv4
