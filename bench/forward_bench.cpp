// Forward-pass benchmark at full DeepSeek-V4-Flash dimensions with dummy weights (no checkpoint): decode
// tokens/s per batch size and context, prefill tokens/s, each against its floor measured in the same run
// (read bandwidth and tensor-core peak are passed in by bench/gpu/run.sh from cuda_ops_bench), and a per-op
// time breakdown. Decode steps run on sequences placed at position context-1 over KV blocks that hold the
// right amount of (zeroed) data: the step reads what a real step at that context reads.
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "kernels/timing_backend.h"
#include "model/known_configs.h"
#include "runtime/model_runner.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

namespace {

struct Args {
  std::string device = "cuda", numerics = "reference", kv = "fp8";
  int layers = 36;
  std::vector<int64_t> batches{1, 4, 16, 64}, contexts{1024, 65536}, prefills{8192, 131072};
  int64_t chunk = 8192;
  double read_gbs = 0, peak_tflops = 0;
  bool profile = true;
};

std::vector<int64_t> list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) v.push_back(std::stoll(x));
  return v;
}

int usage(const std::string& why) {
  auto& out = why.empty() ? stdout : stderr;
  if (!why.empty()) fmt::print(stderr, "forward_bench: {}\n", why);
  fmt::print(out,
             "usage: forward_bench [--device cuda|cpu] [--layers N] [--batches 1,4,16,64] [--contexts 1024,65536]\n"
             "                     [--prefill 8192,131072] [--chunk 8192] [--numerics reference|exact] [--kv fp8|bf16]\n"
             "                     [--read-gbs X] [--peak-tflops Y] [--no-profile]\n"
             "  Full V4-Flash dimensions, dummy weights, N layers (43 is the real model). --read-gbs / --peak-tflops:\n"
             "  the device's measured read bandwidth (GB/s) and FP8 tensor-core peak (TFLOP/s) for the floors.\n");
  return why.empty() ? 0 : 2;
}

uint64_t wbytes(const LinearWeight& w) { return uint64_t(w.data.nbytes()) + (w.scale.valid() ? uint64_t(w.scale.nbytes()) : 0); }
double wparams(const LinearWeight& w) { return double(w.out) * double(w.in); }

struct Floors {
  uint64_t dense_bytes = 0, expert_bytes = 0, shared_bytes = 0, head_bytes = 0;  // per step (experts: each)
  double dense_params = 0, expert_params = 0, shared_params = 0, head_params = 0;  // per token
};

Floors weight_floors(const ModelWeights& w) {
  Floors f;
  for (const LayerWeights& L : w.layers) {
    for (const LinearWeight* lw : {&L.wq_a, &L.wq_b, &L.wkv, &L.wo_a, &L.wo_b, &L.gate, &L.compressor.wkv, &L.compressor.wgate,
                                   &L.idx_wq_b, &L.idx_weights_proj, &L.idx_compressor.wkv, &L.idx_compressor.wgate}) {
      if (!lw->valid()) continue;
      f.dense_bytes += wbytes(*lw);
      f.dense_params += wparams(*lw);
    }
    f.dense_bytes += uint64_t(L.hc_attn.fn.nbytes() + L.hc_ffn.fn.nbytes());
    for (const LinearWeight* lw : {&L.shared.w1, &L.shared.w2, &L.shared.w3}) {
      f.shared_bytes += wbytes(*lw);
      f.shared_params += wparams(*lw);
    }
    const ExpertWeights& e = L.experts[0];
    f.expert_bytes += wbytes(e.w1) + wbytes(e.w2) + wbytes(e.w3);
    f.expert_params += wparams(e.w1) + wparams(e.w2) + wparams(e.w3);
  }
  f.head_bytes = wbytes(w.head);
  f.head_params = wparams(w.head);
  return f;
}

// KV bytes one decode step reads for one sequence at context C (spec §5: window, selected entries, all HCA
// entries, every indexer key).
uint64_t kv_bytes(const ModelConfig& c, const KvLayout& lay, int64_t C) {
  const int64_t eb = lay.shape.main.bytes(), ib = lay.shape.index.bytes();
  uint64_t b = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    b += uint64_t(std::min<int64_t>(c.window, C) * eb);
    if (c.ratio(l) == 4) b += uint64_t((C / 4) * ib + std::min<int64_t>(c.index_topk, C / 4) * eb);
    if (c.ratio(l) == 128) b += uint64_t((C / 128) * eb);
  }
  return b;
}

