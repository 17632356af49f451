// Bounds a step that waits on device collectives: NCCL kernels wait forever for a dead peer and Gloo-style
// timeouts do not exist there, so when an armed step runs past the timeout the watchdog aborts the
// communicator (its pending kernels then end with an error) and the step's failure becomes a PeerError.
#pragma once
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "dist/communicator.h"

namespace dsv4::dist {

class Watchdog {
 public:
  Watchdog(Communicator& comm, std::chrono::milliseconds timeout);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Runs fn under the timeout; throws PeerError if the watchdog fired (whatever fn threw or returned).
  template <typename Fn>
  void run(const char* what, Fn&& fn) {
    arm();
    try {
      fn();
    } catch (...) {
      disarm();
      if (fired()) throw_fired(what);
      throw;
    }
    disarm();
    if (fired()) throw_fired(what);
  }
  bool fired() const;

 private:
  void arm();
  void disarm();
  [[noreturn]] void throw_fired(const char* what) const;
  void loop();
  Communicator& comm_;
  std::chrono::milliseconds timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false, fired_ = false, stop_ = false;
  std::chrono::steady_clock::time_point deadline_;
  std::thread thread_;
};

}  // namespace dsv4::dist
