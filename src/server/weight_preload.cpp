#include "server/weight_preload.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "core/error.h"

namespace dsv4::server {

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
std::string gb(uint64_t b) { return fmt::format("{:.2f} GB", double(b) / 1e9); }
std::string duration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  const int t = int(s + 0.5);
  return t >= 3600 ? fmt::format("{}h{:02}m", t / 3600, t / 60 % 60)
         : t >= 60 ? fmt::format("{}m{:02}s", t / 60, t % 60)
                   : fmt::format("{}s", t);
}
}  // namespace

Progress::Progress(std::string what, uint64_t total_bytes)
    : what_(std::move(what)), total_(total_bytes), tty_(isatty(STDERR_FILENO) != 0), start_(now_s()) {}

void Progress::update(uint64_t done) {
  const double t = now_s();
  // A terminal redraws ten times a second; a log gets a line every 10 s.
  if (t - last_print_ < (tty_ ? 0.1 : 10.0)) return;
  last_print_ = t;
  const double el = std::max(t - start_, 1e-9);
  const double rate = double(done) / el;
  const double eta = rate > 0 ? double(total_ - std::min(done, total_)) / rate : -1;
  const double frac = total_ ? double(done) / double(total_) : 1.0;
  if (tty_) {
    const int width = 30, fill = int(frac * width);
    std::fprintf(stderr, "\r%s [%s%s] %s / %s  %.0f MB/s  ETA %s   ", what_.c_str(),
                 std::string(size_t(fill), '#').c_str(), std::string(size_t(width - fill), '.').c_str(),
                 gb(done).c_str(), gb(total_).c_str(), rate / 1e6, duration(eta).c_str());
    std::fflush(stderr);
  } else {
    spdlog::info("{}: {} / {} ({:.0f}%), {:.0f} MB/s, ETA {}", what_, gb(done), gb(total_), 100 * frac, rate / 1e6,
                 duration(eta));
  }
}

void Progress::finish() {
  const double el = now_s() - start_;
  if (tty_) std::fprintf(stderr, "\r\033[K");
  spdlog::info("{}: {} in {:.1f} s ({:.0f} MB/s)", what_, gb(total_), el, double(total_) / std::max(el, 1e-9) / 1e6);
}

uint64_t preload_weights(const std::string& dir) {
  std::vector<std::filesystem::path> files;
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") {
      files.push_back(e.path());
      total += e.file_size();
    }
  std::sort(files.begin(), files.end());
  Progress progress("loading weights", total);
  std::vector<char> buf(8u << 20);
  uint64_t done = 0;
  for (const auto& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open {}: {}", f.string(), std::strerror(errno));
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    ssize_t n;
    while ((n = ::read(fd, buf.data(), buf.size())) > 0) {
      done += uint64_t(n);
      progress.update(done);
    }
    ::close(fd);
    if (n < 0) fail("cannot read {}: {}", f.string(), std::strerror(errno));
  }
  progress.finish();
  return done;
}

}  // namespace dsv4::server
