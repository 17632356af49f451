// EngineLoop: the engine on its own thread, several client threads streaming and aborting.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "core/error.h"
#include "runtime/engine_loop.h"

using namespace dsv4;
using namespace std::chrono_literals;

namespace {
const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

std::unique_ptr<Engine> make_engine() {
  EngineConfig c;
  c.model_dir = kTiny;
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.kv_cache_memory = 64ull << 20;
  c.enable_prefix_caching = false;  // the default is on; these block counts assume no cached blocks
  return std::make_unique<Engine>(c);
}

// Liveness bounds, not performance targets: CI runs these under the guard backend on two shared cores,
// where one 300-token prefill step alone has taken over 10 s.
constexpr auto kStepWait = 120s;

std::vector<int32_t> collect(RequestStream& s, RequestOutput* last) {
  std::vector<int32_t> toks;
  for (int i = 0; i < 2000; ++i) {
    auto o = s.next(kStepWait);
    if (!o) break;
    toks.insert(toks.end(), o->new_tokens.begin(), o->new_tokens.end());
    if (o->finished()) {
      *last = *o;
      break;
    }
  }
  return toks;
}
}  // namespace

TEST(EngineLoop, ConcurrentClientsGetTheirOwnStreams) {
  if (!std::filesystem::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  EngineLoop loop(make_engine());
  std::vector<std::thread> clients;
  std::vector<std::vector<int32_t>> got(6);
  std::vector<RequestOutput> last(6);
  for (int i = 0; i < 6; ++i)
    clients.emplace_back([&, i] {
      SamplingParams p;
      p.temperature = 0;
      p.max_tokens = 10 + i;
      p.ignore_eos = true;
      std::vector<int32_t> prompt(size_t(20 + 30 * i), int32_t(7 + i));
      auto s = loop.submit(prompt, p);
      got[size_t(i)] = collect(*s, &last[size_t(i)]);
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got[size_t(i)].size(), size_t(10 + i)) << i;
    EXPECT_EQ(last[size_t(i)].finish, FinishReason::Length);
    EXPECT_EQ(last[size_t(i)].prompt_tokens, 20 + 30 * i);
  }
  EXPECT_EQ(loop.stats().running, 0);
}

TEST(EngineLoop, AbortEndsTheStreamAndFreesKv) {
  if (!std::filesystem::exists(kTiny + "/model.safetensors")) FAIL() << "fixture " << kTiny << " missing (../shared must be beside the checkout)";
  EngineLoop loop(make_engine());
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 400;
  p.ignore_eos = true;
  auto s = loop.submit(std::vector<int32_t>(300, 5), p);
  auto first = s->next(kStepWait);
  ASSERT_TRUE(first.has_value());
  loop.abort(s->id());
  RequestOutput last;
  collect(*s, &last);
  EXPECT_EQ(last.finish, FinishReason::Abort);
  for (int i = 0; i < 100 && loop.stats().kv_blocks_used != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(loop.stats().kv_blocks_used, 0);
  EXPECT_THROW(loop.submit({}, p), Error);
}
