// NCCL data plane for the CUDA backend: collectives are enqueued on the backend's own stream, so they order
// with the ops around them and never synchronize the host. Transport is NCCL's choice, steered by the usual
// NCCL_* variables (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_IB_GID_INDEX; docs/deploy.md says how to find them).
// A dead peer makes NCCL kernels wait forever, so abort() (called by the runner's step watchdog after
// --distributed-timeout) aborts the communicator, which ends them with an error instead of a hang.
#include "dist/dist_internal.h"

#ifdef DSV4_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>

#include "kernels/cuda/cuda_kernels.h"

namespace dsv4::dist {

namespace {

#define DSV4_NCCL_CHECK(call, what)                                                                   \
  do {                                                                                                \
    const ncclResult_t r_ = (call);                                                                   \
    if (r_ != ncclSuccess) throw PeerError(fmt::format("NCCL {} failed: {}", what, ncclGetErrorString(r_))); \
  } while (0)

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ControlGroup& control, Backend& be) : rank_(control.rank()), size_(control.size()) {
    const cuda::Launch L = cuda::launch_of(be);
    stream_ = L.stream;
    ncclUniqueId id{};
    std::string bytes;
    if (rank_ == 0) {
      DSV4_NCCL_CHECK(ncclGetUniqueId(&id), "ncclGetUniqueId");
      bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
    }
    control.broadcast(bytes, 0, control.timeout());
    DSV4_CHECK(bytes.size() == sizeof id, "NCCL: malformed unique id from rank 0");
    std::memcpy(&id, bytes.data(), sizeof id);
    if (cudaSetDevice(L.device) != cudaSuccess) fail("NCCL: cannot select CUDA device {}", L.device);
    DSV4_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    if (comm_ && !aborted_) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }
  void all_reduce_sum(const Tensor& x) override {
    DSV4_CHECK(x.dtype == DType::F32, "all_reduce_sum: f32 tensors only");
    ++calls_, bytes_ += uint64_t(x.nbytes());
    float* p = reinterpret_cast<float*>(x.buf->base() + x.offset);
    DSV4_NCCL_CHECK(ncclAllReduce(p, p, size_t(x.numel()), ncclFloat32, ncclSum, comm_, stream_), "all-reduce");
  }
  void all_gather(const Tensor& in, const Tensor& out) override {
    DSV4_CHECK(out.nbytes() == in.nbytes() * size_ && in.dtype == out.dtype, "all_gather: out holds size() x in");
    ++calls_, bytes_ += uint64_t(in.nbytes());
    DSV4_NCCL_CHECK(ncclAllGather(in.buf->base() + in.offset, out.buf->base() + out.offset, size_t(in.nbytes()),
                                  ncclUint8, comm_, stream_),
                    "all-gather");
  }
  // Stream-ordered like the collectives: the transfer runs when the stream reaches it, so wait() has nothing to
  // do on the host (the op after it on the stream sees the bytes). NCCL pairs a send with the peer's recv in
  // posting order; a send blocks the stream until the peer's matching recv is posted on its stream.
  std::unique_ptr<Pending> isend(const Tensor& t, int peer) override {
    check_peer(peer, "send");
    ++calls_, bytes_ += uint64_t(t.nbytes());
    DSV4_NCCL_CHECK(ncclSend(t.buf->base() + t.offset, size_t(t.nbytes()), ncclUint8, peer, comm_, stream_), "send");
    return std::make_unique<Ordered>();
  }
  std::unique_ptr<Pending> irecv(const Tensor& t, int peer) override {
    check_peer(peer, "recv");
    ++calls_;
    DSV4_NCCL_CHECK(ncclRecv(t.buf->base() + t.offset, size_t(t.nbytes()), ncclUint8, peer, comm_, stream_), "recv");
    return std::make_unique<Ordered>();
  }
  void abort() override {
    if (comm_ && !aborted_.exchange(true)) ncclCommAbort(comm_);
  }

 private:
  struct Ordered final : Pending {
    void wait() override {}
  };
  void check_peer(int peer, const char* what) const {
    DSV4_CHECK(peer >= 0 && peer < size_ && peer != rank_, "{}: peer {} is not another rank of {}", what, peer, size_);
  }
  int rank_, size_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false};
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(ControlGroup& control, Backend& be) {
  return std::make_unique<NcclCommunicator>(control, be);
}

}  // namespace dsv4::dist

#else

namespace dsv4::dist {
std::unique_ptr<Communicator> make_nccl_communicator(ControlGroup&, Backend& be) {
  fail("no data-plane communicator for backend {}: dsv4 was built without CUDA/NCCL", be.name());
}
}  // namespace dsv4::dist

#endif
