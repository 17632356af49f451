// Helpers that write small or sparse safetensors files for loader tests.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv4::test {

inline std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("dsv4_test_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// Writes header JSON + data bytes; the data section is extended (sparse) to `data_size` when larger.
inline void write_safetensors(const std::string& path, const nlohmann::json& header, const std::string& data,
                              uint64_t data_size = 0) {
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  std::ofstream f(path, std::ios::binary);
  uint64_t n = h.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(h.data(), std::streamsize(h.size()));
  f.write(data.data(), std::streamsize(data.size()));
  f.close();
  if (data_size > data.size()) std::filesystem::resize_file(path, 8 + n + data_size);
}

struct SpecTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// One sparse file holding every tensor at its declared size (no bytes on disk).
inline void write_sparse_checkpoint(const std::string& path, const std::vector<SpecTensor>& ts) {
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  for (auto& t : ts) {
    uint64_t n = dtype_size(t.dtype);
    for (auto d : t.shape) n *= uint64_t(d);
    h[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  write_safetensors(path, h, "", off);
}

}  // namespace dsv4::test
