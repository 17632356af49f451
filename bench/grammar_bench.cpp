// Structured-output benchmark: grammar compile time per corpus schema, and grammar mask time per token at
// batch 1 and 16 against the demo model's CPU decode step at the same batch.
//   compile: every schema of tests/runtime/data/tool_schemas.json as a JSON-schema grammar and as a named
//            DSML tool-call grammar (cold: the compile cache is bypassed);
//   masks:   B requests walk their grammar with random logits through SamplerState (the production path:
//            mask computed or taken from the per-state cache, applied, then sampling); time per step is
//            the sum over the batch of the mask time alone (grammar_metrics), first pass (cold caches)
//            and second pass (warm);
//   decode:  the demo model's Engine step time in steady decode at batch B (no grammar; the fastest of 24
//            steps, so the mask/decode ratios are conservative on a shared machine);
//   served:  B grammar requests decoded by the Engine (the forward pass between samples, as served): the
//            sampling-path mask time per step (waiting for a prefetched mask, or computing it, and applying
//            it), the vocabulary-walk time wherever it ran, and the step time, with mask prefetch on and off.
// The isolated passes above call the sampler back to back (no forward pass to overlap), so they time every
// walk on the sampling path: the cost of a mask without prefetch.
// usage: grammar_bench [MODEL_DIR] [--tokenizer PATH] [--corpus FILE] [--steps N] [--masks-only]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "model/tiny_checkpoint.h"
#include "runtime/engine.h"
#include "runtime/grammar/mask_worker.h"
#include "runtime/grammar/structured.h"
#include "tokenizer/tokenizer.h"

using namespace dsv4;
using namespace dsv4::grammar;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

