// Ranks of one deployment and how they talk (src/dist sits above kernels, below model). The ranks form
// pipeline stages of tensor-parallel groups (vLLM's layout: rank = stage * tp + tp rank).
//   ControlGroup: host bytes over Gloo/TCP — step plans from rank 0, heartbeats, start-up agreement. Every
//                 deployment has one, whatever the compute backend (vLLM's "CPU group").
//   Communicator: the data plane inside the forward pass, on backend tensors: Gloo on the CPU backend (the
//                 same TCP mesh), NCCL on CUDA (stream-ordered on the backend's stream).
// Every collective is bounded by a timeout; a failed or timed-out collective throws PeerError, after which the
// group is unusable (the process reports and exits: there is no partial recovery of a TP group).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"

namespace dsv4::dist {

// A peer died, hung past the timeout, was partitioned away, or refused to join.
class PeerError : public Error {
 public:
  explicit PeerError(const std::string& msg) : Error(msg) {}
};

struct DistConfig {
  int world_size = 1, rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::chrono::milliseconds timeout{30000};        // collectives and heartbeats (--distributed-timeout)
  std::chrono::milliseconds join_timeout{180000};  // every rank must arrive within this
  std::chrono::milliseconds load_timeout{1800000}; // every rank must have placed its weights within this
  // Ranks per tensor-parallel group: consecutive ranks [k * group_size, (k + 1) * group_size) are group k (a
  // pipeline stage). 0: one group of every rank.
  int group_size = 0;
  bool active() const { return world_size > 1; }
};

// What must be equal on every rank for them to serve together; a mismatch names `what` and both values.
struct IdentityItem {
  std::string what, value;
};

class ControlGroup {
 public:
  virtual ~ControlGroup() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Root's bytes to every rank (receivers' `bytes` is replaced).
  virtual void broadcast(std::string& bytes, int root, std::chrono::milliseconds timeout) = 0;
  virtual int64_t all_reduce_min(int64_t v) = 0;
  virtual void barrier(std::chrono::milliseconds timeout) = 0;
  // This rank's tensor-parallel group (DistConfig::group_size): this group when it holds every rank, its own
  // mesh of group_size ranks otherwise, null when that is this rank alone.
  virtual ControlGroup* tensor_group() { return this; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 protected:
  std::chrono::milliseconds timeout_{30000};
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
  // x (f32, contiguous) = the sum of every rank's x, in place.
  virtual void all_reduce_sum(const Tensor& x) = 0;
  // out (size() * in.numel() elements of in's dtype) = every rank's `in`, concatenated in rank order.
  virtual void all_gather(const Tensor& in, const Tensor& out) = 0;
  // Point-to-point, between pipeline stages: t's bytes to / from rank `peer` of this communicator. isend and
  // irecv start the transfer and return a handle whose wait() finishes it (t must stay untouched until then;
  // a PeerError if the peer is gone or the timeout passes); send and recv wait at once. Messages between two
  // ranks are matched in the order they were posted, and each recv must be the size of its send.
  class Pending {
   public:
    virtual ~Pending() = default;
    virtual void wait() = 0;
  };
  virtual std::unique_ptr<Pending> isend(const Tensor& t, int peer) = 0;
  virtual std::unique_ptr<Pending> irecv(const Tensor& t, int peer) = 0;
  void send(const Tensor& t, int peer) { isend(t, peer)->wait(); }
  void recv(const Tensor& t, int peer) { irecv(t, peer)->wait(); }
  // Unblocks collectives pending on a failed peer (NCCL: ncclCommAbort); the communicator is dead afterwards.
  // Gloo needs none: its collectives time out by themselves. Safe from another thread.
  virtual void abort() {}
  uint64_t calls() const { return calls_; }
  uint64_t bytes() const { return bytes_; }

 protected:
  uint64_t calls_ = 0, bytes_ = 0;  // per-rank counts, for the docs' per-step figures and tests
};

// Joins the group: rank 0 serves the rendezvous store on master_port, every rank publishes its identity, rank 0
// checks them all (versions, rank counts, configs, checkpoints) and either releases the group with
// `head_payload` (rank 0's options, given to every rank) or fails every rank with a message naming the
// mismatch. Then the Gloo TCP mesh is connected over the interface that routes to the master (or the one named
// by DSV4_SOCKET_IFNAME / GLOO_SOCKET_IFNAME).
std::unique_ptr<ControlGroup> join(const DistConfig& cfg, const std::vector<IdentityItem>& identity,
                                   std::string& head_payload);

// The data-plane communicator for `be` (Gloo over `control`'s mesh for the CPU backend, NCCL for CUDA).
std::unique_ptr<Communicator> make_communicator(ControlGroup& control, Backend& be);

}  // namespace dsv4::dist
