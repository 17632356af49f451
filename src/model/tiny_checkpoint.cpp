#include "model/tiny_checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "model/safetensors_writer.h"
#include "model/weight_schema.h"

namespace dsv4 {

namespace fs = std::filesystem;
using nlohmann::json;

json tiny_demo_config_json() {
  // Key for key the real DeepSeek-V4-Flash root config.json (spec §1.1), at tiny sizes.
  return json{
      {"architectures", {"DeepseekV4ForCausalLM"}},
      {"model_type", "deepseek_v4"},
      {"vocab_size", 129280},
      {"hidden_size", 256},
      {"num_hidden_layers", 4},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 1},
      {"head_dim", 128},
      {"qk_rope_head_dim", 32},
      {"q_lora_rank", 128},
      {"o_lora_rank", 128},
      {"o_groups", 2},
      {"sliding_window", 128},
      {"compress_ratios", {0, 4, 128, 4, 0}},  // 4 layers + the MTP layer (ratio 0)
      {"compress_rope_theta", 160000},
      {"rope_theta", 10000},
      {"rope_scaling",
       {{"type", "yarn"},
        {"factor", 16},
        {"original_max_position_embeddings", 65536},
        {"beta_fast", 32},
        {"beta_slow", 1},
        {"rope_theta", 10000},
        {"rope_type", "yarn"}}},
      {"max_position_embeddings", 1048576},
      {"index_n_heads", 4},
      {"index_head_dim", 64},
      {"index_topk", 64},
      {"n_routed_experts", 8},
      {"n_shared_experts", 1},
      {"num_experts_per_tok", 2},
      {"moe_intermediate_size", 128},
      {"num_hash_layers", 2},
      {"scoring_func", "sqrtsoftplus"},
      {"topk_method", "noaux_tc"},
      {"norm_topk_prob", true},
      {"routed_scaling_factor", 1.5},
      {"swiglu_limit", 10.0},
      {"hidden_act", "silu"},
      {"hc_mult", 4},
      {"hc_sinkhorn_iters", 20},
      {"hc_eps", 1e-06},
      {"rms_norm_eps", 1e-06},
      {"num_nextn_predict_layers", 1},  // mtp.0.*: --speculative-config mtp runs on the demo model
      {"tie_word_embeddings", false},
      {"bos_token_id", 0},
      {"eos_token_id", 1},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"initializer_range", 0.02},
      {"torch_dtype", "bfloat16"},
      {"transformers_version", "4.57.1"},
      {"use_cache", true},
      {"expert_dtype", "fp4"},
      {"quantization_config",
       {{"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", "dynamic"},
        {"scale_fmt", "ue8m0"},
        {"weight_block_size", {128, 128}}}},
  };
}

ModelConfig tiny_demo_config() { return ModelConfig::from_json(tiny_demo_config_json()); }

json with_dspark_drafter(json config, int stages, int markov_rank) {
  const int L = config.at("num_hidden_layers").get<int>(), V = config.at("vocab_size").get<int>();
  if (L < 3) fail("with_dspark_drafter: {} layers, the drafter reads the last three", L);
  std::vector<int> ratios = config.at("compress_ratios").get<std::vector<int>>();
  ratios.resize(size_t(L));
  ratios.insert(ratios.end(), size_t(stages), 0);
  config["compress_ratios"] = ratios;
  config["dspark_block_size"] = 5;
  config["dspark_noise_token_id"] = V > 128799 ? 128799 : V - 1;
  config["dspark_target_layer_ids"] = {L - 3, L - 2, L - 1};
  config["dspark_markov_rank"] = markov_rank;
  return config;
}

