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
    if (fatal_) fail("the engine is down: {}", *fatal_);
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

std::optional<std::string> EngineLoop::fatal_error() const {
  auto lk = lock_as_caller();
  return fatal_;
}

void EngineLoop::on_fatal(std::function<void(const std::string&)> fn) {
  auto lk = lock_as_caller();
  on_fatal_ = std::move(fn);
}

void EngineLoop::fail_all(const std::string& error, std::vector<RequestOutput>& outs) {
  for (auto& [id, w] : streams_) engine_->abort(id);
  outs = engine_->step();
  for (auto& o : outs) {
    o.finish = FinishReason::Error;
    o.error = error;
  }
}

EngineStats EngineLoop::stats() const {
  auto lk = lock_as_caller();
  return engine_->stats();
}

void EngineLoop::run() {
  std::unique_lock lk(mu_);
  // Multi-rank: while idle, prove the other ranks alive at a third of the timeout (they give up on rank 0
  // after one timeout without a message).
  const bool dist = engine_->distributed();
  const auto beat = engine_->runner().options().dist.timeout / 3;
  auto ready = [&] { return stop_ || (!fatal_ && (engine_->has_work() || !to_abort_.empty())); };
  while (true) {
    if (dist && !fatal_) {
      if (!cv_.wait_for(lk, beat, ready)) {
        std::string error;
        lk.unlock();
        try {
          engine_->heartbeat();
        } catch (const dist::PeerError& e) {
          error = e.what();
        }
        lk.lock();
        if (!error.empty()) {
          spdlog::error("{}", error);
          fatal_ = error;
          if (on_fatal_) on_fatal_(error);
        }
        continue;
      }
    } else {
      cv_.wait(lk, ready);
    }
    if (stop_) break;
    for (uint64_t id : to_abort_) engine_->abort(id);
    to_abort_.clear();
    std::vector<RequestOutput> outs;
    std::string error;
    bool peer_failed = false;
    StepPlan plan = engine_->schedule();
    // The model computes without the lock: submits, aborts (queued for the next step) and stats go on.
    lk.unlock();
    StepResult result;
    try {
      result = engine_->execute(plan);
    } catch (const dist::PeerError& e) {
      error = e.what();
      peer_failed = true;
    } catch (const std::exception& e) {
      error = e.what();
    }
    lk.lock();
    if (error.empty()) {
      outs = engine_->complete(result);
    } else {
      // A failed step must not take the server down: fail every request in flight. A failed group cannot
      // compute again: the engine stays down.
      spdlog::error("engine step failed: {}", error);
      engine_->discard_step();
      fail_all(error, outs);
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
    if (peer_failed) {
      fatal_ = error;
      if (on_fatal_) on_fatal_(error);
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
