// Rounding simulations of the official reference ("reference" numerics, spec §2 and §4.6). Plain scalar
// code: these are also the reference path that optimized kernels are tested against.
#pragma once
#include <cstdint>

namespace dsv4 {

// FP8 e4m3 round trip in blocks of `block` values: s = 2^ceil(log2(max(amax, 1e-4) / 448)),
// x <- e4m3(clamp(x / s, +-448)) * s. Used with block 128 for linear inputs and 64 for KV nope dims.
void fp8_roundtrip(float* x, int64_t n, int64_t block);
// FP4 e2m1 round trip in blocks of 32: s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)).
void fp4_roundtrip(float* x, int64_t n, int64_t block);
// Normalized Walsh-Hadamard transform (Sylvester order, factor 1/sqrt(n)); n a power of two.
void hadamard(float* x, int64_t n);
void round_bf16(float* x, int64_t n);

}  // namespace dsv4
