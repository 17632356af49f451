// Runs an Engine on a background thread and hands each request's outputs to whoever waits on them (HTTP
// handler threads). Thread-safe.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "runtime/engine.h"

namespace dsv4 {

class RequestStream {
 public:
  uint64_t id() const { return id_; }
  // Next output, waiting up to `timeout`; nullopt on timeout. After a finished output, returns nullopt.
  std::optional<RequestOutput> next(std::chrono::milliseconds timeout);

 private:
  friend class EngineLoop;
  uint64_t id_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> q_;
  bool done_ = false;
};

class EngineLoop {
 public:
  explicit EngineLoop(std::unique_ptr<Engine> engine);
  ~EngineLoop();  // stops the thread, aborts what is left

  // Throws dsv4::Error (validation) like Engine::add_request.
  std::shared_ptr<RequestStream> submit(std::vector<int32_t> prompt, SamplingParams params);
  void abort(uint64_t id);  // safe to call for finished ids
  EngineStats stats() const;
  const Engine& engine() const { return *engine_; }
  // Multi-rank: set once the tensor-parallel group failed (a peer died, hung or was cut off). Every request
  // in flight was finished with this error; new submits throw it. The process should exit non-zero.
  std::optional<std::string> fatal_error() const;
  // Called once, on the loop's thread, when fatal_error() becomes set.
  void on_fatal(std::function<void(const std::string&)> fn);

 private:
  void run();
  void fail_all(const std::string& error, std::vector<RequestOutput>& outs);
  std::unique_ptr<Engine> engine_;
  std::optional<std::string> fatal_;
  std::function<void(const std::string&)> on_fatal_;
  // Guards the engine's scheduling state and the maps. The loop releases it while the model computes
  // (Engine::execute), so submits, aborts (queued for the next step) and stats never wait for a forward pass.
  mutable std::mutex mu_;
  // Callers announce themselves before locking; the loop lets them through between steps (std::mutex is
  // not fair, so without this a busy loop could starve submit/abort).
  mutable std::atomic<int> pending_{0};
  std::unique_lock<std::mutex> lock_as_caller() const;
  std::condition_variable cv_;
  std::map<uint64_t, std::weak_ptr<RequestStream>> streams_;
  std::vector<uint64_t> to_abort_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace dsv4
