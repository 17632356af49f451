// The disk tier's store: round trip across instances, verification (corrupt, truncated, foreign identity,
// colliding tokens), LRU within the size, two writers on one directory, and degrading (read-only directory,
// full disk) to no writes without failing.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include "runtime/kv_disk_store.h"
#include "runtime/prefix_cache.h"

using namespace dsv4;
namespace fs = std::filesystem;

namespace {

constexpr int kBt = 128;
constexpr int64_t kBytes = 3000, kTail = 5000;

struct Chain {
  std::vector<int32_t> tokens;
  std::vector<KvDiskKey> keys;  // every one asks for its snapshot
  std::vector<std::vector<uint8_t>> payload, tail;
};

Chain chain(int blocks, int seed) {
  Chain c;
  uint64_t h = 0;
  for (int b = 0; b < blocks; ++b) {
    std::vector<int32_t> t(kBt);
    for (int i = 0; i < kBt; ++i) t[size_t(i)] = (seed * 7919 + b * 131 + i * 17) % 5000;
    const uint64_t parent = h;
    h = PrefixCache::chain_hash(parent, t);
    c.keys.push_back({h, parent, t, true});
    c.tokens.insert(c.tokens.end(), t.begin(), t.end());
    std::vector<uint8_t> p(static_cast<size_t>(kBytes));
    for (size_t i = 0; i < p.size(); ++i) p[i] = uint8_t((i * 31 + size_t(b) * 7 + size_t(seed)) & 0xff);
    c.payload.push_back(std::move(p));
    std::vector<uint8_t> q(static_cast<size_t>(kTail));
    for (size_t i = 0; i < q.size(); ++i) q[i] = uint8_t((i * 13 + size_t(b) * 3 + size_t(seed)) & 0xff);
    c.tail.push_back(std::move(q));
  }
  return c;
}

KvDiskOptions opts(const std::string& dir, std::string identity = "model-a;fp8", uint64_t max_bytes = 1 << 30) {
  KvDiskOptions o;
  o.dir = dir;
  o.max_bytes = max_bytes;
  o.identity = std::move(identity);
  o.block_tokens = kBt;
  o.body_bytes = kBytes;
  o.tail_bytes = kTail;
  return o;
}

// Bodies of every block; snapshots of those in `tails` (all when empty).
void put_all(KvDiskStore& s, const Chain& c, std::vector<size_t> tails = {}) {
  for (size_t b = 0; b < c.keys.size(); ++b) {
    s.put(c.keys[b].hash, c.keys[b].parent, c.keys[b].tokens, c.payload[b]);
    if (tails.empty() || std::find(tails.begin(), tails.end(), b) != tails.end())
      s.put(c.keys[b].hash, c.keys[b].parent, c.keys[b].tokens, c.tail[b], KvFile::Tail);
  }
  s.flush();
}

std::shared_ptr<KvDiskRead> read_wait(KvDiskStore& s, std::vector<KvDiskKey> keys) {
  auto r = s.read_async(std::move(keys));
  while (!r->done()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return r;
}

struct TempDir {
  fs::path p;
  TempDir() {
    p = fs::temp_directory_path() / fs::path("dsv4-kvdisk-" + std::to_string(::getpid()) + "-" +
                                             std::to_string(counter()++));
    fs::remove_all(p);
  }
  ~TempDir() { fs::remove_all(p); }
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::string str() const { return p.string(); }
};

}  // namespace

TEST(KvDiskStore, RoundTripSurvivesANewInstance) {
  TempDir d;
  Chain c = chain(3, 1);
  {
    KvDiskStore s(opts(d.str()));
    EXPECT_TRUE(s.writable());
    put_all(s, c);
    EXPECT_EQ(s.stats().files_written, 6u);
  }
  KvDiskStore s(opts(d.str()));  // a restart
  EXPECT_EQ(s.stats().files, 6u);
  for (auto& k : c.keys) EXPECT_TRUE(s.contains(k.hash) && s.contains(k.hash, KvFile::Tail));
  auto r = read_wait(s, c.keys);
  ASSERT_EQ(r->blocks.size(), 3u);
  for (size_t b = 0; b < 3; ++b) EXPECT_EQ(r->blocks[b], c.payload[b]);
  EXPECT_EQ(r->tail_index, 2);
  EXPECT_EQ(r->tail, c.tail[2]);
  EXPECT_EQ(s.stats().hit_blocks, 3u);
  EXPECT_GT(s.stats().bytes_read, 3u * kBytes);
  // Bytes on disk per block: the payload plus a small header and the token ids.
  EXPECT_LE(fs::file_size(s.file_path(c.keys[0].hash)), uint64_t(kBytes) + 64 + 4 * kBt);
}

TEST(KvDiskStore, ARestoredRunEndsAtTheDeepestSnapshot) {
  TempDir d;
  Chain c = chain(5, 9);
  KvDiskStore s(opts(d.str()));
  put_all(s, c, {0, 2});
  auto r = read_wait(s, c.keys);
  EXPECT_EQ(r->blocks.size(), 3u);
  EXPECT_EQ(r->tail_index, 2);
  EXPECT_EQ(r->tail, c.tail[2]);
  fs::resize_file(s.file_path(c.keys[2].hash, KvFile::Tail), 10);  // a bad snapshot: the one before serves
  r = read_wait(s, c.keys);
  EXPECT_EQ(r->blocks.size(), 1u);
  EXPECT_EQ(r->tail, c.tail[0]);
  EXPECT_EQ(s.stats().bad_files, 1u);
  auto keys = c.keys;
  keys[0].tail = false;  // not asked for: no snapshot, nothing restored
  EXPECT_EQ(read_wait(s, keys)->blocks.size(), 0u);
}

TEST(KvDiskStore, CorruptAndTruncatedFilesAreIgnoredAndRemoved) {
  TempDir d;
  Chain c = chain(4, 2);
  KvDiskStore s(opts(d.str()));
  put_all(s, c);
  {  // one flipped payload byte in block 2
    std::fstream f(s.file_path(c.keys[2].hash), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-100, std::ios::end);
    char ch = 0;
    f.read(&ch, 1);
    f.seekp(-100, std::ios::end);
    ch = char(ch ^ 0x10);
    f.write(&ch, 1);
  }
  auto r = read_wait(s, c.keys);
  EXPECT_EQ(r->blocks.size(), 2u);  // the verified leading run
  EXPECT_EQ(s.stats().bad_files, 1u);
  EXPECT_FALSE(s.contains(c.keys[2].hash));
  fs::resize_file(s.file_path(c.keys[1].hash), 1000);  // truncated
  r = read_wait(s, c.keys);
  EXPECT_EQ(r->blocks.size(), 1u);
  EXPECT_EQ(s.stats().bad_files, 2u);
  fs::resize_file(s.file_path(c.keys[0].hash), 0);
  r = read_wait(s, c.keys);
  EXPECT_EQ(r->blocks.size(), 0u);
  EXPECT_EQ(s.stats().bad_files, 3u);
}

TEST(KvDiskStore, AnotherIdentityNeverReadsThem) {
  TempDir d;
  Chain c = chain(2, 3);
  KvDiskStore a(opts(d.str(), "model-a;fp8"));
  put_all(a, c);
  KvDiskStore b(opts(d.str(), "model-a;bf16"));
  EXPECT_NE(a.identity_hash(), b.identity_hash());
  EXPECT_FALSE(b.contains(c.keys[0].hash));
  // Even a file renamed to the other identity's name is refused by its header.
  fs::copy_file(a.file_path(c.keys[0].hash), b.file_path(c.keys[0].hash));
  auto r = read_wait(b, c.keys);
  EXPECT_EQ(r->blocks.size(), 0u);
  EXPECT_EQ(b.stats().bad_files, 1u);
  // Same hash, other tokens (a collision): refused, and the file stays for its own prefix.
  auto keys = c.keys;
  keys[0].tokens[5] += 1;
  r = read_wait(a, keys);
  EXPECT_EQ(r->blocks.size(), 0u);
  EXPECT_TRUE(a.contains(c.keys[0].hash));
  EXPECT_EQ(read_wait(a, c.keys)->blocks.size(), 2u);
}

TEST(KvDiskStore, LeastRecentlyUsedGoFirstWithinTheSize) {
  TempDir d;
  Chain c = chain(8, 4);
  const uint64_t file = 2 * (64 + 4 * kBt) + kBytes + kTail;  // a block's two files
  KvDiskStore s(opts(d.str(), "id", 5 * file));
  for (size_t b = 0; b < 8; ++b) {
    s.put(c.keys[b].hash, c.keys[b].parent, c.keys[b].tokens, c.payload[b]);
    s.put(c.keys[b].hash, c.keys[b].parent, c.keys[b].tokens, c.tail[b], KvFile::Tail);
    s.flush();
    std::this_thread::sleep_for(std::chrono::milliseconds(15));  // mtimes are coarse
    if (b >= 1) {
      EXPECT_EQ(read_wait(s, {c.keys[0]})->blocks.size(), 1u);  // block 0 stays in use
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(15));
  }
  uint64_t total = 0;
  int files = 0;
  for (auto& e : fs::directory_iterator(d.p)) total += e.file_size(), ++files;
  EXPECT_LE(total, 5 * file);
  EXPECT_GT(s.stats().evicted_files, 0u);
  EXPECT_TRUE(s.contains(c.keys[0].hash));   // recently read
  EXPECT_FALSE(s.contains(c.keys[1].hash));  // oldest unused
  EXPECT_TRUE(s.contains(c.keys[7].hash));   // newest
}

TEST(KvDiskStore, TwoWritersOnOneDirectory) {
  TempDir d;
  Chain c = chain(16, 5);
  {
    KvDiskStore a(opts(d.str())), b(opts(d.str()));
    std::thread ta([&] { put_all(a, c); });
    std::thread tb([&] { put_all(b, c); });
    ta.join();
    tb.join();
  }
  KvDiskStore s(opts(d.str()));
  auto r = read_wait(s, c.keys);
  EXPECT_EQ(r->blocks.size(), 16u);
  EXPECT_EQ(s.stats().bad_files, 0u);
  for (auto& e : fs::directory_iterator(d.p))
    EXPECT_TRUE(e.path().extension() == ".kvb" || e.path().extension() == ".kvt") << e.path();
}

TEST(KvDiskStore, ReadOnlyDirectoryTurnsWritesOff) {
  TempDir d;
  Chain c = chain(2, 6);
  {
    KvDiskStore s(opts(d.str()));
    put_all(s, c);
  }
  // Root ignores permission bits: a read-only directory it cannot write is /proc's.
  const bool root = ::geteuid() == 0;
  if (!root) ::chmod(d.str().c_str(), 0555);
  KvDiskStore s(opts(root ? "/proc/self" : d.str()));
  EXPECT_FALSE(s.writable());
  Chain other = chain(1, 7);
  put_all(s, other);  // dropped, no error
  EXPECT_EQ(s.stats().files_written, 0u);
  if (!root) {
    EXPECT_EQ(read_wait(s, c.keys)->blocks.size(), 2u);  // what is there is still read
    ::chmod(d.str().c_str(), 0755);
  }
}

TEST(KvDiskStore, FullDiskTurnsWritesOff) {
  // A file size limit makes every block write fail as a full disk does (in a child: the limit is per process).
  TempDir d;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{1000, 1000};
    ::setrlimit(RLIMIT_FSIZE, &lim);
    Chain c = chain(3, 8);
    KvDiskStore s(opts(d.str()));
    if (!s.writable()) ::_exit(2);  // the probe (1 byte) must pass
    put_all(s, c);
    const bool ok = !s.writable() && s.stats().files_written == 0 && !s.contains(c.keys[0].hash);
    int leftovers = 0;
    for (auto& e : fs::directory_iterator(d.p)) ++leftovers, (void)e;
    ::_exit(ok && leftovers == 0 ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}
