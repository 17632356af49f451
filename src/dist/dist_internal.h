// Shared by the dist implementations (not for other layers).
#pragma once
#include <functional>
#include <memory>

#include "dist/communicator.h"

namespace gloo {
class Context;
}

namespace dsv4::dist {

// The Gloo-backed control group; the CPU data plane shares its mesh.
class GlooGroup : public ControlGroup {
 public:
  const std::shared_ptr<gloo::Context>& ctx() const { return ctx_; }
  // Runs fn; Gloo's exceptions (peer closed, timeout) become PeerError naming `what`.
  void guarded(const char* what, const std::function<void()>& fn);

 protected:
  std::shared_ptr<gloo::Context> ctx_;
};

// NCCL on the CUDA backend's stream; the unique id travels over `control`. Throws where dsv4 has no CUDA.
std::unique_ptr<Communicator> make_nccl_communicator(ControlGroup& control, Backend& cuda_backend);

}  // namespace dsv4::dist