namespace {

// ---- explicit, portable randomness: splitmix64 streams, normals by the polar form of Box-Muller (no <random>
// distributions, whose output is implementation-defined; only +, *, sqrt and log, computed in double).
struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

uint64_t mix(uint64_t a, uint64_t b) {
  SplitMix64 g{a ^ (b * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull)};
  g.next();
  return g.next();
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Element i of a tensor comes from the stream of its 64K-element chunk, so any thread split gives the same
// values. store(i, v) receives each value.
constexpr int64_t kChunk = 1 << 16;

template <typename Store>
void gen_normal(int64_t n, uint64_t seed, double mean, double stddev, Store&& store) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      SplitMix64 g{mix(seed, uint64_t(c))};
      const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
      for (int64_t i = b; i < e; i += 2) {
        double u, v, q;
        do {  // a uniform point in the unit disc
          u = 2.0 * g.uniform() - 1.0;
          v = 2.0 * g.uniform() - 1.0;
          q = u * u + v * v;
        } while (q >= 1.0 || q == 0.0);
        const double f = stddev * std::sqrt(-2.0 * std::log(q) / q);
        store(i, float(mean + f * u));
        if (i + 1 < e) store(i + 1, float(mean + f * v));
      }
    }
  });
}

template <typename Store>
void gen_uniform(int64_t n, uint64_t seed, double lo, double hi, Store&& store) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      SplitMix64 g{mix(seed, uint64_t(c))};
      for (int64_t i = c * kChunk, e = std::min(n, (c + 1) * kChunk); i < e; ++i)
        store(i, float(lo + (hi - lo) * g.uniform()));
    }
  });
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

uint8_t e8m0_byte(float pow2) {  // pow2 = 2^e exactly
  const int e = std::ilogb(pow2);
  DSV4_CHECK(e >= -127 && e <= 127, "make-tiny: scale 2^{} outside E8M0", e);
  return uint8_t(e + 127);
}

TensorToWrite make(const std::string& name, DType dt, std::vector<int64_t> shape) {
  TensorToWrite t{name, dt, std::move(shape), {}};
  t.bytes.resize(size_t(numel(t.shape)) * dtype_size(dt));
  return t;
}

std::vector<float> normal_f32(int64_t n, uint64_t seed, double mean, double stddev) {
  std::vector<float> v(static_cast<size_t>(n));
  gen_normal(n, seed, mean, stddev, [&](int64_t i, float x) { v[size_t(i)] = x; });
  return v;
}

TensorToWrite bf16_tensor(const TensorSpec& s, uint64_t seed, double mean, double stddev) {
  TensorToWrite t = make(s.name, DType::BF16, s.shape);
  auto* p = t.bytes.data();
  gen_normal(numel(s.shape), seed, mean, stddev, [&](int64_t i, float x) {
    const uint16_t h = f32_to_bf16(x);
    p[2 * i] = uint8_t(h);
    p[2 * i + 1] = uint8_t(h >> 8);
  });
  return t;
}

TensorToWrite f32_tensor(const TensorSpec& s, std::vector<float> v) {
  TensorToWrite t = make(s.name, DType::F32, s.shape);
  std::memcpy(t.bytes.data(), v.data(), t.bytes.size());  // little-endian host
  return t;
}

// FP8 e4m3 weight [out, in] with E8M0 B x B block scales (2^ceil(log2(amax / 448)), edge tiles partial).
void fp8_linear(const TensorSpec& ws, const TensorSpec& ss, int B, uint64_t seed, std::vector<TensorToWrite>& out) {
  const int64_t O = ws.shape.at(0), I = ws.shape.at(1), so = (O + B - 1) / B, si = (I + B - 1) / B;
  DSV4_CHECK(ss.shape == (std::vector<int64_t>{so, si}), "make-tiny: '{}' does not tile '{}'", ss.name, ws.name);
  std::vector<float> w = normal_f32(O * I, seed, 0.0, 1.0 / std::sqrt(double(I)));
  TensorToWrite q = make(ws.name, DType::F8_E4M3, ws.shape), sc = make(ss.name, DType::F8_E8M0, ss.shape);
  for (int64_t bo = 0; bo < so; ++bo)
    for (int64_t bi = 0; bi < si; ++bi) {
      const int64_t o0 = bo * B, o1 = std::min(O, o0 + B), i0 = bi * B, i1 = std::min(I, i0 + B);
      float amax = 0;
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(w[size_t(o * I + i)]));
      const float s = pow2_scale(amax, 448.0f, 1e-30f);
      sc.bytes[size_t(bo * si + bi)] = e8m0_byte(s);
      for (int64_t o = o0; o < o1; ++o)
        for (int64_t i = i0; i < i1; ++i) q.bytes[size_t(o * I + i)] = f32_to_e4m3(w[size_t(o * I + i)] / s);
    }
  out.push_back(std::move(q));
  out.push_back(std::move(sc));
}

