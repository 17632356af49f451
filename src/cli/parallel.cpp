#include "cli/parallel.h"

#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "model/pipeline.h"

extern char** environ;

namespace dsv4::cli {

void ParallelOpts::validate() const {
  if (tensor_parallel_size < 1) fail("--tensor-parallel-size must be >= 1");
  if (nnodes < 1) fail("--nnodes must be >= 1");
  if (pipeline_parallel_size < 1) fail("--pipeline-parallel-size must be >= 1");
  if (micro_batches < 0) fail("--pipeline-micro-batches must be >= 0 (0: one per stage)");
  if (pipeline_parallel_size == 1 && (!pipeline_layers.empty() || micro_batches))
    fail("--pipeline-layers and --pipeline-micro-batches need --pipeline-parallel-size > 1");
  if (world_size() % nnodes)
    fail("{} ranks (--tensor-parallel-size {} x --pipeline-parallel-size {}) do not split evenly over --nnodes {}",
         world_size(), tensor_parallel_size, pipeline_parallel_size, nnodes);
  if (node_rank < 0 || node_rank >= nnodes) fail("--node-rank {} must be in [0, {})", node_rank, nnodes);
  if (node_rank > 0 && !headless) fail("--node-rank {} is a worker node: add --headless (only node 0 serves HTTP)", node_rank);
  if (node_rank == 0 && headless) fail("--headless is for worker nodes (--node-rank >= 1); node 0 serves HTTP");
  if (master_port < 1 || master_port > 65535) fail("--master-port {} is not a port", master_port);
  if (!(distributed_timeout > 0) || !(rendezvous_timeout > 0)) fail("timeouts must be positive");
  if (enable_expert_parallel && tensor_parallel_size == 1)
    fail("--enable-expert-parallel needs --tensor-parallel-size > 1 (experts are split across those ranks)");
  if (!enable_eplb && num_redundant_experts)
    fail("--num-redundant-experts needs --enable-eplb");
  if (enable_eplb) {
    if (!enable_expert_parallel) fail("--enable-eplb needs --enable-expert-parallel (it balances expert-parallel ranks)");
    if (num_redundant_experts < 0 || eplb_step_interval < 1)
      fail("--num-redundant-experts must be >= 0 and --eplb-step-interval >= 1");
    if (pipeline_parallel_size > 1)
      fail("--enable-eplb with --pipeline-parallel-size is not supported yet (each stage routes its own layers)");
  }
}

dist::DistConfig ParallelOpts::dist_config(int rank) const {
  dist::DistConfig d;
  d.world_size = world_size();
  d.group_size = tensor_parallel_size;
  d.rank = rank;
  d.master_addr = master_addr;
  d.master_port = master_port;
  d.timeout = std::chrono::milliseconds(int64_t(distributed_timeout * 1000));
  d.join_timeout = std::chrono::milliseconds(int64_t(rendezvous_timeout * 1000));
  return d;
}

void ParallelOpts::validate_stages(const std::string& model_dir) const {
  if (pipeline_parallel_size > 1 && !headless)
    pipeline_stages(ModelConfig::load((std::filesystem::path(model_dir) / "config.json").string()),
                    pipeline_parallel_size, pipeline_layers);
}

EplbOptions ParallelOpts::eplb() const { return {enable_eplb, num_redundant_experts, eplb_step_interval}; }

PipelineOptions ParallelOpts::pipeline() const { return {pipeline_parallel_size, pipeline_layers, micro_batches}; }

void add_parallel_options(CLI::App& cmd, ParallelOpts& o, bool multi_node) {
  const char* g = "Parallelism";
  cmd.add_option("--tensor-parallel-size,--tp", o.tensor_parallel_size,
                 "ranks sharing each layer (one per GPU; across --nnodes nodes)")
      ->capture_default_str()
      ->group(g);
  cmd.add_option("--pipeline-parallel-size,--pp", o.pipeline_parallel_size,
                 "pipeline stages, each a contiguous run of layers on its own --tensor-parallel-size ranks")
      ->capture_default_str()
      ->group(g);
  cmd.add_option("--pipeline-layers", o.pipeline_layers,
                 "each stage's layers, FIRST-LAST per stage in order (e.g. 0-20,21-42); default: an even split "
                 "by weight bytes")
      ->group(g);
  cmd.add_option("--pipeline-micro-batches", o.micro_batches,
                 "micro-batches a step's sequences are split into so every stage works at once (0: one per stage)")
      ->capture_default_str()
      ->group(g);
  cmd.add_flag("--enable-expert-parallel", o.enable_expert_parallel,
               "split routed experts across the ranks by expert instead of by width (CPU backend for now)")
      ->group(g);
  cmd.add_flag("--enable-eplb", o.enable_eplb,
               "expert-parallel load balancing: replicas of the hottest experts on the least-loaded ranks, "
               "rebalanced while serving (CPU backend)")
      ->group(g);
  cmd.add_option("--num-redundant-experts", o.num_redundant_experts, "redundant expert slots (with --enable-eplb)")
      ->capture_default_str()
      ->group(g);
  cmd.add_option("--eplb-step-interval", o.eplb_step_interval, "steps between placement updates (with --enable-eplb)")
      ->capture_default_str()
      ->group(g);
  cmd.add_option("--master-addr", o.master_addr, "address of node 0, where the ranks meet")->capture_default_str()->group(g);
  cmd.add_option("--master-port", o.master_port, "rendezvous port on node 0")->capture_default_str()->group(g);
  cmd.add_option("--distributed-timeout", o.distributed_timeout,
                 "seconds after which a silent or hung rank counts as failed")
      ->capture_default_str()
      ->group(g);
  cmd.add_option("--rendezvous-timeout", o.rendezvous_timeout, "seconds every rank has to join at start")
      ->capture_default_str()
      ->group(g);
  if (!multi_node) return;
  cmd.add_option("--nnodes", o.nnodes, "nodes the ranks span")->capture_default_str()->group(g);
  cmd.add_option("--node-rank", o.node_rank, "this node's index (0 serves HTTP)")->capture_default_str()->group(g);
  cmd.add_flag("--headless", o.headless, "a worker node: no HTTP, runs its ranks for node 0")->group(g);
}

LocalRanks::LocalRanks(const ParallelOpts& o, const std::string& model_dir, const std::string& device,
                       const std::string& load_format) {
  std::error_code ec;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) fail("cannot find this executable to start the other ranks: {}", ec.message());
  const pid_t parent = getpid();
  for (int local = 1; local < o.ranks_per_node(); ++local) {
    std::vector<std::string> args = {self,
                                     "rank-worker",
                                     "--model", model_dir,
                                     "--device", device,
                                     "--load-format", load_format,
                                     "--rank", std::to_string(o.first_rank() + local),
                                     "--local-rank", std::to_string(local),
                                     "--tensor-parallel-size", std::to_string(o.tensor_parallel_size),
                                     "--pipeline-parallel-size", std::to_string(o.pipeline_parallel_size),
                                     "--master-addr", o.master_addr,
                                     "--master-port", std::to_string(o.master_port),
                                     "--distributed-timeout", std::to_string(o.distributed_timeout),
                                     "--rendezvous-timeout", std::to_string(o.rendezvous_timeout)};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) fail("cannot start rank {}: fork failed", o.first_rank() + local);
    if (pid == 0) {
      // The child dies with this process: no orphaned ranks holding GPUs.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execve(self.c_str(), argv.data(), environ);
      _exit(127);
    }
    pids_.push_back(pid);
    spdlog::info("started rank {} (local rank {}) as process {}", o.first_rank() + local, local, pid);
  }
}

