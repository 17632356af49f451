#include "runtime/grammar/mask_worker.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "runtime/grammar/matcher.h"

namespace dsv4::grammar {

namespace {

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("DSV4_GRAMMAR_PREFETCH");
    return !(e && std::strcmp(e, "0") == 0);
  }()};
  return on;
}

class Worker {
 public:
  Worker() {
    grammar_metrics();  // constructed first, so destroyed after this thread is joined
    thread_ = std::thread([this] { run(); });
  }
  ~Worker() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void submit(std::function<void()> t) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      // A backlog this deep means the worker cannot keep up: the oldest masks are the ones the sampler has
      // most likely computed itself by now.
      if (q_.size() >= kMaxQueued) q_.pop_front();
      q_.push_back(std::move(t));
    }
    cv_.notify_all();
  }
  void drain() {
    std::unique_lock<std::mutex> lk(mu_);
    idle_.wait(lk, [&] { return q_.empty() && !busy_; });
  }

 private:
  static constexpr size_t kMaxQueued = 256;
  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;  // stopping
      std::function<void()> t = std::move(q_.front());
      q_.pop_front();
      busy_ = true;
      lk.unlock();
      t();
      t = nullptr;  // releases the grammar outside the lock
      lk.lock();
      busy_ = false;
      if (q_.empty()) idle_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<std::function<void()>> q_;
  bool stop_ = false, busy_ = false;
  std::thread thread_;
};

Worker& worker() {
  static Worker w;
  return w;
}

}  // namespace

bool mask_prefetch_enabled() { return enabled().load(std::memory_order_relaxed); }
void set_mask_prefetch(bool on) { enabled().store(on, std::memory_order_relaxed); }
void mask_worker_submit(std::function<void()> task) { worker().submit(std::move(task)); }
void mask_worker_drain() {
  if (mask_prefetch_enabled()) worker().drain();
}

}  // namespace dsv4::grammar