// Packed FP4 (e2m1) weight: I8 [out, in/2], element 2k in the low nibble; E8M0 scale per 32 of a row.
void fp4_linear(const TensorSpec& ws, const TensorSpec& ss, uint64_t seed, std::vector<TensorToWrite>& out) {
  const int64_t O = ws.shape.at(0), I = 2 * ws.shape.at(1);
  DSV4_CHECK(I % 32 == 0 && ss.shape == (std::vector<int64_t>{O, I / 32}), "make-tiny: bad FP4 pair '{}'", ws.name);
  std::vector<float> w = normal_f32(O * I, seed, 0.0, 1.0 / std::sqrt(double(I)));
  TensorToWrite q = make(ws.name, ws.dtypes.at(0), ws.shape), sc = make(ss.name, DType::F8_E8M0, ss.shape);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t g = 0; g < I / 32; ++g) {
      const float* x = w.data() + o * I + g * 32;
      float amax = 0;
      for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[k]));
      const float s = pow2_scale(amax, 6.0f, 1e-30f);
      sc.bytes[size_t(o * (I / 32) + g)] = e8m0_byte(s);
      for (int k = 0; k < 32; k += 2)
        q.bytes[size_t(o * (I / 2) + g * 16 + k / 2)] =
            uint8_t(f32_to_e2m1(x[k] / s) | (f32_to_e2m1(x[k + 1] / s) << 4));
    }
  out.push_back(std::move(q));
  out.push_back(std::move(sc));
}

// Skewed routing (route_skew > 0): the experts of one tensor in a seeded random order of heat; the expert of
// heat rank h gets weight 2^(-skew * h) (hash tables) or bias + skew * 2^-h (score-routed gates).
std::vector<int> heat_ranks(int n, uint64_t seed) {
  std::vector<int> perm(static_cast<size_t>(n));
  for (int e = 0; e < n; ++e) perm[size_t(e)] = e;
  SplitMix64 g{mix(seed, 0x5eed)};
  for (int i = n - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(g.next() % uint64_t(i + 1))]);
  std::vector<int> rank(static_cast<size_t>(n));
  for (int h = 0; h < n; ++h) rank[size_t(perm[size_t(h)])] = h;
  return rank;
}

// Hash routing table [vocab, k]: k distinct expert ids per token (partial Fisher-Yates; with skew, draws
// without replacement weighted by heat).
TensorToWrite tid2eid(const TensorSpec& s, int n_experts, uint64_t seed, double skew) {
  if (skew > 0) {
    const int64_t V = s.shape.at(0), K = s.shape.at(1);
    DSV4_CHECK(K <= n_experts, "make-tiny: top-{} of {} experts", K, n_experts);
    TensorToWrite t = make(s.name, DType::I64, s.shape);
    const std::vector<int> heat = heat_ranks(n_experts, seed);
    SplitMix64 g{mix(seed, 0x7a11)};
    for (int64_t v = 0; v < V; ++v) {
      std::vector<double> w(static_cast<size_t>(n_experts));
      for (int e = 0; e < n_experts; ++e) w[size_t(e)] = std::exp2(-skew * heat[size_t(e)]);
      for (int64_t j = 0; j < K; ++j) {
        double total = 0;
        for (double x : w) total += x;
        double r = double(g.next() >> 11) * 0x1.0p-53 * total;
        int pick = -1;  // the last candidate when rounding runs past the end
        for (int e = 0; e < n_experts; ++e) {
          if (w[size_t(e)] == 0) continue;
          pick = e;
          if (r < w[size_t(e)]) break;
          r -= w[size_t(e)];
        }
        w[size_t(pick)] = 0;
        for (int b = 0; b < 8; ++b) t.bytes[size_t((v * K + j) * 8 + b)] = uint8_t(uint64_t(pick) >> (8 * b));
      }
    }
    return t;
  }
  const int64_t V = s.shape.at(0), K = s.shape.at(1);
  DSV4_CHECK(K <= n_experts, "make-tiny: top-{} of {} experts", K, n_experts);
  TensorToWrite t = make(s.name, DType::I64, s.shape);
  const int64_t chunks = (V + 4095) / 4096;
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<int64_t> perm(static_cast<size_t>(n_experts));
    for (int64_t c = c0; c < c1; ++c) {
      SplitMix64 g{mix(seed, uint64_t(c))};
      for (int64_t v = c * 4096; v < std::min(V, (c + 1) * 4096); ++v) {
        for (int e = 0; e < n_experts; ++e) perm[size_t(e)] = e;
        for (int64_t j = 0; j < K; ++j) {
          const int64_t r = j + int64_t(g.next() % uint64_t(n_experts - j));
          std::swap(perm[size_t(j)], perm[size_t(r)]);
          const uint64_t id = uint64_t(perm[size_t(j)]);
          for (int b = 0; b < 8; ++b) t.bytes[size_t((v * K + j) * 8 + b)] = uint8_t(id >> (8 * b));
        }
      }
    }
  });
  return t;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Every tensor of the schema, filled by its kind. A tensor kind without a rule is an error, so a schema change
