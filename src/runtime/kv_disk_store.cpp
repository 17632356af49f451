#include "runtime/kv_disk_store.h"

#define XXH_INLINE_ALL
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

namespace dsv4 {

namespace fs = std::filesystem;

namespace {

// File = Header, then block_tokens int32 token ids, then the payload. The checksum covers all of it (with the
// checksum field zeroed).
constexpr char kMagic[8] = {'D', 'S', 'V', '4', 'K', 'V', 'B', '1'};
struct Header {
  char magic[8];
  uint32_t version, block_tokens, kind, reserved;
  uint64_t identity, hash, parent, payload_bytes, checksum;
};
static_assert(sizeof(Header) == 64);

uint64_t checksum_of(Header h, std::span<const int32_t> tokens, std::span<const uint8_t> payload) {
  h.checksum = 0;
  XXH3_state_t* s = XXH3_createState();
  XXH3_64bits_reset(s);
  XXH3_64bits_update(s, &h, sizeof h);
  XXH3_64bits_update(s, tokens.data(), tokens.size_bytes());
  XXH3_64bits_update(s, payload.data(), payload.size());
  const uint64_t r = XXH3_64bits_digest(s);
  XXH3_freeState(s);
  return r;
}

bool write_all(int fd, const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= size_t(w);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

bool is_kv_block_file(const fs::path& p) { return p.extension() == ".kvb" || p.extension() == ".kvt"; }

}  // namespace

KvDiskStore::KvDiskStore(KvDiskOptions o) : o_(std::move(o)) {
  id_hash_ = XXH3_64bits(o_.identity.data(), o_.identity.size());
  tmp_tag_ = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();  // hosts sharing a directory
  std::error_code ec;
  fs::create_directories(o_.dir, ec);
  // A probe file proves the directory takes writes (a read-only mount, permissions, a full disk).
  const std::string probe = fmt::format("{}/.probe-{}", o_.dir, ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  char byte = 0;
  if (fd < 0 || !write_all(fd, &byte, 1) || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(probe.c_str());
    spdlog::warn("KV offload: {} does not take writes ({}): blocks are not offloaded; existing ones are still read",
                 o_.dir, std::strerror(err));
  } else {
    ::close(fd);
    ::unlink(probe.c_str());
    writable_ = true;
    sweep_stale_temporaries();
  }
  for (auto& e : fs::directory_iterator(o_.dir, ec))
    if (is_kv_block_file(e.path())) {
      ++st_.files;
      st_.bytes_on_disk += uint64_t(e.file_size(ec));
    }
  if (writable_) writer_ = std::thread([this] { writer_loop(); });
  for (int i = 0; i < std::max(1, o_.io_threads); ++i) readers_.emplace_back([this] { reader_loop(); });
}

KvDiskStore::~KvDiskStore() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  for (auto& t : readers_) t.join();
}

std::string KvDiskStore::identity_hash() const { return fmt::format("{:016x}", id_hash_); }

std::string KvDiskStore::file_path(uint64_t hash, KvFile kind) const {
  return fmt::format("{}/{:016x}-{:016x}.{}", o_.dir, id_hash_, hash, kind == KvFile::Body ? "kvb" : "kvt");
}

std::string KvDiskStore::describe() const {
  KvDiskStats s = stats();
  const int64_t overhead = int64_t(sizeof(Header)) + 4 * o_.block_tokens;
  return fmt::format("KV offload: {} ({}), size {:.1f} MiB, {} files ({:.1f} MiB) there; block file {} bytes "
                     "({:.0f} per token), resume snapshot {} bytes; identity {}",
                     o_.dir, writable() ? "read-write" : "read-only", double(o_.max_bytes) / (1 << 20), s.files,
                     double(s.bytes_on_disk) / (1 << 20), o_.body_bytes + overhead,
                     double(o_.body_bytes + overhead) / o_.block_tokens, o_.tail_bytes + overhead, identity_hash());
}

bool KvDiskStore::contains(uint64_t hash, KvFile kind) const {
  struct stat sb;
  return ::stat(file_path(hash, kind).c_str(), &sb) == 0;
}

void KvDiskStore::put(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens, std::vector<uint8_t> bytes,
                      KvFile kind) {
  if (!writable_ || int64_t(bytes.size()) != payload_bytes(kind) || int64_t(tokens.size()) != o_.block_tokens) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (queued_bytes_ + bytes.size() > o_.max_queued_bytes) {
      ++st_.writes_dropped;
      return;
    }
    queued_bytes_ += bytes.size();
    writes_.push_back({kind, hash, parent, std::vector<int32_t>(tokens.begin(), tokens.end()), std::move(bytes)});
  }
  cv_.notify_all();
}

std::shared_ptr<KvDiskRead> KvDiskStore::read_async(std::vector<KvDiskKey> keys) {
  auto r = std::make_shared<KvDiskRead>();
  r->keys = std::move(keys);
  {
    std::lock_guard<std::mutex> lk(mu_);
    reads_.push_back(r);
  }
  cv_.notify_all();
  return r;
}

void KvDiskStore::flush() {
  std::unique_lock<std::mutex> lk(mu_);
  idle_cv_.wait(lk, [&] { return (writes_.empty() && !writing_) || !writable_; });
}

KvDiskStats KvDiskStore::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  KvDiskStats s = st_;
  s.writable = writable_;
  return s;
}

