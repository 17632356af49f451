// Memory-mapped safetensors reader: single files and sharded checkpoints (model.safetensors.index.json).
// Headers are validated on open; tensor bytes are only touched when the caller reads them.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv4 {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping
  size_t nbytes = 0;
  const std::string* file = nullptr;  // which shard holds it

  int64_t numel() const;
  std::string shape_str() const;  // "[a, b]"
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // maps and validates; throws Error naming the file
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t file_size() const { return size_; }
  const uint8_t* mapping() const { return static_cast<const uint8_t*>(map_); }  // file_size() bytes, page-aligned

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::vector<TensorInfo> tensors_;
};

// A checkpoint directory (or a single .safetensors file): all shards, one name -> tensor map.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& path);

  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // throws "missing tensor NAME"
  const std::map<std::string, const TensorInfo*>& all() const { return by_name_; }
  const std::string& dir() const { return dir_; }
  size_t num_files() const { return files_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> by_name_;
};

}  // namespace dsv4
