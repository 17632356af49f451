#include "model/safetensors_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace dsv4 {

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Validate, then order the data section: element size descending, then name (as the official library).
  std::vector<const TensorToWrite*> order;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name.empty()) fail("{}: tensor with an empty name", path);
    if (t.name == "__metadata__") fail("{}: '__metadata__' is not a tensor name", path);
    if (!names.insert(t.name).second) fail("{}: tensor '{}' given twice", path, t.name);
    uint64_t want = dtype_size(t.dtype);
    for (auto d : t.shape) {
      if (d < 0) fail("{}: tensor '{}' has a negative dimension", path, t.name);
      want *= uint64_t(d);
    }
    if (t.bytes.size() != want)
      fail("{}: tensor '{}' has {} bytes, its shape and dtype {} need {}", path, t.name, t.bytes.size(),
           dtype_name(t.dtype), want);
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto* t : order) {
    h[t->name] = {{"dtype", std::string(dtype_name(t->dtype))},
                  {"shape", t->shape},
                  {"data_offsets", {off, off + t->bytes.size()}}};
    off += t->bytes.size();
  }
  std::string header = h.dump();
  while (header.size() % 8) header += ' ';

  const std::string tmp = path + ".partial." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("{}: cannot create ({})", tmp, std::strerror(errno));
  bool ok = true;
  auto put = [&](const void* p, size_t n) {
    if (ok && n && std::fwrite(p, 1, n, f) != n) ok = false;
  };
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));  // little-endian u64
  put(len, 8);
  put(header.data(), header.size());
  for (const auto* t : order) put(t->bytes.data(), t->bytes.size());
  if (std::fclose(f) != 0) ok = false;
  if (!ok) {
    std::filesystem::remove(tmp);
    fail("{}: write failed ({})", tmp, std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    fail("{}: cannot rename {} into place ({})", path, tmp, ec.message());
  }
}

}  // namespace dsv4