// shows up here instead of as a silently wrong model.
std::vector<TensorToWrite> make_tensors(const ModelConfig& c, uint64_t seed, double skew) {
  const auto specs = expected_tensors(c, ExpertFormat::FP4);
  std::map<std::string, const TensorSpec*> by_name;
  for (auto& s : specs) by_name[s.name] = &s;
  auto partner_scale = [&](const TensorSpec& w) -> const TensorSpec& {
    auto it = by_name.find(w.name.substr(0, w.name.size() - 7) + ".scale");
    if (it == by_name.end()) fail("make-tiny: '{}' has no scale tensor in the schema", w.name);
    return *it->second;
  };
  std::vector<TensorToWrite> out;
  for (const auto& s : specs) {
    const uint64_t ts = mix(seed, fnv1a(s.name));
    const int64_t n = numel(s.shape);
    const DType dt = s.dtypes.at(0);
    const std::string& nm = s.name;
    if (dt == DType::F8_E8M0) continue;  // written with its weight
    if (dt == DType::F8_E4M3) {
      fp8_linear(s, partner_scale(s), c.weight_block, ts, out);
    } else if (dt == DType::I8 || dt == DType::U8) {
      fp4_linear(s, partner_scale(s), ts, out);
    } else if (dt == DType::I64) {
      if (!ends_with(nm, ".tid2eid")) fail("make-tiny: no rule for I64 tensor '{}'", nm);
      out.push_back(tid2eid(s, c.n_routed_experts, ts, skew));
    } else if (dt == DType::BF16) {
      if (s.shape.size() == 1) {
        out.push_back(bf16_tensor(s, ts, 1.0, 0.0));  // norm weights: 1
      } else if (s.shape.size() == 2) {
        const double sd = nm == "embed.weight" ? 1.0 : 1.0 / std::sqrt(double(s.shape[1]));
        out.push_back(bf16_tensor(s, ts, 0.0, sd));
      } else {
        fail("make-tiny: no rule for BF16 tensor '{}'", nm);
      }
    } else if (dt == DType::F32) {
      std::vector<float> v(static_cast<size_t>(n));
      auto put = [&](int64_t i, float x) { v[size_t(i)] = x; };
      if (ends_with(nm, "_fn")) gen_normal(n, ts, 0.0, 1.0 / std::sqrt(double(s.shape.at(1))), put);
      else if (ends_with(nm, "_base")) gen_normal(n, ts, 0.0, 0.5, put);
      else if (ends_with(nm, "_scale")) gen_uniform(n, ts, 0.5, 1.5, put);
      else if (ends_with(nm, ".attn_sink")) gen_normal(n, ts, 0.0, 1.0, put);
      else if (ends_with(nm, ".ape")) gen_normal(n, ts, 0.0, 0.5, put);
      else if (ends_with(nm, ".gate.bias")) {
        gen_normal(n, ts, 0.0, 0.1, put);
        if (skew > 0) {
          const std::vector<int> heat = heat_ranks(int(n), ts);
          for (int64_t e = 0; e < n; ++e) v[size_t(e)] += float(skew * std::exp2(-double(heat[size_t(e)])));
        }
      }
      else fail("make-tiny: no rule for F32 tensor '{}'", nm);
      out.push_back(f32_tensor(s, std::move(v)));
    } else {
      fail("make-tiny: no rule for {} tensor '{}'", dtype_name(dt), nm);
    }
  }
  DSV4_CHECK(out.size() == specs.size(), "make-tiny: made {} tensors for {} in the schema", out.size(), specs.size());
  return out;
}

