// safetensors writer (the reader is model/safetensors.h): one file, header keys sorted by name (nlohmann's
// object order), 8-byte aligned header padded with spaces, __metadata__ {"format": "pt"}. The data section is laid
// out as the official `safetensors` library does — by element size descending, then by name — so every tensor
// starts at an offset aligned to its element size. Deterministic: the same tensors give the same bytes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv4 {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // numel * dtype_size(dtype) bytes, little-endian, row-major
};

// Writes `path` atomically (a sibling temporary file, renamed over `path` once complete). Throws Error on
// duplicate or empty names, a byte count that does not match the shape, or an I/O failure.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace dsv4