void KvDiskStore::disable_writes(const std::string& why) {
  if (writable_.exchange(false))
    spdlog::warn("KV offload: writing to {} failed ({}): offload is off from now on; requests are unaffected",
                 o_.dir, why);
}

void KvDiskStore::writer_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !writes_.empty(); });
    if (writes_.empty()) break;  // stop_ with nothing left
    Write w = std::move(writes_.front());
    writes_.pop_front();
    writing_ = true;
    lk.unlock();
    if (writable_) write_one(w);
    lk.lock();
    queued_bytes_ -= w.bytes.size();
    writing_ = false;
    if (!writable_) {  // drop what is left
      for (auto& x : writes_) queued_bytes_ -= x.bytes.size();
      writes_.clear();
    }
    idle_cv_.notify_all();
  }
  idle_cv_.notify_all();
}

void KvDiskStore::write_one(const Write& w) {
  const std::string dst = file_path(w.hash, w.kind);
  if (contains(w.hash, w.kind)) return;  // another request or server wrote it
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = 1;
  h.block_tokens = uint32_t(o_.block_tokens);
  h.kind = uint32_t(w.kind);
  h.identity = id_hash_;
  h.hash = w.hash;
  h.parent = w.parent;
  h.payload_bytes = w.bytes.size();
  h.checksum = checksum_of(h, w.tokens, w.bytes);
  // Private name (host pid + counter), then an atomic rename: readers and other writers only ever see whole files.
  const std::string tmp = fmt::format("{}/.tmp-{}-{:016x}-{}.part", o_.dir, ::getpid(), tmp_tag_, tmp_counter_++);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  bool ok = fd >= 0 && write_all(fd, &h, sizeof h) && write_all(fd, w.tokens.data(), w.tokens.size() * 4) &&
            write_all(fd, w.bytes.data(), w.bytes.size());
  const int err = errno;
  if (fd >= 0) ::close(fd);
  if (ok && ::rename(tmp.c_str(), dst.c_str()) != 0) ok = false;
  if (!ok) {
    const int e = errno ? errno : err;
    ::unlink(tmp.c_str());
    disable_writes(std::strerror(e ? e : EIO));
    return;
  }
  const uint64_t n = sizeof h + w.tokens.size() * 4 + w.bytes.size();
  bool over = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    st_.bytes_written += n;
    ++st_.files_written;
    ++st_.files;
    st_.bytes_on_disk += n;
    over = st_.bytes_on_disk > o_.max_bytes;
  }
  if (over) enforce_size();
}

// Rescans the directory (other servers' files count too) and unlinks the least recently used files until
// the total is 90% of the size, so a full directory is not rescanned on every write.
void KvDiskStore::enforce_size() {
  struct F {
    fs::path p;
    int64_t mtime_ns;
    uint64_t size;
  };
  std::vector<F> files;
  uint64_t total = 0;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(o_.dir, ec)) {
    if (!is_kv_block_file(e.path())) continue;
    struct stat sb;
    if (::stat(e.path().c_str(), &sb) != 0) continue;
    files.push_back({e.path(), int64_t(sb.st_mtim.tv_sec) * 1000000000 + sb.st_mtim.tv_nsec, uint64_t(sb.st_size)});
    total += uint64_t(sb.st_size);
  }
  std::sort(files.begin(), files.end(), [](const F& a, const F& b) { return a.mtime_ns < b.mtime_ns; });
  uint64_t evicted = 0;
  const uint64_t target = o_.max_bytes / 10 * 9;
  for (auto& f : files) {
    if (total <= target) break;
    if (::unlink(f.p.c_str()) == 0 || errno == ENOENT) {
      total -= f.size;
      ++evicted;
    }
  }
  std::lock_guard<std::mutex> lk(mu_);
  st_.evicted_files += evicted;
  st_.files = files.size() - evicted;
  st_.bytes_on_disk = total;
}

