// Rendezvous (join checks over the TCP store) and the Gloo TCP mesh: the control group of every deployment and
// the data plane of the CPU backend.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/transport/tcp/device.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <cstring>

#include "dist/dist_internal.h"
#include "dist/tcp_store.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/timing_backend.h"

namespace dsv4::dist {

namespace {

using Json = nlohmann::json;
using ms = std::chrono::milliseconds;

// This host's address on the route to the master: the interface the other ranks can reach us on.
std::string local_address_towards(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0)
    fail("rendezvous: cannot resolve --master-addr '{}'", host);
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in me{};
  socklen_t len = sizeof me;
  const bool ok = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&me), &len) == 0;
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(res);
  if (!ok) fail("rendezvous: no route from this host to --master-addr {}", host);
  char buf[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &me.sin_addr, buf, sizeof buf);
  return buf;
}

std::vector<char> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
std::string string_of(const std::vector<char>& v) { return {v.begin(), v.end()}; }

class GlooControlGroup final : public GlooGroup {
 public:
  GlooControlGroup(std::shared_ptr<gloo::Context> ctx, ms timeout) { ctx_ = std::move(ctx), timeout_ = timeout; }
  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }

  void broadcast(std::string& bytes, int root, ms timeout) override {
    guarded("a step-plan broadcast", [&] {
      uint64_t n = bytes.size();
      gloo::BroadcastOptions o1(ctx_);
      o1.setOutput(&n, 1);
      o1.setRoot(root);
      o1.setTimeout(timeout);
      gloo::broadcast(o1);
      if (rank() != root) bytes.resize(size_t(n));
      if (!n) return;
      gloo::BroadcastOptions o2(ctx_);
      o2.setOutput(reinterpret_cast<uint8_t*>(bytes.data()), size_t(n));
      o2.setRoot(root);
      o2.setTimeout(timeout);
      gloo::broadcast(o2);
    });
  }
  int64_t all_reduce_min(int64_t v) override {
    guarded("an all-reduce (min)", [&] {
      gloo::AllreduceOptions o(ctx_);
      o.setOutput(&v, 1);
      o.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::min<int64_t>));
      o.setTimeout(timeout_);
      gloo::allreduce(o);
    });
    return v;
  }
  void barrier(ms timeout) override {
    guarded("a barrier", [&] {
      gloo::BarrierOptions o(ctx_);
      o.setTimeout(timeout);
      gloo::barrier(o);
    });
  }
  ControlGroup* tensor_group() override { return alone_ ? nullptr : sub_ ? sub_.get() : this; }

  std::unique_ptr<GlooControlGroup> sub_;  // this rank's tensor-parallel group, when smaller than this one
  bool alone_ = false;                     // that group is this rank alone
};

// Point-to-point messages use one slot of their own, far above the collectives' (Context::nextSlot counts up
// from 0), so the two never match each other's messages.
constexpr uint64_t kP2pSlot = uint64_t(1) << 48;

// A transfer through host staging bytes: the tensor is read (send) or written (recv) only inside a backend
// call scope, never by Gloo's I/O thread, so the CPU backend's guard mode holds.
class GlooPending final : public Communicator::Pending {
 public:
  GlooPending(GlooGroup& g, Backend& be, const Tensor& t, int peer, bool send)
      : g_(g), be_(be), t_(t), peer_(peer), send_(send), bytes_(size_t(t.nbytes())) {
    DSV4_CHECK(peer >= 0 && peer < g.size() && peer != g.rank(), "{}: peer {} is not another rank of {}",
               send ? "send" : "recv", peer, g.size());
    if (send)
      cpu_backend_with_access(be_, [&] { std::memcpy(bytes_.data(), t.buf->base() + t.offset, bytes_.size()); });
    g_.guarded(send ? "a pipeline send" : "a pipeline recv", [&] {
      buf_ = g_.ctx()->createUnboundBuffer(bytes_.data(), bytes_.size());
      if (send) buf_->send(peer, kP2pSlot);
      else buf_->recv(peer, kP2pSlot);
    });
  }
  ~GlooPending() override {
    // Abandoned (the step failed; the group is dead from here on): Gloo may still complete the posted transfer
    // into these bytes, so they and the buffer are left allocated rather than freed under it.
    if (!done_ && buf_) {
      (void)buf_.release();
      static_cast<void>(new std::vector<uint8_t>(std::move(bytes_)));
    }
  }
  void wait() override {
    if (done_) return;
    g_.guarded(send_ ? "a pipeline send" : "a pipeline recv", [&] {
      const bool ok = send_ ? buf_->waitSend(g_.timeout()) : buf_->waitRecv(g_.timeout());
      if (!ok) throw PeerError(fmt::format("pipeline {} with rank {} was aborted", send_ ? "send" : "recv", peer_));
    });
    done_ = true;
    if (!send_)
      cpu_backend_with_access(be_, [&] { std::memcpy(t_.buf->base() + t_.offset, bytes_.data(), bytes_.size()); });
  }

