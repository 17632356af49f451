#include "dist/watchdog.h"

#include <spdlog/spdlog.h>

namespace dsv4::dist {

Watchdog::Watchdog(Communicator& comm, std::chrono::milliseconds timeout) : comm_(comm), timeout_(timeout) {
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::arm() {
  {
    std::lock_guard l(mu_);
    armed_ = true;
    deadline_ = std::chrono::steady_clock::now() + timeout_;
  }
  cv_.notify_all();
}

void Watchdog::disarm() {
  std::lock_guard l(mu_);
  armed_ = false;
}

bool Watchdog::fired() const {
  std::lock_guard l(mu_);
  return fired_;
}

void Watchdog::throw_fired(const char* what) const {
  throw PeerError(fmt::format("tensor-parallel group failed: {} made no progress for {} s (a rank died, hung or "
                              "lost its network); the {} communicator was aborted",
                              what, timeout_.count() / 1000, comm_.name()));
}

void Watchdog::loop() {
  std::unique_lock l(mu_);
  while (!stop_) {
    if (!armed_) {
      cv_.wait(l, [&] { return stop_ || armed_; });
      continue;
    }
    const auto deadline = deadline_;
    if (cv_.wait_until(l, deadline, [&] { return stop_ || !armed_ || deadline_ != deadline; })) continue;
    fired_ = true;
    armed_ = false;
    spdlog::error("tensor-parallel watchdog: a step exceeded {} s; aborting the {} communicator",
                  timeout_.count() / 1000, comm_.name());
    l.unlock();
    comm_.abort();
    l.lock();
  }
}

}  // namespace dsv4::dist