LocalRanks::~LocalRanks() {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (pid_t pid : pids_) {
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

int run_rank(RunnerOptions ro) {
  const int rank = ro.dist.rank;
  try {
    ModelRunner runner(std::move(ro));
    spdlog::info("rank {}: serving rank 0's steps", rank);
    runner.serve_worker();
    spdlog::info("rank {}: stopped by rank 0", rank);
    return 0;
  } catch (const std::exception& e) {
    spdlog::error("rank {}: {}", rank, e.what());
    return 1;
  }
}

void add_rank_worker_command(CLI::App& app) {
  struct Opts {
    ParallelOpts par;
    std::string model, device = "auto", load_format = "auto";
    int rank = 1, local_rank = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("rank-worker", "");  // no description: hidden; started by the launcher
  cmd->group("");
  cmd->add_option("--model", o->model)->required();
  cmd->add_option("--device", o->device);
  cmd->add_option("--load-format", o->load_format);
  cmd->add_option("--rank", o->rank)->required();
  cmd->add_option("--local-rank", o->local_rank);
  add_parallel_options(*cmd, o->par, false);
  cmd->callback([o] {
    RunnerOptions ro;
    ro.model_dir = o->model;
    ro.device = o->device;
    ro.load_format = o->load_format;
    ro.local_rank = o->local_rank;
    ro.dist = o->par.dist_config(o->rank);
    ro.pipeline = o->par.pipeline();
    const int rc = run_rank(std::move(ro));
    if (rc) std::exit(rc);
  });
}

}  // namespace dsv4::cli