 private:
  GlooGroup& g_;
  Backend& be_;
  Tensor t_;
  int peer_;
  bool send_, done_ = false;
  std::vector<uint8_t> bytes_;
  std::unique_ptr<gloo::transport::UnboundBuffer> buf_;
};

// The CPU backend's data plane: Gloo on the tensors' host memory (the backend's own call scope, so guard
// mode allows it).
class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(GlooGroup& g, Backend& be) : g_(g), be_(be) {}
  int rank() const override { return g_.rank(); }
  int size() const override { return g_.size(); }
  std::string name() const override { return "gloo"; }
  void all_reduce_sum(const Tensor& x) override {
    DSV4_CHECK(x.dtype == DType::F32, "all_reduce_sum: f32 tensors only");
    ++calls_, bytes_ += uint64_t(x.nbytes());
    cpu_backend_with_access(be_, [&] {
      g_.guarded("an all-reduce in the forward pass", [&] {
        gloo::AllreduceOptions o(g_.ctx());
        o.setOutput(reinterpret_cast<float*>(x.buf->base() + x.offset), size_t(x.numel()));
        o.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
        o.setTimeout(g_.timeout());
        gloo::allreduce(o);
      });
    });
  }
  void all_gather(const Tensor& in, const Tensor& out) override {
    DSV4_CHECK(out.nbytes() == in.nbytes() * size() && in.dtype == out.dtype, "all_gather: out holds size() x in");
    ++calls_, bytes_ += uint64_t(in.nbytes());
    cpu_backend_with_access(be_, [&] {
      g_.guarded("an all-gather in the forward pass", [&] {
        gloo::AllgatherOptions o(g_.ctx());
        o.setInput(in.buf->base() + in.offset, size_t(in.nbytes()));
        o.setOutput(out.buf->base() + out.offset, size_t(out.nbytes()));
        o.setTimeout(g_.timeout());
        gloo::allgather(o);
      });
    });
  }
  std::unique_ptr<Pending> isend(const Tensor& t, int peer) override {
    ++calls_, bytes_ += uint64_t(t.nbytes());
    return std::make_unique<GlooPending>(g_, be_, t, peer, true);
  }
  std::unique_ptr<Pending> irecv(const Tensor& t, int peer) override {
    ++calls_;
    return std::make_unique<GlooPending>(g_, be_, t, peer, false);
  }

 private:
  GlooGroup& g_;
  Backend& be_;
};

}  // namespace

void GlooGroup::guarded(const char* what, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const gloo::Exception& e) {
    throw PeerError(fmt::format("tensor-parallel group failed in {} (rank {} of {}): {}", what, rank(), size(),
                                e.what()));
  } catch (const gloo::EnforceNotMet& e) {
    throw PeerError(fmt::format("tensor-parallel group failed in {} (rank {} of {}): {}", what, rank(), size(),
                                e.what()));
  }
}

