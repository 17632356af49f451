// The disk tier end to end on tiny-a (exact numerics): a conversation's blocks persist, a new engine on the
// same directory (a restart) restores them instead of recomputing, and the next turn's logits equal a cold
// run's bit for bit; cached_tokens counts the disk hit. Corrupt and truncated block files, a read-only
// directory and a full disk all give the same answer (recomputed), never a failed request.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/error.h"
#include "runtime/engine.h"
#include "engine_test_util.h"
#include "runtime/prefix_cache.h"

using namespace dsv4;
using dsv4::test::prompt_of;
namespace fs = std::filesystem;

namespace {

const std::string kTiny = std::string(DSV4_SHARED_DIR) + "/fixtures/tiny-a";

EngineConfig config(const std::string& dir) {
  EngineConfig c;
  c.model_dir = kTiny;
  c.numerics = Numerics::Exact;
  c.kv_cache_dtype = "auto";
  c.kv_cache_memory = 64ull << 20;
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 256;
  c.enable_prefix_caching = !dir.empty();
  c.kv_offload_dir = dir;
  c.kv_offload_size = 1ull << 30;
  return c;
}

struct Turn {
  std::vector<float> first_logits;  // the logits the first generated token is sampled from
  std::vector<int32_t> tokens;
  RequestOutput last;
  EngineStats stats;
};

// One request to completion through schedule/execute/complete, keeping the logits of its first sampled token.
Turn run(Engine& e, const std::vector<int32_t>& prompt, int max_tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;
  e.add_request(prompt, p);
  Turn t;
  for (int guard = 0; e.has_work() && guard < 100000; ++guard) {
    StepPlan plan = e.schedule();
    StepResult res = e.execute(plan);
    if (t.first_logits.empty() && res.rows > 0) t.first_logits = res.logits;
    for (auto& o : e.complete(res)) {
      t.tokens.insert(t.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
      t.last = o;
    }
  }
  t.stats = e.stats();
  return t;
}

Turn cold(const std::vector<int32_t>& prompt, int n) {
  Engine e(config(""));
  return run(e, prompt, n);
}

struct TempDir {
  fs::path p = fs::temp_directory_path() / ("dsv4-kvoffload-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(reinterpret_cast<uintptr_t>(this)));
  TempDir() { fs::remove_all(p); }
  ~TempDir() { fs::remove_all(p); }
};

bool have_fixture() { return fs::exists(kTiny + "/model.safetensors"); }

// Turn 1 of a conversation in a fresh engine on `dir`; returns turn 2's prompt (turn 1 + reply + a new message).
std::vector<int32_t> first_turn(const std::string& dir, int checkpoint_blocks = 16) {
  auto p1 = prompt_of(700, 7);
  auto c = config(dir);
  c.kv_offload_checkpoint_blocks = checkpoint_blocks;
  Engine e(c);
  Turn t1 = run(e, p1, 8);
  auto p2 = p1;
  p2.insert(p2.end(), t1.tokens.begin(), t1.tokens.end());
  auto msg = prompt_of(60, 8);
  p2.insert(p2.end(), msg.begin(), msg.end());
  return p2;  // the engine's destructor finishes the queued writes
}

std::vector<fs::path> block_files(const fs::path& dir, const char* ext = ".kvb") {
  std::vector<fs::path> v;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ext) v.push_back(e.path());
  return v;
}

// The file of block k of `tokens` (file names end in the prefix cache's chain hash).
fs::path file_of(const fs::path& dir, const std::vector<int32_t>& tokens, int k) {
  uint64_t h = 0;
  for (int b = 0; b <= k; ++b) h = PrefixCache::chain_hash(h, std::span<const int32_t>(tokens).subspan(size_t(b) * 256, 256));
  char suffix[40];
  std::snprintf(suffix, sizeof suffix, "-%016llx.kvb", (unsigned long long)h);
  for (auto& f : block_files(dir))
    if (f.string().ends_with(suffix)) return f;
  return {};
}

}  // namespace

TEST(KvOffload, RestartRestoresBlocksWithIdenticalLogits) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing";
  TempDir d;
  auto p2 = first_turn(d.p.string());
  EXPECT_EQ(block_files(d.p).size(), 2u);  // 707 computed positions: two full blocks
  ASSERT_EQ(block_files(d.p, ".kvt").size(), 1u);  // one resume snapshot: where the conversation stopped
  EXPECT_EQ(block_files(d.p, ".kvt")[0].stem(), file_of(d.p, prompt_of(700, 7), 1).stem());
  auto e = std::make_unique<Engine>(config(d.p.string()));  // the restart
  Turn warm = run(*e, p2, 4);
  Turn ref = cold(p2, 4);
  EXPECT_EQ(warm.last.cached_tokens, 512);
  EXPECT_EQ(warm.stats.prefix_disk_hits, 512u);
  EXPECT_EQ(warm.stats.disk.hit_blocks, 2u);
  EXPECT_GT(warm.stats.disk.bytes_read, 0u);
  EXPECT_EQ(warm.stats.disk.bad_files, 0u);
  ASSERT_FALSE(ref.first_logits.empty());
  EXPECT_EQ(warm.first_logits, ref.first_logits);  // bit for bit
  EXPECT_EQ(warm.tokens, ref.tokens);
  // Turn 2's own new full block goes to disk too (768 of its 771 positions), by the time the engine is gone.
  e.reset();
  EXPECT_EQ(block_files(d.p).size(), 3u);
}

