// The dist layer in one process: ranks are threads joined through the real TCP store and Gloo mesh on
// loopback. Join checks, collectives on CPU-backend tensors, and failure detection.
#include <gtest/gtest.h>

#include "free_port.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "dist/communicator.h"
#include "dist/tcp_store.h"
#include "dist/watchdog.h"

using namespace dsv4;
using namespace dsv4::dist;
using namespace std::chrono_literals;

namespace {

DistConfig cfg(int rank, int n, int port, std::chrono::milliseconds timeout = 5000ms) {
  DistConfig c;
  c.world_size = n;
  c.rank = rank;
  c.master_port = port;
  c.timeout = timeout;
  c.join_timeout = 10000ms;
  c.load_timeout = 10000ms;
  return c;
}

std::vector<IdentityItem> id(const std::string& ckpt) { return {{"dsv4 version", "v"}, {"checkpoint", ckpt}}; }

// Runs fn(rank) on n threads; returns each rank's error message ("" when none).
std::vector<std::string> on_ranks(int n, const std::function<void(int)>& fn) {
  std::vector<std::string> err(static_cast<size_t>(n), std::string());
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r)
    ts.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const std::exception& e) {
        err[size_t(r)] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  return err;
}

}  // namespace

TEST(Rendezvous, HeadPayloadReachesEveryRank) {
  const int port = free_port();
  std::vector<std::string> got(3);
  auto err = on_ranks(3, [&](int r) {
    std::string payload = r == 0 ? "options from rank 0" : "";
    auto g = join(cfg(r, 3, port), id("same"), payload);
    got[size_t(r)] = payload;
    EXPECT_EQ(g->rank(), r);
    EXPECT_EQ(g->size(), 3);
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(err[size_t(r)], "") << r;
    EXPECT_EQ(got[size_t(r)], "options from rank 0") << r;
  }
}

TEST(Rendezvous, ADifferentCheckpointIsRefusedOnEveryRankNamingIt) {
  const int port = free_port();
  auto err = on_ranks(2, [&](int r) {
    std::string payload;
    join(cfg(r, 2, port), id(r == 0 ? "ckpt-A" : "ckpt-B"), payload);
  });
  for (auto& e : err) {
    EXPECT_NE(e.find("rank 1 has a different checkpoint (ckpt-B) than rank 0 (ckpt-A)"), std::string::npos) << e;
  }
}

TEST(Rendezvous, AWrongRankCountIsRefused) {
  const int port = free_port();
  auto err = on_ranks(2, [&](int r) {
    std::string payload;
    DistConfig c = cfg(r, 2, port);
    if (r == 1) c.world_size = 3;
    join(c, id("x"), payload);
  });
  EXPECT_NE(err[0].find("rank 1 was started for 3 ranks, rank 0 for 2"), std::string::npos) << err[0];
  EXPECT_NE(err[1].find("rank 1 was started for 3 ranks"), std::string::npos) << err[1];
}

TEST(Rendezvous, ARankThatNeverArrivesIsNamedAfterTheTimeout) {
  const int port = free_port();
  DistConfig c = cfg(0, 3, port);
  c.join_timeout = 1500ms;
  auto err = on_ranks(2, [&](int r) {  // rank 2 never starts
    std::string payload;
    DistConfig me = c;
    me.rank = r;
    join(me, id("x"), payload);
  });
  EXPECT_NE(err[0].find("rank(s) 2 did not join within 1 s"), std::string::npos) << err[0];
}

TEST(Rendezvous, MasterUnreachableAndPortInUseSayWhat) {
  const int port = free_port();
  DistConfig c = cfg(1, 2, port);
  c.join_timeout = 800ms;
  std::string payload;
  try {
    join(c, id("x"), payload);
    FAIL() << "joined without a master";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach the master at 127.0.0.1:" + std::to_string(port)),
              std::string::npos)
        << e.what();
  }
  TcpStoreServer holder(port);
  try {
    TcpStoreServer second(port);
    FAIL() << "bound a port in use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--master-port " + std::to_string(port) + " is in use"), std::string::npos)
        << e.what();
  }
}

TEST(GlooCommunicator, AllReduceAndAllGatherOnCpuTensors) {
  const int port = free_port();
  constexpr int N = 3, n = 1000;
  std::vector<std::vector<float>> reduced(N), gathered(N);
  auto err = on_ranks(N, [&](int r) {
    std::string payload;
    auto g = join(cfg(r, N, port), id("x"), payload);
    auto be = make_cpu_backend();
    auto comm = make_communicator(*g, *be);
    auto buf = be->alloc(size_t(n + N * n) * 4, BufferUsage::Workspace);
    Tensor x(buf.get(), 0, DType::F32, {n}), all(buf.get(), n * 4, DType::F32, {N * n});
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) v[size_t(i)] = float(r + 1) * float(i);
    be->upload(x, v.data(), v.size() * 4);
    comm->all_gather(x, all);
    comm->all_reduce_sum(x);
    reduced[size_t(r)].resize(n);
    gathered[size_t(r)].resize(size_t(N * n));
    be->download(reduced[size_t(r)].data(), x, size_t(n) * 4);
    be->download(gathered[size_t(r)].data(), all, size_t(N * n) * 4);
    EXPECT_EQ(comm->calls(), 2u);
    g->barrier(5000ms);
  });
  for (int r = 0; r < N; ++r) {
    ASSERT_EQ(err[size_t(r)], "");
    for (int i = 0; i < n; ++i) {
      EXPECT_EQ(reduced[size_t(r)][size_t(i)], float(1 + 2 + 3) * float(i));
      for (int k = 0; k < N; ++k) EXPECT_EQ(gathered[size_t(r)][size_t(k * n + i)], float(k + 1) * float(i));
    }
  }
}

