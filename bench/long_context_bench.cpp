// Long-context prefill + decode on one sequence (issue 17): a prompt of L tokens fed in chunks of C, then D greedy
// decode steps; prints the memory plan's total, the prefill and decode times and the process's peak RSS
// (VmHWM), and writes the last prompt position's logits (raw float32 [vocab]) so runs fed in different chunk
// sizes can be compared byte for byte. bench/long_context.sh runs it over lengths and chunk sizes.
// usage: long_context_bench MODEL_DIR PROMPT_TOKENS CHUNK DECODE_TOKENS LOGITS_OUT [KV_DTYPE]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>

#include "runtime/session.h"

using namespace dsv4;
using clk = std::chrono::steady_clock;

namespace {

// Peak resident set of this process so far (kB), from /proc/self/status.
int64_t vm_hwm_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

double since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    fmt::print(stderr, "usage: long_context_bench MODEL_DIR PROMPT_TOKENS CHUNK DECODE_TOKENS LOGITS_OUT [KV_DTYPE]\n");
    return 2;
  }
  try {
    const std::string model = argv[1], out = argv[5];
    const int64_t L = std::stoll(argv[2]), C = std::stoll(argv[3]), D = std::stoll(argv[4]);
    if (L < 1 || C < 1 || D < 0) throw std::runtime_error("PROMPT_TOKENS and CHUNK must be >= 1, DECODE_TOKENS >= 0");
    SessionOptions so;
    so.model_dir = model;
    so.device = "cpu";
    so.numerics = Numerics::Reference;
    so.kv_dtype = argc > 6 ? argv[6] : "fp8";
    so.max_tokens = L + D;
    so.max_step_tokens = C;
    const int64_t rss_before_load = vm_hwm_kb();
    Session s(so);
    const MemoryPlan& mp = s.runner().memory();
    const int64_t V = s.config().vocab_size;
    fmt::print("plan: weights {} B, workspace {} B (indexer scores {} B), KV {} B, host scratch {} B, copy list {} B; "
               "total {} B\n", mp.weights, mp.workspace, mp.index_scratch, mp.kv, mp.host_scratch, mp.copy_list,
               mp.total());
    std::vector<int32_t> prompt(static_cast<size_t>(L));
    for (int64_t i = 0; i < L; ++i) prompt[size_t(i)] = int32_t(2 + (i * 7919) % (V - 2));  // as itl_bench
    const int seq = s.new_sequence();
    std::vector<float> logits;
    const auto t0 = clk::now();
    for (int64_t i = 0; i < L; i += C) {
      const int64_t n = std::min(C, L - i);
      Session::Chunk c{seq, std::span<const int32_t>(prompt).subspan(size_t(i), size_t(n)),
                       i + n == L ? LogitRows::Last : LogitRows::None};
      s.forward(std::span<const Session::Chunk>(&c, 1), logits);
    }
    const double prefill = since(t0);
    std::ofstream f(out, std::ios::binary);
    f.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(V * 4));
    if (!f) throw std::runtime_error("cannot write " + out);
    const auto t1 = clk::now();
    for (int64_t d = 0; d < D; ++d) {
      const int32_t next = int32_t(std::max_element(logits.end() - V, logits.end()) - (logits.end() - V));
      logits.clear();
      const int32_t tok[1] = {next};
      Session::Chunk c{seq, std::span<const int32_t>(tok, 1), LogitRows::Last};
      s.forward(std::span<const Session::Chunk>(&c, 1), logits);
    }
    const double decode = since(t1);
    const int64_t hwm = vm_hwm_kb();
    fmt::print("prompt {} tokens in chunks of {}: prefill {:.1f} s ({:.1f} tok/s); {} decode steps {:.1f} ms/token\n", L,
               C, prefill, double(L) / prefill, D, D ? 1e3 * decode / double(D) : 0.0);
    fmt::print("peak RSS {} B (before loading {} B); plan total {} B; RSS - plan {:+.1f} MB\n", hwm * 1024,
               rss_before_load * 1024, mp.total(), (double(hwm) * 1024 - double(mp.total())) / 1e6);
  } catch (const std::exception& e) {
    fmt::print(stderr, "long_context_bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
