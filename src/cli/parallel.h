// Multi-rank launch, as vLLM does it: `--tensor-parallel-size T` (and `--pipeline-parallel-size P`) on one
// host starts one rank per GPU, T * P in all (this process is rank 0, the others are child processes of it);
// across nodes every node runs the same command with its `--node-rank`, `--master-addr`/`--master-port` naming
// node 0, and `--headless` on the workers.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <sys/types.h>
#include <vector>

#include "dist/communicator.h"
#include "runtime/model_runner.h"

namespace dsv4::cli {

struct ParallelOpts {
  int tensor_parallel_size = 1, nnodes = 1, node_rank = 0, master_port = 29500;
  // Pipeline parallelism: stages of tensor_parallel_size ranks each (model/pipeline.h).
  int pipeline_parallel_size = 1, micro_batches = 0;
  std::string pipeline_layers;
  std::string master_addr = "127.0.0.1";
  bool headless = false, enable_expert_parallel = false;
  // Expert-parallel load balancing (model/expert_placement.h): redundant expert slots, rebalanced every
  // eplb_step_interval steps.
  bool enable_eplb = false;
  int num_redundant_experts = 0, eplb_step_interval = 3000;
  double distributed_timeout = 30, rendezvous_timeout = 180;

  int world_size() const { return tensor_parallel_size * pipeline_parallel_size; }
  int ranks_per_node() const { return world_size() / nnodes; }
  int first_rank() const { return node_rank * ranks_per_node(); }  // this process's rank
  void validate() const;
  // This process's group membership (rank first_rank(), local rank 0).
  dist::DistConfig dist_config(int rank) const;
  PipelineOptions pipeline() const;
  EplbOptions eplb() const;
  // The stage layout against the model's config, before any rank process starts (rank 0 checks it again).
  void validate_stages(const std::string& model_dir) const;
};

// `multi_node`: the serve flags (--nnodes, --node-rank, --headless) besides the one-host ones.
void add_parallel_options(CLI::App& cmd, ParallelOpts& o, bool multi_node);

// The node's other ranks (local ranks 1..ranks_per_node-1), each a `dsv4 rank-worker` child process that dies
// with this one. The destructor waits for them (they stop when rank 0 does) and kills what is left.
class LocalRanks {
 public:
  LocalRanks(const ParallelOpts& o, const std::string& model_dir, const std::string& device,
             const std::string& load_format);
  ~LocalRanks();
  LocalRanks(const LocalRanks&) = delete;
  LocalRanks& operator=(const LocalRanks&) = delete;

 private:
  std::vector<pid_t> pids_;
};

// A rank without HTTP: places its shards, then executes what rank 0 sends until it says stop. Returns the
// exit status (0: stopped by rank 0; 1: the group failed, already logged).
int run_rank(RunnerOptions ro);

void add_rank_worker_command(CLI::App& app);  // the hidden `dsv4 rank-worker` the launcher starts

}  // namespace dsv4::cli
