#include "runtime/engine_loop.h"

#include <spdlog/spdlog.h>

#include "core/error.h"

namespace dsv4 {

std::optional<RequestOutput> RequestStream::next(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return !q_.empty() || done_; })) return std::nullopt;
  if (q_.empty()) return std::nullopt;
  RequestOutput o = std::move(q_.front());
  q_.pop_front();
  return o;
}

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::unique_lock<std::mutex> EngineLoop::lock_as_caller() const {
  ++pending_;
  std::unique_lock lk(mu_);
  --pending_;
  return lk;
}

std::shared_ptr<RequestStream> EngineLoop::submit(std::vector<int32_t> prompt, SamplingParams params) {
  auto s = std::make_shared<RequestStream>();
  {
    auto lk = lock_as_caller();
    s->id_ = engine_->add_request(std::move(prompt), std::move(params));  // throws on invalid input
    streams_[s->id_] = s;
  }
  cv_.notify_all();
  return s;
}

void EngineLoop::abort(uint64_t id) {
  {
    auto lk = lock_as_caller();
    to_abort_.push_back(id);
  }
  cv_.notify_all();
}

EngineStats EngineLoop::stats() const {
  auto lk = lock_as_caller();
  return engine_->stats();
}

void EngineLoop::run() {
  std::unique_lock lk(mu_);
  while (true) {
    cv_.wait(lk, [&] { return stop_ || engine_->has_work() || !to_abort_.empty(); });
    if (stop_) break;
    for (uint64_t id : to_abort_) engine_->abort(id);
    to_abort_.clear();
    std::vector<RequestOutput> outs;
    std::string error;
    StepPlan plan = engine_->schedule();
    // The model computes without the lock: submits, aborts (queued for the next step) and stats go on.
    lk.unlock();
    StepResult result;
    try {
      result = engine_->execute(plan);
    } catch (const std::exception& e) {
      error = e.what();
    }
    lk.lock();
    if (error.empty()) {
      outs = engine_->complete(result);
    } else {
      // A failed step must not take the server down: fail every request in flight.
      spdlog::error("engine step failed: {}", error);
      engine_->discard_step();
      for (auto& [id, w] : streams_) engine_->abort(id);
      outs = engine_->step();
      for (auto& o : outs) {
        o.finish = FinishReason::Error;
        o.error = error;
      }
    }
    for (auto& o : outs) {
      auto it = streams_.find(o.id);
      if (it == streams_.end()) continue;
      auto s = it->second.lock();
      const bool done = o.finished();
      if (s) {
        std::lock_guard sl(s->mu_);
        s->q_.push_back(std::move(o));
        if (done) s->done_ = true;
        s->cv_.notify_all();
      } else if (!done) {
        to_abort_.push_back(o.id);  // nobody listens any more
      }
      if (done) streams_.erase(it);
    }
    if (pending_.load() > 0) {
      lk.unlock();
      while (pending_.load() > 0) std::this_thread::yield();
      lk.lock();
    }
  }
  for (auto& [id, w] : streams_) engine_->abort(id);
}

}  // namespace dsv4
