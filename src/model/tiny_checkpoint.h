// A tiny random DeepSeek-V4 model in the OFFICIAL checkpoint format (FP8 e4m3 + E8M0 128x128 block scales,
// packed FP4 experts + per-32 E8M0 scales, BF16 norms/embedding/head, F32 hc params/ape/sinks/bias, I64
// tid2eid), with the real tokenizer's vocabulary (129280). It is the demo model `dsv4 serve` runs when no
// --model is given, and `dsv4 make-tiny` writes it. Deterministic: the same seed gives byte-identical files.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>

#include "model/config.h"

namespace dsv4 {

inline constexpr uint64_t kTinyDemoSeed = 4;  // the seed of the embedded demo model

// The demo model's config.json (every key of the real V4-Flash root config), and the same parsed.
// 4 layers (ratios 0, 4, 128, 4) + one MTP layer (ratio 0, num_nextn_predict_layers 1), hidden 256,
// 4 heads x 128, 8 experts top-2 (FP4), 2 hash-routed layers, window 128, index top-k 64.
nlohmann::json tiny_demo_config_json();
ModelConfig tiny_demo_config();
// Turns a V4 config into a 0731-style one with a DSpark block drafter (spec §7.1): the MTP entry of
// compress_ratios replaced by `stages` ratio-0 stages, the dspark_* keys (block 5, noise token 128799 when the
// vocabulary has it, else its last id; the last three layers as targets; Markov rank `markov_rank`), and
// num_nextn_predict_layers left as it was (stale, as in 0731).
nlohmann::json with_dspark_drafter(nlohmann::json config, int stages = 3, int markov_rank = 64);

// Creates `out_dir` (and parents) and writes config.json, generation_config.json, tokenizer_config.json,
// tokenizer.json (a copy of `tokenizer_json`, skipped when that is empty; an error when it does not exist)
// and model.safetensors (one file, ~140 MB). model.safetensors is written last and atomically, so a directory
// holding it is complete. Weights: normal(0, 1/sqrt(fan_in)) linears, unit norms, N(0, 1) embedding, small
// hc/gate parameters; activations stay O(1) and the logits have a standard deviation around 1.
// route_skew > 0 makes routing skewed (a few experts of each layer take most tokens: expert load balancing
// tests): score-routed gates get bias + skew * 2^-h and hash tables draw experts with weight 2^(-skew * h) for
// the expert of heat rank h (a seeded order per layer). 0: the uniform default (byte-identical files as before).
// dspark: the demo config with_dspark_drafter (mtp.0..2 DSpark stages instead of the MTP layer).
void make_tiny_checkpoint(const std::string& out_dir, uint64_t seed, const std::string& tokenizer_json,
                          double route_skew = 0, bool dspark = false);

// A random checkpoint of any DeepSeek-V4 config (same tensor rules as the demo model): config.json and
// model.safetensors only. For tests of other shapes and for benchmarks at full dimensions.
void make_random_checkpoint(const std::string& out_dir, const nlohmann::json& config, uint64_t seed,
                            double route_skew = 0);

// <directory of the running executable>/../assets/tokenizer/tokenizer.json when that file exists, else "".
std::string default_tokenizer_json();

}  // namespace dsv4