void write_text(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".partial." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) fail("cannot create '{}'", tmp.string());
    f << text;
    if (!f) fail("write to '{}' failed", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) fail("cannot rename '{}' to '{}': {}", tmp.string(), p.string(), ec.message());
}

}  // namespace

void make_tiny_checkpoint(const std::string& out_dir, uint64_t seed, const std::string& tokenizer_json,
                          double route_skew, bool dspark) {
  if (!tokenizer_json.empty() && !fs::is_regular_file(tokenizer_json))
    fail("tokenizer file '{}' does not exist", tokenizer_json);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir)) fail("cannot create directory '{}': {}", out_dir, ec.message());
  const fs::path dir(out_dir);

  const json cfg_json = dspark ? with_dspark_drafter(tiny_demo_config_json()) : tiny_demo_config_json();
  const ModelConfig cfg = ModelConfig::from_json(cfg_json);
  write_text(dir / "config.json", cfg_json.dump(2) + "\n");
  write_text(dir / "generation_config.json",
             json{{"do_sample", true}, {"temperature", 1.0}, {"top_p", 1.0}, {"bos_token_id", cfg.bos_token_id},
                  {"eos_token_id", cfg.eos_token_id}}
                     .dump(2) + "\n");
  // As the real tokenizer_config.json (spec §6.1): no BOS added by encode (the prompt text carries it).
  write_text(dir / "tokenizer_config.json",
             json{{"add_bos_token", false},
                  {"add_eos_token", false},
                  {"bos_token", "<｜begin▁of▁sentence｜>"},
                  {"eos_token", "<｜end▁of▁sentence｜>"},
                  {"pad_token", "<｜end▁of▁sentence｜>"},
                  {"model_max_length", 1048576},
                  {"tokenizer_class", "PreTrainedTokenizerFast"}}
                     .dump(2) + "\n");
  if (!tokenizer_json.empty()) {
    const fs::path tmp = (dir / "tokenizer.json").string() + ".partial." + std::to_string(::getpid());
    fs::copy_file(tokenizer_json, tmp, fs::copy_options::overwrite_existing, ec);
    if (!ec) fs::rename(tmp, dir / "tokenizer.json", ec);
    if (ec) fail("cannot copy '{}' to '{}': {}", tokenizer_json, (dir / "tokenizer.json").string(), ec.message());
  }
  write_safetensors((dir / "model.safetensors").string(), make_tensors(cfg, seed, route_skew));  // last, atomically
}

void make_random_checkpoint(const std::string& out_dir, const json& config, uint64_t seed, double route_skew) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir)) fail("cannot create directory '{}': {}", out_dir, ec.message());
  const ModelConfig cfg = ModelConfig::from_json(config);
  write_text(fs::path(out_dir) / "config.json", config.dump(2) + "\n");
  write_safetensors((fs::path(out_dir) / "model.safetensors").string(), make_tensors(cfg, seed, route_skew));
}

std::string default_tokenizer_json() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  const fs::path p = exe.parent_path().parent_path() / "assets" / "tokenizer" / "tokenizer.json";
  return fs::is_regular_file(p, ec) ? p.lexically_normal().string() : "";
}

}  // namespace dsv4
