// CPU-backend-only helpers beyond the Backend interface (tests and debugging).
#pragma once
#include <functional>

#include "kernels/backend.h"

namespace dsv4 {

// Runs fn as if it were part of a backend call of `be` (a CPU backend): in guard mode
// (DSV4_GUARD_BACKEND_MEMORY=1) every buffer of `be` is accessible while fn runs. Lets tests and debugging code
// look at backend memory on purpose; graph code must use download() instead.
void cpu_backend_with_access(Backend& be, const std::function<void()>& fn);
// Whether `be` is a CPU backend running in guard mode.
bool cpu_backend_guarded(const Backend& be);
// Which de-quantization path this build compiled: "avx2-f16c", "neon" or "scalar" (tests check it is the one the
// target architecture should get, so a lost -march flag cannot silently fall back to scalar code).
const char* cpu_dequant_simd_path();

}  // namespace dsv4
