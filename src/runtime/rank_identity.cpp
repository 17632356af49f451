#include "runtime/rank_identity.h"

#define XXH_INLINE_ALL
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "runtime/model_runner.h"

#ifndef DSV4_VERSION
#define DSV4_VERSION "unknown"
#endif

namespace dsv4 {

const char* dsv4_version() { return DSV4_VERSION; }

namespace {

std::string hex(uint64_t h) { return fmt::format("{:016x}", h); }

uint64_t hash_prefix(const std::filesystem::path& p, size_t max_bytes, uint64_t seed) {
  std::ifstream f(p, std::ios::binary);
  if (!f) fail("cannot read {}", p.string());
  std::string buf(max_bytes, '\0');
  f.read(buf.data(), std::streamsize(max_bytes));
  buf.resize(size_t(f.gcount()));
  return XXH3_64bits_withSeed(buf.data(), buf.size(), seed);
}

}  // namespace

std::vector<dist::IdentityItem> rank_identity(const std::string& model_dir, const std::string& load_format) {
  namespace fs = std::filesystem;
  std::vector<dist::IdentityItem> id;
  id.push_back({"dsv4 version", dsv4_version()});
  id.push_back({"config.json", hex(hash_prefix(fs::path(model_dir) / "config.json", 1 << 20, 1))});
  if (load_format == "dummy") {
    id.push_back({"checkpoint", "dummy weights"});
    return id;
  }
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(model_dir))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) fail("{}: no .safetensors files", model_dir);
  uint64_t h = 0;
  for (auto& f : files) {
    const std::string name = f.filename().string();
    const uint64_t size = fs::file_size(f);
    h = XXH3_64bits_withSeed(name.data(), name.size(), h);
    h = XXH3_64bits_withSeed(&size, sizeof size, h);
    h = hash_prefix(f, 4 << 20, h);  // the header (tensor names, dtypes, offsets) and the first weights
  }
  id.push_back({"checkpoint", fmt::format("{} files, {}", files.size(), hex(h))});
  return id;
}

std::string options_json(const RunnerOptions& o) {
  nlohmann::json j = {
      {"load_format", o.load_format},     {"numerics", o.numerics == Numerics::Exact ? "exact" : "reference"},
      {"kv_dtype", kv_dtype_name(o.kv_dtype)}, {"block_tokens", o.block_tokens},
      {"prefix_tails", o.prefix_tails},   {"n_slots", o.n_slots},
      {"max_rows", o.limits.max_rows},    {"max_items", o.limits.max_items},
      {"max_logit_rows", o.limits.max_logit_rows}, {"max_context", o.limits.max_context},
      {"kv_cache_memory", o.kv_cache_memory}, {"memory_utilization", o.memory_utilization},
      {"max_model_len", o.max_model_len}, {"expert_parallel", o.expert_parallel},
      {"eplb", o.eplb.enabled}, {"eplb_redundant", o.eplb.redundant}, {"eplb_interval", o.eplb.interval},
      {"profile_ops", o.profile_ops},
      {"drafter", int(o.drafter)},        {"draft_tokens", o.draft_tokens},
      {"pipeline_layers", o.pipeline.layers}, {"micro_batches", o.pipeline.micro_batches},
      {"timeout_ms", o.dist.timeout.count()}, {"load_timeout_ms", o.dist.load_timeout.count()}};
  return j.dump();
}

void apply_options_json(const std::string& text, RunnerOptions& o) {
  try {
    const auto j = nlohmann::json::parse(text);
    o.load_format = j.at("load_format").get<std::string>();
    o.numerics = parse_numerics(j.at("numerics").get<std::string>());
    o.kv_dtype = parse_kv_dtype(j.at("kv_dtype").get<std::string>());
    o.block_tokens = j.at("block_tokens").get<int>();
    o.prefix_tails = j.at("prefix_tails").get<bool>();
    o.n_slots = j.at("n_slots").get<int>();
    o.limits.max_rows = j.at("max_rows").get<int64_t>();
    o.limits.max_items = j.at("max_items").get<int64_t>();
    o.limits.max_logit_rows = j.at("max_logit_rows").get<int64_t>();
    o.limits.max_context = j.at("max_context").get<int64_t>();
    o.kv_cache_memory = j.at("kv_cache_memory").get<uint64_t>();
    o.memory_utilization = j.at("memory_utilization").get<double>();
    o.max_model_len = j.at("max_model_len").get<int64_t>();
    o.expert_parallel = j.at("expert_parallel").get<bool>();
    o.eplb.enabled = j.at("eplb").get<bool>();
    o.eplb.redundant = j.at("eplb_redundant").get<int>();
    o.eplb.interval = j.at("eplb_interval").get<int>();
    o.profile_ops = j.at("profile_ops").get<bool>();
    const int drafter = j.at("drafter").get<int>();
    if (drafter < int(Drafter::None) || drafter > int(Drafter::DSpark))
      fail("tensor-parallel group: rank 0 sent an unknown drafter {}", drafter);
    o.drafter = Drafter(drafter);  // the drafter's weights and KV layers: every rank's arena is laid out alike
    o.draft_tokens = j.at("draft_tokens").get<int>();
    o.pipeline.layers = j.at("pipeline_layers").get<std::string>();
    o.pipeline.micro_batches = j.at("micro_batches").get<int>();
    o.dist.timeout = std::chrono::milliseconds(j.at("timeout_ms").get<int64_t>());
    o.dist.load_timeout = std::chrono::milliseconds(j.at("load_timeout_ms").get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    fail("tensor-parallel group: rank 0 sent options this build cannot read ({})", e.what());
  }
}

}  // namespace dsv4