void print_profile(ModelRunner& r, double steps) {
  auto* tb = dynamic_cast<TimingBackend*>(&r.backend());
  if (!tb) return;
  double total = 0;
  for (auto& [k, t] : tb->times()) total += t.seconds;
  std::vector<std::pair<double, std::string>> v;
  for (auto& [k, t] : tb->times()) v.push_back({t.seconds, k});
  std::sort(v.rbegin(), v.rend());
  fmt::print("    per-op time (synchronized per op, {:.3f} ms/step in all):\n", 1e3 * total / steps);
  for (auto& [s, k] : v)
    fmt::print("      {:<28} {:7.3f} ms/step {:5.1f}%  ({} calls/step)\n", k, 1e3 * s / steps, 100 * s / total,
               double(tb->times().at(k).calls) / steps);
  tb->reset_times();
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      auto val = [&]() -> std::string {
        if (i + 1 >= argc) throw Error(k + " needs a value");
        return argv[++i];
      };
      if (k == "--help" || k == "-h") return usage("");
      else if (k == "--device") a.device = val();
      else if (k == "--layers") a.layers = std::stoi(val());
      else if (k == "--batches") a.batches = list(val());
      else if (k == "--contexts") a.contexts = list(val());
      else if (k == "--prefill") a.prefills = list(val());
      else if (k == "--chunk") a.chunk = std::stoll(val());
      else if (k == "--numerics") a.numerics = val();
      else if (k == "--kv") a.kv = val();
      else if (k == "--read-gbs") a.read_gbs = std::stod(val());
      else if (k == "--peak-tflops") a.peak_tflops = std::stod(val());
      else if (k == "--no-profile") a.profile = false;
      else return usage("unknown option " + k);
    }
    if (a.layers < 1 || a.layers > 43) return usage("--layers must be 1..43");
  } catch (const std::exception& e) {
    return usage(e.what());
  }
  try {
    const std::string dir = (std::filesystem::temp_directory_path() / fmt::format("dsv4_forward_bench_{}", getpid())).string();
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << v4_flash_config_json(a.layers).dump(2);
    int64_t max_b = 1, max_c = 1, max_p = 1;
    for (auto b : a.batches) max_b = std::max(max_b, b);
    for (auto c : a.contexts) max_c = std::max(max_c, c);
    for (auto p : a.prefills) max_p = std::max(max_p, p);
    RunnerOptions ro;
    ro.model_dir = dir;
    ro.device = a.device;
    ro.load_format = "dummy";
    ro.numerics = parse_numerics(a.numerics);
    ro.kv_dtype = parse_kv_dtype(a.kv);
    ro.n_slots = int(max_b);
    ro.limits.max_rows = std::max(a.chunk, max_b);
    ro.limits.max_items = max_b;
    ro.limits.max_logit_rows = max_b;
    ro.max_model_len = std::max(max_c, max_p);
    ro.profile_ops = a.profile;
    {
      const ModelConfig cfg = ModelConfig::from_json(v4_flash_config_json(a.layers));
      const KvLayout lay = KvLayout::make(cfg, 256, ro.kv_dtype, false);
      const int64_t blocks = std::max(max_b * ((max_c + 255) / 256), (max_p + 255) / 256) + max_b;
      ro.kv_cache_memory = uint64_t(blocks) * uint64_t(lay.block_bytes()) + uint64_t(lay.slot_bytes()) * uint64_t(max_b);
    }
    ModelRunner r(ro);
    std::filesystem::remove_all(dir);
    const ModelConfig& c = r.config();
    const MemoryPlan& mp = r.memory();
    r.backend().fill(r.kv_storage().arena(), 0);
    fmt::print("forward_bench: {} layers of DeepSeek-V4-Flash (dummy weights), device {}, numerics {}, KV {}\n", a.layers,
               r.backend().name(), a.numerics, a.kv);
    fmt::print("load: {:.1f} s for {:.2f} GB of weights ({:.2f} GB/s); memory: weights {:.2f} GB, workspace {:.2f} GB, "
               "KV {:.2f} GB ({} blocks)\n", r.load_seconds(), double(mp.weights) / 1e9,
               double(mp.weights) / 1e9 / std::max(r.load_seconds(), 1e-9), double(mp.weights) / 1e9,
               double(mp.workspace) / 1e9, double(mp.kv) / 1e9, mp.kv_blocks);
    const Floors fl = weight_floors(r.weights());
    const int bt = r.kv_layout().block_tokens();
    auto run_steps = [&](const StepPlan& p, int n) {
      for (int i = 0; i < n; ++i) r.execute(p);
      r.backend().synchronize();
    };
    // ---- decode
    for (int64_t C : a.contexts)
      for (int64_t B : a.batches) {
        StepPlan p;
        int32_t next_block = 0;
        for (int64_t b = 0; b < B; ++b) {
          StepItem it;
          it.slot = int32_t(b);
          it.start = C - 1;
          it.tokens = {int32_t(1000 + 17 * b)};
          for (int64_t k = 0; k < (C + bt - 1) / bt; ++k) it.blocks.push_back(next_block++);
          it.logits = LogitRows::Last;
          p.batch.items.push_back(std::move(it));
        }
        if (next_block > mp.kv_blocks) {
          fmt::print("decode batch {} context {}: skipped ({} KV blocks needed, {} allocated)\n", B, C, next_block, mp.kv_blocks);
          continue;
        }
        auto* tb = dynamic_cast<TimingBackend*>(&r.backend());
        if (tb) tb->set_enabled(false);  // whole steps untimed per op
        run_steps(p, 2);                 // warm-up
        const int steps = 5;
        double host_s = 0;
        const auto t0 = clk::now();
        for (int i = 0; i < steps; ++i) host_s += r.execute(p).stats.host_seconds;
        r.backend().synchronize();
        const double step_s = std::chrono::duration<double>(clk::now() - t0).count() / steps;
        host_s /= steps;
        const uint64_t ops0 = r.backend().counters().ops;
        run_steps(p, 1);
        const uint64_t ops_step = r.backend().counters().ops - ops0;
        const double hit = double(c.n_routed_experts) * (1 - std::pow(1 - double(c.n_experts_per_tok) / c.n_routed_experts, double(B)));
        const double bytes = double(fl.dense_bytes + fl.shared_bytes + fl.head_bytes) + hit * double(fl.expert_bytes) +
                             double(B) * double(kv_bytes(c, r.kv_layout(), C));
        const double floor_s = a.read_gbs > 0 ? bytes / (a.read_gbs * 1e9) : 0;
        fmt::print("decode batch {:3d} context {:6d}: {:8.1f} tok/s, {:8.3f} ms/step (host issue {:.3f} ms), {} backend "
                   "ops/step; floor {:.2f} GB/step{}\n", B, C, double(B) / step_s, 1e3 * step_s, 1e3 * host_s, ops_step,
                   bytes / 1e9,
                   floor_s > 0 ? fmt::format(" = {:.3f} ms -> {:.1f}% of floor", 1e3 * floor_s, 100 * floor_s / step_s) : "");
        if (tb) {
          tb->set_enabled(true);
          tb->reset_times();
          run_steps(p, 2);
          print_profile(r, 2);
        }
      }
    // ---- prefill: one sequence in chunks
    for (int64_t P : a.prefills) {
      const int64_t nb = (P + bt - 1) / bt;
      if (nb > mp.kv_blocks) {
        fmt::print("prefill {}: skipped ({} KV blocks needed)\n", P, nb);
        continue;
      }
      std::vector<int32_t> blocks(static_cast<size_t>(nb));
      for (int64_t k = 0; k < nb; ++k) blocks[size_t(k)] = int32_t(k);
      auto* tb = dynamic_cast<TimingBackend*>(&r.backend());
      if (tb) tb->set_enabled(false);
      const auto t0 = clk::now();
      double flops = 0;
      int chunks = 0;
      for (int64_t s = 0; s < P; s += a.chunk) {
        StepPlan p;
        StepItem it;
        it.slot = 0;
        it.start = s;
        const int64_t n = std::min(a.chunk, P - s);
        for (int64_t t = 0; t < n; ++t) it.tokens.push_back(int32_t((s + t) * 7919 % 129000 + 2));
        it.blocks = blocks;
        it.logits = s + n == P ? LogitRows::Last : LogitRows::None;
        p.batch.items.push_back(std::move(it));
        r.execute(p);
        ++chunks;
        // FLOPs: activated weights, plus attention over window + top-k (CSA) or all entries (HCA), QK and PV.
        for (int64_t t = s; t < s + n; ++t) {
          double keys = 0;
          for (int l = 0; l < c.n_layers; ++l) {
            keys += double(std::min<int64_t>(c.window, t + 1));
            if (c.ratio(l) == 4) keys += double(std::min<int64_t>(c.index_topk, (t + 1) / 4));
            if (c.ratio(l) == 128) keys += double((t + 1) / 128);
          }
          flops += 4.0 * keys * c.n_heads * c.head_dim;
        }
      }
      r.backend().synchronize();
      const double el = std::chrono::duration<double>(clk::now() - t0).count();
      flops += 2.0 * double(P) * (fl.dense_params + fl.shared_params + c.n_experts_per_tok * fl.expert_params);
      const double floor_s = a.peak_tflops > 0 ? flops / (a.peak_tflops * 1e12) : 0;
      fmt::print("prefill {:6d} tokens ({} chunks of {}): {:8.1f} tok/s, {:.2f} s; {:.1f} TFLOP{}\n", P, chunks, a.chunk,
                 double(P) / el, el, flops / 1e12,
                 floor_s > 0 ? fmt::format(" -> {:.1f}% of the FP8 tensor-core peak", 100 * floor_s / el) : "");
      if (tb && P == a.prefills.front()) {  // one profiled chunk (the last positions of the first case)
        tb->set_enabled(true);
        tb->reset_times();
        StepPlan p;
        StepItem it;
        it.start = std::max<int64_t>(0, P - a.chunk);
        for (int64_t t = it.start; t < P; ++t) it.tokens.push_back(int32_t(t * 7919 % 129000 + 2));
        it.blocks = blocks;
        it.logits = LogitRows::Last;
        p.batch.items.push_back(std::move(it));
        r.execute(p);
        print_profile(r, 1);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "forward_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