int main(int argc, char** argv) {
  std::string model = "build/tiny-model", tokp = "assets/tokenizer/tokenizer.json";
  std::string corpus_path = "tests/runtime/data/tool_schemas.json";
  int steps = 64;
  bool model_runs = true;  // --masks-only: the isolated mask passes alone (profiling)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--tokenizer" && i + 1 < argc) tokp = argv[++i];
    else if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--corpus" && i + 1 < argc) corpus_path = argv[++i];
    else if (a == "--masks-only") model_runs = false;
    else if (a == "-h" || a == "--help") {
      fmt::print("usage: grammar_bench [MODEL_DIR] [--tokenizer PATH] [--corpus FILE] [--steps N] [--masks-only]\n");
      return 0;
    } else model = a;
  }
  const Tokenizer tok = Tokenizer::from_file(tokp);
  auto t0 = clk::now();
  auto vocab = Vocabulary::from_tokenizer(tok);
  fmt::print("vocabulary trie: {} tokens, {} nodes, built in {:.1f} ms\n", vocab->size(), vocab->trie_nodes(), 1e3 * secs(t0));
  std::ifstream f(corpus_path);
  const SchemaJson corpus = SchemaJson::parse(f);

  // ---- compile time
  std::vector<double> cj, cd;
  size_t nodes_max = 0;
  for (const auto& t : corpus) {
    ConstraintSpec js;
    js.kind = ConstraintSpec::Kind::JsonSchema;
    js.schema = t["parameters"];
    t0 = clk::now();
    Grammar g = build_grammar(js);
    cj.push_back(1e3 * secs(t0));
    nodes_max = std::max(nodes_max, g.nodes.size());
    ConstraintSpec tc;
    tc.kind = ConstraintSpec::Kind::ToolCalls;
    tc.tool_mode = ConstraintSpec::ToolMode::Named;
    tc.tools = {{t["name"].get<std::string>(), t["parameters"]}};
    t0 = clk::now();
    build_grammar(tc);
    cd.push_back(1e3 * secs(t0));
  }
  auto stats = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    double s = 0;
    for (double x : v) s += x;
    return fmt::format("median {:.2f} ms, mean {:.2f} ms, max {:.2f} ms", v[v.size() / 2], s / double(v.size()), v.back());
  };
  fmt::print("compile ({} schemas): json {}; dsml {}; largest grammar {} nodes\n", corpus.size(), stats(cj), stats(cd),
             nodes_max);

  // ---- decode step of the demo model
  if (!std::filesystem::exists(model + "/model.safetensors")) make_tiny_checkpoint(model, kTinyDemoSeed, tokp);
  EngineConfig ec;
  ec.model_dir = model;
  ec.device = "cpu";
  ec.max_num_seqs = 16;
  ec.kv_cache_memory = 256ull << 20;
  ec.max_model_len = 4096;
  Engine engine(ec, &tok);
  const std::vector<int32_t> prompt = tok.encode("<｜begin▁of▁sentence｜><｜User｜>Use a tool.<｜Assistant｜></think>");
  std::map<int, double> decode_ms;
  const std::vector<int> model_batches = model_runs ? std::vector<int>{1, 16} : std::vector<int>{};
  for (int B : model_batches) {
    for (int i = 0; i < B; ++i) {
      SamplingParams p;
      p.max_tokens = 40;
      p.ignore_eos = true;
      p.seed = uint64_t(i);
      engine.add_request(prompt, p);
    }
    engine.step();  // prefill
    engine.step();
    // The machine may be shared: the fastest step is the estimate of an unloaded one (and the ratios below,
    // against it, are the conservative ones).
    double best = 1e30, total = 0;
    int n = 0;
    for (; n < 24 && engine.has_work(); ++n) {
      t0 = clk::now();
      engine.step();
      const double ms = 1e3 * secs(t0);
      best = std::min(best, ms);
      total += ms;
    }
    decode_ms[B] = best;
    while (engine.has_work()) engine.step();
    fmt::print("decode step (demo model, CPU, batch {}): fastest {:.2f} ms, mean {:.2f} ms\n", B, best, total / n);
  }

  // ---- masks: B requests over corpus grammars (JSON form and required DSML form alternately)
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> noise(size_t(vocab->size()) + 4096);
  for (auto& x : noise) x = normal(rng);
  set_mask_prefetch(false);  // back-to-back samples: nothing to overlap with
  auto make_grammars = [&](int B) {
    std::vector<std::shared_ptr<const CompiledGrammar>> gs;  // fresh objects: cold caches
    for (int i = 0; i < B; ++i) {
      const auto& t = corpus[size_t(i * 7 + B) % corpus.size()];
      ConstraintSpec spec;
      if (i % 2 == 0) {
        spec.kind = ConstraintSpec::Kind::JsonSchema;
        spec.schema = t["parameters"];
      } else {
        spec.kind = ConstraintSpec::Kind::ToolCalls;
        spec.tool_mode = ConstraintSpec::ToolMode::Required;
        spec.tools = {{t["name"].get<std::string>(), t["parameters"]}};
      }
      gs.push_back(std::make_shared<const CompiledGrammar>(build_grammar(spec), vocab));
    }
    return gs;
  };
  for (int B : {1, 16}) {
    const auto gs = make_grammars(B);
    for (int pass = 0; pass < 2; ++pass) {  // pass 1: the same grammars again, other seeds (warm caches)
      std::vector<std::unique_ptr<SamplerState>> reqs;
      for (int i = 0; i < B; ++i) {
        SamplingParams p;
        p.seed = uint64_t(i + 1000 * pass);
        p.grammar = gs[size_t(i)];
        reqs.push_back(std::make_unique<SamplerState>(p));
      }
      auto& M = grammar_metrics();
      const uint64_t ns0 = M.mask_ns.load(), st0 = M.mask_steps.load(), c0 = M.mask_computed.load();
      std::vector<float> l(size_t(vocab->size()));
      int done_steps = 0;
      for (int s = 0; s < steps; ++s) {
        bool any = false;
        for (auto& r : reqs) {
          if (r->grammar_matcher()->terminated()) continue;
          any = true;
          const size_t off = rng() % 4096;
          std::copy(noise.begin() + long(off), noise.begin() + long(off) + vocab->size(), l.begin());
          r->sample(l);
        }
        if (!any) break;
        ++done_steps;
      }
      const double ms = double(M.mask_ns.load() - ns0) / 1e6;
      const uint64_t n = M.mask_steps.load() - st0;
      const double per_step = ms / std::max(1, done_steps);
      fmt::print("masks batch {:2d} ({}): {:.3f} ms per token, {:.3f} ms per step over the batch ({} masks, {} computed) = "
                 "{:.1f}% of a decode step\n",
                 B, pass == 0 ? "cold: new grammars" : "warm: cached grammars", ms / double(std::max<uint64_t>(1, n)),
                 per_step, n, M.mask_computed.load() - c0, 100.0 * per_step / decode_ms[B]);
    }
  }

  // ---- served: grammar requests through the Engine, the forward pass between samples
  for (int B : model_batches) {
    for (bool prefetch : {false, true}) {
      set_mask_prefetch(prefetch);
      const auto gs = make_grammars(B);  // cold grammars: every state is new to them
      for (int i = 0; i < B; ++i) {
        SamplingParams p;
        p.temperature = 1.0f;
        p.max_tokens = steps;
        p.seed = uint64_t(i + 77);
        p.grammar = gs[size_t(i)];
        engine.add_request(prompt, p);
      }
      engine.step();  // prefill
      auto& M = grammar_metrics();
      const uint64_t ns0 = M.mask_ns.load(), w0 = M.walk_ns.load(), st0 = M.mask_steps.load(), c0 = M.mask_computed.load();
      double total_ms = 0, best = 1e30;
      int n = 0;
      while (engine.has_work()) {
        t0 = clk::now();
        engine.step();
        const double ms = 1e3 * secs(t0);
        total_ms += ms;
        best = std::min(best, ms);
        ++n;
      }
      mask_worker_drain();
      const double mask_ms = double(M.mask_ns.load() - ns0) / 1e6, walk_ms = double(M.walk_ns.load() - w0) / 1e6;
      const uint64_t masks = M.mask_steps.load() - st0;
      fmt::print("served batch {:2d}, prefetch {}: {} steps, {} masks ({} walks); mask time on the sampling path "
                 "{:.3f} ms per step = {:.1f}% of the fastest plain decode step, {:.1f}% of this run's mean step "
                 "({:.2f} ms, fastest {:.2f}); walks {:.3f} ms per step wherever they ran\n",
                 B, prefetch ? "on " : "off", n, masks, M.mask_computed.load() - c0, mask_ms / std::max(1, n),
                 100.0 * mask_ms / std::max(1, n) / decode_ms[B], 100.0 * mask_ms / std::max(0.001, total_ms),
                 total_ms / std::max(1, n), best, walk_ms / std::max(1, n));
    }
  }
  return 0;
}
