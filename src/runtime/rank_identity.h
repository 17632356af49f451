// What the ranks of a tensor-parallel group must share, checked at the rendezvous: the dsv4 build, the model
// config and the checkpoint's identity (file names, sizes, safetensors headers and first bytes: cheap to read,
// and different for every released checkpoint).
#pragma once
#include <string>
#include <vector>

#include "dist/communicator.h"

namespace dsv4 {

struct RunnerOptions;

std::vector<dist::IdentityItem> rank_identity(const std::string& model_dir, const std::string& load_format);
// The dsv4 build: version plus the commit it was configured from.
const char* dsv4_version();
// Rank 0's runner options as sent to the other ranks, and their application there (model_dir, device and
// the local rank stay each rank's own).
std::string options_json(const RunnerOptions& o);
void apply_options_json(const std::string& json, RunnerOptions& o);

}  // namespace dsv4