TEST(GlooCommunicator, SendRecvAlongAPipelineOfTensorParallelGroups) {
  // 4 ranks as 2 stages x 2 tensor-parallel ranks: each group all-reduces on its own mesh, then tp rank t of
  // stage 0 sends to tp rank t of stage 1 (two messages in flight, matched in order), which answers rank 0.
  const int port = free_port();
  constexpr int N = 4, n = 257;
  std::vector<std::vector<float>> got(N);
  std::vector<float> back;
  auto err = on_ranks(N, [&](int r) {
    std::string payload;
    DistConfig c = cfg(r, N, port);
    c.group_size = 2;
    auto g = join(c, id("x"), payload);
    ASSERT_NE(g->tensor_group(), nullptr);
    EXPECT_EQ(g->tensor_group()->size(), 2);
    EXPECT_EQ(g->tensor_group()->rank(), r % 2);
    auto be = make_cpu_backend();
    auto world = make_communicator(*g, *be);
    auto tp = make_communicator(*g->tensor_group(), *be);
    auto buf = be->alloc(size_t(3 * n) * 4, BufferUsage::Workspace);
    Tensor x(buf.get(), 0, DType::F32, {n}), y(buf.get(), n * 4, DType::F32, {n});
    Tensor z(buf.get(), 2 * n * 4, DType::F32, {n});
    std::vector<float> v(n);
    for (int i = 0; i < n; ++i) v[size_t(i)] = float(r + 1) * float(i);
    be->upload(x, v.data(), v.size() * 4);
    tp->all_reduce_sum(x);  // stage 0: (1 + 2) i, stage 1: (3 + 4) i
    if (r < 2) {
      auto a = world->isend(x, r + 2);
      auto b = world->isend(x, r + 2);  // a second message before the first is received
      a->wait(), b->wait();
      if (r == 0) {
        world->recv(z, 2);
        back.resize(n);
        be->download(back.data(), z, size_t(n) * 4);
      }
    } else {
      world->recv(y, r - 2);
      world->recv(z, r - 2);
      std::vector<float> a(n), b(n);
      be->download(a.data(), y, size_t(n) * 4);
      be->download(b.data(), z, size_t(n) * 4);
      for (int i = 0; i < n; ++i) a[size_t(i)] += b[size_t(i)];
      be->upload(y, a.data(), a.size() * 4);
      if (r == 2) world->send(y, 0);
      got[size_t(r)] = a;
    }
    EXPECT_THROW(world->send(x, r), Error);  // not another rank
    g->barrier(5000ms);
  });
  for (int r = 0; r < N; ++r) ASSERT_EQ(err[size_t(r)], "") << r;
  for (int r = 2; r < N; ++r)
    for (int i = 0; i < n; ++i) EXPECT_EQ(got[size_t(r)][size_t(i)], 2 * 3.f * float(i)) << r;
  ASSERT_EQ(back.size(), size_t(n));
  for (int i = 0; i < n; ++i) EXPECT_EQ(back[size_t(i)], 6.f * float(i));
}

TEST(ControlGroup, BroadcastMinAndAPeerThatLeavesIsAPeerError) {
  const int port = free_port();
  std::atomic<bool> rank1_gone{false};
  auto err = on_ranks(2, [&](int r) {
    std::string payload;
    auto g = join(cfg(r, 2, port, 1500ms), id("x"), payload);
    std::string msg = r == 0 ? std::string(100000, 'p') : "";
    g->broadcast(msg, 0, 5000ms);
    EXPECT_EQ(msg, std::string(100000, 'p'));
    EXPECT_EQ(g->all_reduce_min(r == 0 ? 7 : 3), 3);
    if (r == 1) {
      g.reset();  // this rank leaves
      rank1_gone = true;
      return;
    }
    while (!rank1_gone) std::this_thread::sleep_for(10ms);
    const auto t0 = std::chrono::steady_clock::now();
    try {
      g->barrier(1500ms);
      ADD_FAILURE() << "a barrier with a departed peer returned";
    } catch (const PeerError& e) {
      EXPECT_NE(std::string(e.what()).find("tensor-parallel group failed in a barrier"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  });
  EXPECT_EQ(err[0], "");
  EXPECT_EQ(err[1], "");
}

namespace {
// A communicator whose collective blocks until abort(), as NCCL kernels do when a peer is gone.
class StuckCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string name() const override { return "stuck"; }
  void all_reduce_sum(const Tensor&) override {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return aborted_; });
    throw Error("collective ended by abort");
  }
  void all_gather(const Tensor&, const Tensor&) override {}
  std::unique_ptr<Pending> isend(const Tensor&, int) override { throw Error("no point-to-point"); }
  std::unique_ptr<Pending> irecv(const Tensor&, int) override { throw Error("no point-to-point"); }
  void abort() override {
    std::lock_guard l(mu_);
    aborted_ = true;
    cv_.notify_all();
  }
  bool aborted() {
    std::lock_guard l(mu_);
    return aborted_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool aborted_ = false;
};
}  // namespace

TEST(Watchdog, AbortsAStuckStepAndReportsAPeerError) {
  StuckCommunicator comm;
  Watchdog wd(comm, 300ms);
  int quick = 0;
  wd.run("a quick step", [&] { ++quick; });
  EXPECT_EQ(quick, 1);
  EXPECT_FALSE(comm.aborted());
  const auto t0 = std::chrono::steady_clock::now();
  try {
    wd.run("a forward pass", [&] { comm.all_reduce_sum(Tensor()); });
    FAIL() << "a stuck step returned";
  } catch (const PeerError& e) {
    EXPECT_NE(std::string(e.what()).find("a forward pass made no progress for 0 s"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(comm.aborted());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
}
