// Backend selection, and the definitions every build has whatever backends are compiled in.
#include <algorithm>

#include "core/log.h"
#include "kernels/backend.h"

namespace dsv4 {

// One size for every backend's moe: the CPU backend uses max(M * K, M) rows each of gathered input [D], gate and
// up [inter], and expert output [D] (fp32). A backend that needs more raises it here.
int64_t moe_scratch_bytes(int64_t M, int64_t K, int64_t D, int64_t inter) {
  const int64_t rows = std::max<int64_t>(M * K, M);
  return 4 * rows * (2 * inter + 2 * D);
}

#ifndef DSV4_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device, std::string* why) {
  if (why) *why = "dsv4 was built without CUDA";
  return nullptr;
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& device, int cuda_device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda" || device == "auto") {
    std::string why;
    auto be = make_cuda_backend(cuda_device, &why);
    if (be) return be;
    DSV4_CHECK(device == "auto", "cannot use the CUDA backend: {}", why);
    spdlog::info("no CUDA backend ({}); using the CPU", why);
    return make_cpu_backend();
  }
  fail("unknown device '{}' (cpu, cuda or auto)", device);
}

}  // namespace dsv4