// Temporary files of writers that died mid-write (this host's pids only: a live writer's file stays).
void KvDiskStore::sweep_stale_temporaries() {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(o_.dir, ec)) {
    const std::string name = e.path().filename().string();
    int pid = 0;
    if (name.rfind(".tmp-", 0) != 0 || std::sscanf(name.c_str(), ".tmp-%d-", &pid) != 1) continue;
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) ::unlink(e.path().c_str());
  }
}

void KvDiskStore::reader_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !reads_.empty(); });
    if (reads_.empty()) break;
    std::shared_ptr<KvDiskRead> r = reads_.front();
    reads_.pop_front();
    lk.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::vector<uint8_t>> bodies;
    for (const KvDiskKey& k : r->keys) {
      std::vector<uint8_t> b;
      if (!read_one(k, KvFile::Body, b)) break;
      bodies.push_back(std::move(b));
    }
    // The deepest snapshot that verifies ends the restored run.
    for (int64_t i = int64_t(bodies.size()) - 1; i >= 0; --i)
      if (r->keys[size_t(i)].tail && read_one(r->keys[size_t(i)], KvFile::Tail, r->tail)) {
        r->tail_index = i;
        bodies.resize(size_t(i + 1));
        r->blocks = std::move(bodies);
        break;
      }
    r->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lk.lock();
    ++st_.restores;
    st_.restore_seconds += r->seconds;
    st_.hit_blocks += r->blocks.size();
    st_.hit_tokens += r->blocks.size() * uint64_t(o_.block_tokens);
    r->finished.store(true, std::memory_order_release);
  }
}

// Reads and verifies one file. A missing file is a plain miss; anything else wrong is a warning, and the file
// goes (it can never verify; a fresh copy is written when the block is recomputed).
bool KvDiskStore::read_one(const KvDiskKey& k, KvFile kind, std::vector<uint8_t>& out) {
  const std::string path = file_path(k.hash, kind);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const uint64_t want = sizeof(Header) + uint64_t(o_.block_tokens) * 4 + uint64_t(payload_bytes(kind));
  struct stat sb;
  std::string bad;
  Header h{};
  std::vector<int32_t> tokens(size_t(o_.block_tokens));
  out.resize(size_t(payload_bytes(kind)));
  if (::fstat(fd, &sb) != 0 || uint64_t(sb.st_size) != want)
    bad = fmt::format("{} bytes, expected {}", uint64_t(sb.st_size), want);
  else if (!read_all(fd, &h, sizeof h) || !read_all(fd, tokens.data(), tokens.size() * 4) ||
           !read_all(fd, out.data(), out.size()))
    bad = "short read";
  else if (std::memcmp(h.magic, kMagic, 8) != 0 || h.version != 1)
    bad = "not a dsv4 KV block file";
  else if (h.identity != id_hash_ || h.block_tokens != uint32_t(o_.block_tokens) || h.kind != uint32_t(kind) ||
           h.payload_bytes != uint64_t(payload_bytes(kind)))
    bad = "another model, dtype or layout";
  else if (h.checksum != checksum_of(h, tokens, out))
    bad = "checksum mismatch";
  else if (h.hash != k.hash || h.parent != k.parent || !std::equal(tokens.begin(), tokens.end(), k.tokens.begin()))
    bad = "another prefix (hash collision)";
  ::close(fd);
  if (!bad.empty()) {
    spdlog::warn("KV offload: ignoring {} ({}); the block is recomputed", path, bad);
    if (bad != "another prefix (hash collision)") ::unlink(path.c_str());
    std::lock_guard<std::mutex> lk(mu_);
    ++st_.bad_files;
    out.clear();
    return false;
  }
  // A read makes the file recently used for every server's LRU.
  ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0);
  std::lock_guard<std::mutex> lk(mu_);
  st_.bytes_read += want;
  return true;
}

}  // namespace dsv4
