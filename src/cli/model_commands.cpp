// dsv4 score | generate | inspect: run or check a checkpoint without the server.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/parallel.h"
#include "core/error.h"
#include "model/dsv4_model.h"
#include "runtime/expert_load.h"
#include "runtime/session.h"
#include "model/kv_cache.h"
#include "model/weight_schema.h"
#include "model/weights.h"

namespace dsv4::cli {

namespace {

std::vector<int32_t> read_ids(const std::string& path, int vocab) {
  std::ifstream f(path);
  if (!f) fail("cannot open ids file '{}'", path);
  std::vector<int32_t> ids;
  std::string tok;
  while (f >> tok) {
    char* end = nullptr;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    if (!end || *end) fail("{}: '{}' is not an integer token id", path, tok);
    if (v < 0 || v >= vocab) fail("{}: token id {} out of range [0, {})", path, v, vocab);
    ids.push_back(int32_t(v));
  }
  if (ids.empty()) fail("{}: no token ids (empty input)", path);
  return ids;
}

void check_model_dir(const std::string& dir) {
  if (!std::filesystem::exists(dir)) fail("model directory '{}' does not exist", dir);
  if (!std::filesystem::exists(std::filesystem::path(dir) / "config.json"))
    fail("model directory '{}' has no config.json", dir);
}

struct ModelOpts {
  std::string model, numerics = "auto", device = "auto";
};

// Real checkpoints default to the reference numerics they were trained for; `auto` keeps that default.
Numerics pick_numerics(const std::string& s) {
  return s == "auto" ? Numerics::Reference : parse_numerics(s);
}

}  // namespace

void add_model_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("score", "Logits of every position of a token-id prompt (raw float32 [T, vocab])");
    auto o = std::make_shared<ModelOpts>();
    auto ids_path = std::make_shared<std::string>();
    auto out_path = std::make_shared<std::string>();
    auto chunk = std::make_shared<int>(0);
    struct LoadOpts {
      bool show = false;
      int ep_size = 1, redundant = 0;
    };
    auto load = std::make_shared<LoadOpts>();
    cmd->add_option("--model", o->model, "checkpoint directory")->required();
    cmd->add_option("--ids", *ids_path, "file of whitespace-separated token ids")->required();
    cmd->add_option("--out", *out_path, "output file: little-endian float32, row-major [T, vocab]")->required();
    cmd->add_option("--chunk", *chunk, "feed the prompt N tokens at a time (1 = token by token); 0 = all at once");
    cmd->add_option("--numerics", o->numerics, "exact | reference (default: reference)")
        ->check(CLI::IsMember({"auto", "exact", "reference"}));
    cmd->add_option("--device", o->device, "cpu | cuda | auto (cuda when a GPU is present)")
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    auto par = std::make_shared<ParallelOpts>();
    par->master_port = 29510;  // not serve's default: a score beside a running server must not collide
    add_parallel_options(*cmd, *par, false);
    cmd->add_flag("--expert-load", load->show, "print tokens per routed expert and layer (the router's choices)");
    cmd->add_option("--expert-load-ep-size", load->ep_size,
                    "with --expert-load: max/mean rank load over N expert-parallel ranks");
    cmd->add_option("--expert-load-redundant", load->redundant,
                    "with --expert-load-ep-size: also under the EPLB placement with R redundant expert slots");
    cmd->callback([=] {
      check_model_dir(o->model);
      const auto cfg = ModelConfig::load((std::filesystem::path(o->model) / "config.json").string());
      auto ids = read_ids(*ids_path, cfg.vocab_size);
      if (*chunk < 0) fail("--chunk must be >= 0");
      par->validate();
      par->validate_stages(o->model);
      std::unique_ptr<LocalRanks> ranks;
      if (par->world_size() > 1) ranks = std::make_unique<LocalRanks>(*par, o->model, o->device, "auto");
      const size_t step = *chunk > 0 ? size_t(*chunk) : ids.size();
      SessionOptions so;
      so.model_dir = o->model;
      so.device = o->device;
      so.numerics = pick_numerics(o->numerics);
      so.max_tokens = int64_t(ids.size());
      so.max_step_tokens = int64_t(step);
      if (par->world_size() > 1) so.dist = par->dist_config(0);
      so.pipeline = par->pipeline();
      so.expert_parallel = par->enable_expert_parallel;
      so.eplb = par->eplb();
      // Every step of the run (EPLB rebalances from these counts).
      if (load->show || so.eplb.enabled) so.expert_load_window = int(ids.size() / step + 1);
      Session sess(so);
      const int seq = sess.new_sequence();
      std::vector<float> logits;
      logits.reserve(ids.size() * size_t(cfg.vocab_size));
      auto t0 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < ids.size(); i += step) {
        Session::Chunk c{seq, std::span<const int32_t>(ids).subspan(i, std::min(step, ids.size() - i)), LogitRows::All};
        sess.forward(std::span<const Session::Chunk>(&c, 1), logits);
      }
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::ofstream f(*out_path, std::ios::binary);
      if (!f) fail("cannot write '{}'", *out_path);
      f.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
      if (!f) fail("write to '{}' failed", *out_path);
      std::fprintf(stderr, "scored %zu tokens in %.3f s (%.1f tok/s)\n", ids.size(), s, double(ids.size()) / s);
      if (load->show)
        std::printf("%s", format_expert_load(sess.runner().expert_load()->snapshot(), load->ep_size, load->redundant).c_str());
      if (so.eplb.enabled) std::printf("%s", format_eplb_epochs(sess.runner().eplb_epochs()).c_str());
    });
  }
  {
    auto* cmd = app.add_subcommand("generate", "Greedy continuation of a token-id prompt");
    auto o = std::make_shared<ModelOpts>();
    auto ids_path = std::make_shared<std::string>();
    auto n_new = std::make_shared<int>(16);
    cmd->add_option("--model", o->model, "checkpoint directory")->required();
    cmd->add_option("--ids", *ids_path, "file of whitespace-separated token ids")->required();
    cmd->add_option("--max-new-tokens", *n_new, "tokens to generate");
    cmd->add_option("--numerics", o->numerics, "exact | reference (default: reference)")
        ->check(CLI::IsMember({"auto", "exact", "reference"}));
    cmd->add_option("--device", o->device, "cpu | cuda | auto (cuda when a GPU is present)")
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    cmd->callback([=] {
      check_model_dir(o->model);
      const auto cfg = ModelConfig::load((std::filesystem::path(o->model) / "config.json").string());
      auto ids = read_ids(*ids_path, cfg.vocab_size);
      if (*n_new < 0) fail("--max-new-tokens must be >= 0");
      SessionOptions so;
      so.model_dir = o->model;
      so.device = o->device;
      so.numerics = pick_numerics(o->numerics);
      so.max_tokens = int64_t(ids.size()) + *n_new;
      so.max_step_tokens = int64_t(ids.size());
      Session sess(so);
      const int seq = sess.new_sequence();
      std::vector<float> logits;
      std::vector<int32_t> cur = ids, out;
      const int64_t V = cfg.vocab_size;
      for (int i = 0; i < *n_new; ++i) {
        logits.clear();
        Session::Chunk c{seq, cur, LogitRows::Last};
        sess.forward(std::span<const Session::Chunk>(&c, 1), logits);
        int32_t next = int32_t(std::max_element(logits.begin(), logits.begin() + V) - logits.begin());
        out.push_back(next);
        cur.assign(1, next);
      }
      for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? " " : "", out[i]);
      std::printf("\n");
    });
  }
  {
    auto* cmd = app.add_subcommand("inspect", "Check a checkpoint against its config (headers only)");
    auto dir = std::make_shared<std::string>();
    auto tp = std::make_shared<int>(1);
    auto ep = std::make_shared<bool>(false);
    cmd->add_option("--model", *dir, "checkpoint directory")->required();
    cmd->add_option("--tensor-parallel-size,--tp", *tp, "also print the weight bytes each of N ranks holds");
    cmd->add_flag("--enable-expert-parallel", *ep, "with --tensor-parallel-size: experts split by expert id");
    cmd->callback([=] {
      check_model_dir(*dir);
      auto cfg = ModelConfig::load((std::filesystem::path(*dir) / "config.json").string());
      Checkpoint ck(*dir);
      auto r = inspect_checkpoint(cfg, ck);
      std::printf("checkpoint: %s (%zu files, %llu tensors, %.3f GB)\n", dir->c_str(), ck.num_files(),
                  (unsigned long long)r.n_tensors, double(r.total_bytes) / 1e9);
      std::printf("config: %d layers, dim %d, %d routed experts (%s), %s%d MTP stages\n", cfg.n_layers, cfg.dim,
                  cfg.n_routed_experts, detect_expert_format(cfg, ck) == ExpertFormat::FP4 ? "fp4" : "fp8",
                  cfg.n_dspark_stages ? "DSpark, " : "", cfg.n_dspark_stages ? cfg.n_dspark_stages : cfg.n_mtp_layers);
      for (auto& [dt, bytes] : r.bytes_per_dtype)
        std::printf("  %-8s %7llu tensors %16llu bytes\n", dt.c_str(), (unsigned long long)r.tensors_per_dtype[dt],
                    (unsigned long long)bytes);
      std::printf("parameters: %llu (main %llu, mtp %llu)\n", (unsigned long long)r.n_params,
                  (unsigned long long)(r.n_params - r.n_params_mtp), (unsigned long long)r.n_params_mtp);
      auto list = [](const char* what, const std::vector<std::string>& v) {
        if (v.empty()) return;
        std::printf("%s (%zu):\n", what, v.size());
        for (size_t i = 0; i < v.size() && i < 50; ++i) std::printf("  %s\n", v[i].c_str());
        if (v.size() > 50) std::printf("  ... %zu more\n", v.size() - 50);
      };
      for (KvDtype dt : {KvDtype::BF16, KvDtype::FP8}) {
        auto lay = KvLayout::make(cfg, 256, dt, false);
        std::printf("KV cache %s: %.2f bytes/token (blocks of 256 tokens: %lld B); %lld B fixed per sequence "
                    "(window rings, compressor state)\n",
                    kv_dtype_name(dt), double(lay.block_bytes()) / 256, (long long)lay.block_bytes(),
                    (long long)lay.slot_bytes());
      }
      if (*tp > 1 && r.ok()) {
        std::printf("tensor parallel %d%s: weight bytes per rank\n", *tp, *ep ? " (expert parallel)" : "");
        uint64_t sum = 0;
        for (int rank = 0; rank < *tp; ++rank) {
          const uint64_t b = ModelWeights::measure(cfg, *dir, Placement{rank, *tp, *ep});
          sum += b;
          std::printf("  rank %d: %llu bytes (%.3f GB)\n", rank, (unsigned long long)b, double(b) / 1e9);
        }
        std::printf("  all ranks: %.3f GB (replicated tensors counted on every rank)\n", double(sum) / 1e9);
      }
      list("missing tensors", r.missing);
      list("unexpected tensors", r.unexpected);
      list("wrong dtype/shape", r.mismatched);
      if (!r.ok()) fail("checkpoint does not match its config");
      std::printf("OK\n");
    });
  }
}

}  // namespace dsv4::cli