std::unique_ptr<ControlGroup> join(const DistConfig& cfg, const std::vector<IdentityItem>& identity,
                                   std::string& head_payload) {
  DSV4_CHECK(cfg.world_size >= 2, "join: a group needs at least two ranks");
  DSV4_CHECK(cfg.rank >= 0 && cfg.rank < cfg.world_size, "--node-rank/--rank {} is outside a group of {} ranks",
             cfg.rank, cfg.world_size);
  std::unique_ptr<TcpStoreServer> server;
  if (cfg.rank == 0) server = std::make_unique<TcpStoreServer>(cfg.master_port);
  auto store = std::make_shared<TcpStore>(cfg.rank == 0 ? "127.0.0.1" : cfg.master_addr, cfg.master_port,
                                          cfg.join_timeout);
  Json me = {{"world_size", cfg.world_size}, {"identity", Json::array()}};
  for (auto& it : identity) me["identity"].push_back({it.what, it.value});
  store->set(fmt::format("join/{}", cfg.rank), bytes_of(me.dump()));

  std::string verdict;
  if (cfg.rank == 0) {
    std::vector<std::string> keys;
    for (int r = 1; r < cfg.world_size; ++r) keys.push_back(fmt::format("join/{}", r));
    const auto missing = store->wait_for(keys, cfg.join_timeout);
    if (!missing.empty()) {
      std::string who;
      for (auto& k : missing) who += (who.empty() ? "" : ", ") + k.substr(5);
      verdict = fmt::format("rank(s) {} did not join within {} s: start them (each node: dsv4 serve ... "
                            "--node-rank R --headless) with --master-addr pointing at this host, port {}",
                            who, cfg.join_timeout.count() / 1000, cfg.master_port);
    }
    for (int r = 1; r < cfg.world_size && verdict.empty(); ++r) {
      const Json other = Json::parse(string_of(store->get(fmt::format("join/{}", r))));
      if (other.value("world_size", 0) != cfg.world_size) {
        verdict = fmt::format("rank {} was started for {} ranks, rank 0 for {}: give every node the same "
                              "--tensor-parallel-size and --nnodes",
                              r, other.value("world_size", 0), cfg.world_size);
        break;
      }
      const Json& ids = other.at("identity");
      for (size_t i = 0; i < identity.size() && verdict.empty(); ++i) {
        const std::string theirs = i < ids.size() ? ids[i].at(1).get<std::string>() : "<none>";
        if (theirs != identity[i].value)
          verdict = fmt::format("rank {} has a different {} ({}) than rank 0 ({}): every node must run the same "
                                "dsv4 with the same checkpoint",
                                r, identity[i].what, theirs, identity[i].value);
      }
    }
    store->set("verdict", bytes_of(verdict.empty() ? "ok" : verdict));
    store->set("payload", bytes_of(head_payload));
  }
  const auto v = store->wait_for({"verdict"}, cfg.join_timeout);
  if (!v.empty()) fail("rendezvous: rank 0 gave no verdict within {} s", cfg.join_timeout.count() / 1000);
  verdict = string_of(store->get("verdict"));
  if (cfg.rank != 0) {
    head_payload = string_of(store->get("payload"));
    store->set(fmt::format("seen/{}", cfg.rank), {'1'});
  } else if (verdict != "ok") {
    // Let the others read the verdict before the store goes away.
    std::vector<std::string> seen;
    for (int r = 1; r < cfg.world_size; ++r) seen.push_back(fmt::format("seen/{}", r));
    store->wait_for(seen, ms(3000));
  }
  if (verdict != "ok") throw PeerError("cannot form the tensor-parallel group: " + verdict);

  gloo::transport::tcp::attr attr;
  const char* ifname = std::getenv("DSV4_SOCKET_IFNAME");
  if (!ifname || !*ifname) ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname && *ifname) attr.iface = ifname;
  else attr.hostname = cfg.rank == 0 && cfg.master_addr == "127.0.0.1" ? "127.0.0.1"
                                                                       : local_address_towards(cfg.master_addr, cfg.master_port);
  std::shared_ptr<gloo::transport::Device> dev;
  try {
    dev = gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    fail("rendezvous: cannot open the Gloo TCP device ({}): {}", attr.iface.empty() ? attr.hostname : attr.iface,
         e.what());
  }
  auto ctx = std::make_shared<gloo::rendezvous::Context>(cfg.rank, cfg.world_size);
  ctx->setTimeout(cfg.join_timeout);
  gloo::rendezvous::PrefixStore prefixed("gloo", *store);
  try {
    ctx->connectFullMesh(prefixed, dev);
  } catch (const std::exception& e) {
    throw PeerError(fmt::format("cannot connect the tensor-parallel mesh (rank {} on {}): {}", cfg.rank,
                                dev->str(), e.what()));
  }
  auto group = std::make_unique<GlooControlGroup>(ctx, cfg.timeout);
  const int gs = cfg.group_size ? cfg.group_size : cfg.world_size;
  DSV4_CHECK(gs >= 1 && cfg.world_size % gs == 0, "{} ranks do not split into tensor-parallel groups of {}",
             cfg.world_size, gs);
  group->alone_ = gs == 1;
  if (gs > 1 && gs < cfg.world_size) {
    // The tensor-parallel group's own mesh (its collectives must not count slots on the ranks outside it).
    const int k = cfg.rank / gs;
    auto sub = std::make_shared<gloo::rendezvous::Context>(cfg.rank % gs, gs);
    sub->setTimeout(cfg.join_timeout);
    gloo::rendezvous::PrefixStore sub_prefixed(fmt::format("gloo-tp{}", k), *store);
    try {
      sub->connectFullMesh(sub_prefixed, dev);
    } catch (const std::exception& e) {
      throw PeerError(fmt::format("cannot connect tensor-parallel group {} (rank {} on {}): {}", k, cfg.rank,
                                  dev->str(), e.what()));
    }
    group->sub_ = std::make_unique<GlooControlGroup>(sub, cfg.timeout);
  }
  // Nobody leaves (and rank 0 closes the store) before every rank is connected.
  group->barrier(cfg.join_timeout);
  spdlog::info("parallel group: rank {} of {} connected ({}; tensor-parallel groups of {})", cfg.rank,
               cfg.world_size, dev->str(), gs);
  return group;
}

std::unique_ptr<Communicator> make_communicator(ControlGroup& control, Backend& be) {
  Backend* inner = &be;
  if (auto* t = dynamic_cast<TimingBackend*>(inner)) inner = &t->inner();
  if (inner->name() == "cpu") return std::make_unique<GlooCommunicator>(dynamic_cast<GlooGroup&>(control), *inner);
  return make_nccl_communicator(control, *inner);
}

}  // namespace dsv4::dist
