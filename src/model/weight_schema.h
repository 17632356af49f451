// The tensors a DeepSeek-V4 checkpoint must hold for a given config: names (official reference naming, no
// "model." prefix), dtypes and shapes. The loader and `dsv4 inspect` both check against this one list.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace dsv4 {

struct TensorSpec {
  std::string name;
  std::vector<DType> dtypes;  // accepted dtypes (first = the official one)
  std::vector<int64_t> shape;
};

// Expert format: from config.expert_dtype, or (initial V4-Flash revision without the key) from the
// checkpoint's first expert weight dtype.
ExpertFormat detect_expert_format(const ModelConfig& c, const Checkpoint& ck);

std::vector<TensorSpec> expected_tensors(const ModelConfig& c, ExpertFormat experts);

struct InspectReport {
  std::vector<std::string> missing;
  std::vector<std::string> unexpected;
  std::vector<std::string> mismatched;  // "name: dtype/shape found, expected ..."
  std::map<std::string, uint64_t> bytes_per_dtype;
  std::map<std::string, uint64_t> tensors_per_dtype;
  uint64_t total_bytes = 0;
  uint64_t n_tensors = 0;
  uint64_t n_params = 0;           // logical parameters (FP4 bytes count twice, scales excluded)
  uint64_t n_params_mtp = 0;       // of which in mtp.*
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
};

InspectReport inspect_checkpoint(const ModelConfig& c, const Checkpoint& ck);

}  // namespace dsv4
