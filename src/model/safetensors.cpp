#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace dsv4 {

namespace fs = std::filesystem;
using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open ({})", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("{}: cannot stat", path);
  }
  size_ = size_t(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    fail("{}: truncated file ({} bytes, no header)", path, size_);
  }
  map_ = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("{}: mmap failed ({})", path, std::strerror(errno));
  }
  const auto* base = static_cast<const uint8_t*>(map_);
  uint64_t hlen = 0;
  std::memcpy(&hlen, base, 8);
  if (hlen > size_ - 8 || hlen > (100u << 20))
    fail("{}: header length {} exceeds the file ({} bytes): truncated or not safetensors", path, hlen, size_);
  json h;
  try {
    h = json::parse(base + 8, base + 8 + hlen);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", path, e.what());
  }
  if (!h.is_object()) fail("{}: header is not a JSON object", path);
  const uint8_t* data = base + 8 + hlen;
  size_t data_size = size_ - 8 - hlen;
  for (auto& [name, v] : h.items()) {
    if (name == "__metadata__") continue;
    TensorInfo t;
    t.name = name;
    t.file = &path_;
    try {
      auto dt = v.at("dtype").get<std::string>();
      if (!parse_dtype(dt, &t.dtype)) fail("{}: tensor '{}': unsupported dtype '{}'", path, name, dt);
      t.shape = v.at("shape").get<std::vector<int64_t>>();
      auto off = v.at("data_offsets").get<std::vector<uint64_t>>();
      if (off.size() != 2) fail("{}: tensor '{}': data_offsets must have 2 entries", path, name);
      for (auto d : t.shape)
        if (d < 0) fail("{}: tensor '{}': negative dimension", path, name);
      if (off[0] > off[1] || off[1] > data_size)
        fail("{}: tensor '{}': data_offsets [{}, {}] outside the data section ({} bytes): truncated file?", path,
             name, off[0], off[1], data_size);
      t.nbytes = off[1] - off[0];
      uint64_t want = uint64_t(t.numel()) * dtype_size(t.dtype);
      if (t.nbytes != want)
        fail("{}: tensor '{}': {} bytes stored but shape {} x {} needs {}", path, name, t.nbytes, t.shape_str(),
             dtype_name(t.dtype), want);
      t.data = data + off[0];
    } catch (const json::exception& e) {
      fail("{}: tensor '{}': malformed header entry: {}", path, name, e.what());
    }
    tensors_.push_back(std::move(t));
  }
  // Overlapping tensors would alias memory: reject.
  std::vector<const TensorInfo*> by_off;
  for (auto& t : tensors_) by_off.push_back(&t);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->data < b->data; });
  for (size_t i = 1; i < by_off.size(); ++i)
    if (by_off[i - 1]->data + by_off[i - 1]->nbytes > by_off[i]->data && by_off[i]->nbytes > 0)
      fail("{}: tensors '{}' and '{}' overlap", path, by_off[i - 1]->name, by_off[i]->name);
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
}

Checkpoint::Checkpoint(const std::string& path) {
  std::vector<std::string> shard_paths;
  if (fs::is_directory(path)) {
    dir_ = path;
    fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(index)) {
      json j;
      try {
        std::ifstream f(index);
        f >> j;
      } catch (const json::exception& e) {
        fail("{}: invalid JSON: {}", index.string(), e.what());
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        fail("{}: no 'weight_map' object", index.string());
      std::set<std::string> shards;
      for (auto& [k, v] : j["weight_map"].items()) shards.insert(v.get<std::string>());
      for (auto& s : shards) shard_paths.push_back((fs::path(path) / s).string());
      for (auto& s : shard_paths)
        if (!fs::exists(s)) fail("{}: shard '{}' listed in the index does not exist", index.string(), s);
    } else if (fs::exists(fs::path(path) / "model.safetensors")) {
      shard_paths.push_back((fs::path(path) / "model.safetensors").string());  // other files may be data
    } else {
      for (auto& e : fs::directory_iterator(path))
        if (e.path().extension() == ".safetensors") shard_paths.push_back(e.path().string());
      std::sort(shard_paths.begin(), shard_paths.end());
      if (shard_paths.empty()) fail("{}: no .safetensors files and no model.safetensors.index.json", path);
    }
  } else if (fs::exists(path)) {
    dir_ = fs::path(path).parent_path().string();
    shard_paths.push_back(path);
  } else {
    fail("model path '{}' does not exist", path);
  }
  for (auto& s : shard_paths) {
    files_.push_back(std::make_unique<SafetensorsFile>(s));
    for (auto& t : files_.back()->tensors()) {
      auto [it, fresh] = by_name_.emplace(t.name, &t);
      if (!fresh) fail("tensor '{}' appears in both {} and {}", t.name, *it->second->file, s);
    }
  }
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& Checkpoint::get(const std::string& name) const {
  auto* t = find(name);
  if (!t) fail("checkpoint {}: missing tensor '{}'", dir_, name);
  return *t;
}

}  // namespace dsv4