TEST(KvOffload, OtherRequestsRunWhileARestoreLoads) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing";
  TempDir d;
  auto p2 = first_turn(d.p.string());
  auto other = prompt_of(300, 11);
  Engine e(config(d.p.string()));
  SamplingParams g;
  g.temperature = 0;
  g.max_tokens = 6;
  g.ignore_eos = true;
  const uint64_t a = e.add_request(p2, g), b = e.add_request(other, g);
  std::map<uint64_t, std::vector<int32_t>> got;
  std::map<uint64_t, RequestOutput> last;
  for (int guard = 0; e.has_work() && guard < 10000; ++guard)
    for (auto& o : e.step()) {
      got[o.id].insert(got[o.id].end(), o.new_tokens.begin(), o.new_tokens.end());
      last[o.id] = o;
    }
  EXPECT_EQ(last[a].cached_tokens, 512);
  EXPECT_EQ(last[b].cached_tokens, 0);
  EXPECT_EQ(got[a], cold(p2, 6).tokens);
  EXPECT_EQ(got[b], cold(other, 6).tokens);
}

TEST(KvOffload, CorruptAndTruncatedFilesAreRecomputed) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing";
  TempDir d;
  auto p2 = first_turn(d.p.string(), 1);  // a snapshot for every block: a run can end early
  Turn ref = cold(p2, 4);
  {  // block 1 corrupted: block 0 still comes from disk
    const fs::path f = file_of(d.p, p2, 1);
    ASSERT_FALSE(f.empty());
    std::fstream s(f, std::ios::in | std::ios::out | std::ios::binary);
    s.seekg(std::streamoff(fs::file_size(f) / 2));
    const char c = char(s.get() ^ 0x40);
    s.seekp(std::streamoff(fs::file_size(f) / 2));
    s.put(c);
  }
  auto c = config(d.p.string());
  c.kv_offload_checkpoint_blocks = 1;
  {
    Engine e(c);
    Turn t = run(e, p2, 4);
    EXPECT_EQ(t.stats.disk.bad_files, 1u);
    EXPECT_EQ(t.last.cached_tokens, 256);
    EXPECT_EQ(t.first_logits, ref.first_logits);
    EXPECT_EQ(t.tokens, ref.tokens);
  }
  // The recomputed block was written again (verifies now); truncate block 0 instead.
  fs::resize_file(file_of(d.p, p2, 0), 100);
  Engine e(c);
  Turn t = run(e, p2, 4);
  EXPECT_EQ(t.stats.disk.bad_files, 1u);
  EXPECT_EQ(t.last.cached_tokens, 0);
  EXPECT_EQ(t.first_logits, ref.first_logits);
  EXPECT_EQ(t.tokens, ref.tokens);
}

TEST(KvOffload, ReadOnlyDirectoryAndFullDiskServeNormally) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing";
  auto p = prompt_of(600, 9);
  Turn ref = cold(p, 4);
  {  // /proc/self takes no files, even as root
    Engine e(config("/proc/self"));
    Turn t = run(e, p, 4);
    EXPECT_FALSE(t.stats.disk.writable);
    EXPECT_EQ(t.first_logits, ref.first_logits);
  }
  // A file size limit fails every block write as a full disk does (ENOSPC and EFBIG take the same path).
  TempDir d;
  auto e = std::make_unique<Engine>(config(d.p.string()));
  rlimit old{};
  ::getrlimit(RLIMIT_FSIZE, &old);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit lim = old;
  lim.rlim_cur = 1000;
  ::setrlimit(RLIMIT_FSIZE, &lim);
  Turn t = run(*e, p, 4);
  e.reset();  // joins the writer
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_FALSE(t.stats.disk.writable && t.stats.disk.files_written > 0);
  EXPECT_EQ(t.first_logits, ref.first_logits);
  EXPECT_EQ(t.tokens, ref.tokens);
  EXPECT_TRUE(block_files(d.p).empty());
}

TEST(KvOffload, NeedsPrefixCaching) {
  if (!have_fixture()) FAIL() << "fixture " << kTiny << " missing";
  auto c = config("/tmp/unused");
  c.enable_prefix_caching = false;
  EXPECT_THROW(Engine e(c), Error);
}

TEST(KvOffload, PrefixCacheHitsEndOnlyAtResumableBlocks) {
  BlockPool pool(8);
  PrefixCache pc(pool, 256);
  auto t = prompt_of(1024, 3);
  std::vector<int32_t> b;
  for (int i = 0; i < 4; ++i) b.push_back(pool.allocate());
  EXPECT_TRUE(pc.insert(t, 0, b[0], true));
  EXPECT_TRUE(pc.insert(t, 1, b[1], false));  // restored without its snapshot
  EXPECT_TRUE(pc.insert(t, 2, b[2], false));
  std::vector<std::pair<int32_t, bool>> chain;
  EXPECT_EQ(pc.lookup(t, 4, &chain), std::vector<int32_t>{b[0]});
  EXPECT_EQ(chain.size(), 3u);
  EXPECT_FALSE(pc.insert(t, 2, b[3], false));  // no upgrade: nothing changes
  EXPECT_TRUE(pc.insert(t, 2, b[3], true));    // a computed block replaces the one without a snapshot
  EXPECT_EQ(pc.lookup(t, 4), (std::vector<int32_t>{b[0], b[1], b[3]}));
  EXPECT_EQ(pool.refcount(b[2]), 1);  // the cache let go of it
  for (int32_t x : b) pool.release(x);
}
