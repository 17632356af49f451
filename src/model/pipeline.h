// Pipeline parallelism (vLLM's --pipeline-parallel-size): the model's layers in contiguous stages, one stage per
// tensor-parallel group. The embedding is on the first stage; the final hc_head, norm and head on the last. Each
// stage places only its layers' weights and KV; the residual streams go stage to stage over the communicator's
// point-to-point operations.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/config.h"

namespace dsv4 {

struct StageLayers {
  int begin = 0, end = 0;  // layers [begin, end)
};

// Bytes of each main layer's weights in the checkpoint formats (from the weight schema), and of the last stage's
// head, final norm and hc_head: the weights each token reads, which the split balances (the embedding is a
// row gather, not counted).
std::vector<uint64_t> layer_weight_bytes(const ModelConfig& c);
uint64_t head_weight_bytes(const ModelConfig& c);

// `stages` contiguous ranges covering [0, n_layers), each at least one layer: from `spec` when given
// ("0-3,4-7": first-last layer of each stage, inclusive, in order), else the split whose largest stage (the
// last with the head's bytes) holds the fewest bytes. Errors name what is wrong with the spec.
std::vector<StageLayers> pipeline_stages(const ModelConfig& c, int stages, const std::string& spec);
std::string format_stages(const std::vector<StageLayers>& s);  // the spec syntax

// One rank's place in the pipeline (Dsv4Model::set_pipeline).
struct PipelineStage {
  int index = 0, count = 1;
  StageLayers layers;
  dist::Communicator* p2p = nullptr;  // point-to-point over every rank
  int prev = -1, next = -1;           // this tensor-parallel rank's peer in the stage before / after (-1: none)
  bool first() const { return index == 0; }
  bool last() const { return index == count - 1; }
};

}  // namespace dsv4
