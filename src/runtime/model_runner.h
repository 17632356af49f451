// Executes step plans: owns the compute backend, the placed weights, the KV arena and the per-step
// workspace (one runner per rank). The scheduler never sees any of them, only block and slot ids.
#pragma once
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "dist/watchdog.h"
#include "kernels/backend.h"
#include "model/dsv4_model.h"
#include "runtime/expert_load.h"
#include "runtime/step_plan.h"

namespace dsv4 {

// Pipeline parallelism: dist.world_size ranks as `size` stages of tensor-parallel groups (rank = stage * tp +
// tp rank). Stage layers from `layers` ("0-3,4-7"), or split evenly by weight bytes; each step's sequences run
// as up to micro_batches micro-batches so the stages work at once (0: one per stage).
struct PipelineOptions {
  int size = 1;
  std::string layers;
  int micro_batches = 0;
};

// Expert-parallel load balancing (with expert_parallel; model/eplb.h): `redundant` extra expert slots per layer
// hold replicas of the hottest experts; every `interval` forward passes rank 0 recomputes the placement from the
// expert load window, every rank prepares its new experts in the background and all switch between two steps.
struct EplbOptions {
  bool enabled = false;
  int redundant = 0;
  int interval = 3000;
};

struct RunnerOptions {
  std::string model_dir;
  std::string device = "auto";  // cpu | cuda | auto
  std::string load_format = "auto";  // auto (the checkpoint) | dummy (random weights for model_dir's config.json)
  Numerics numerics = Numerics::Reference;
  KvDtype kv_dtype = KvDtype::BF16;
  int block_tokens = 256;
  bool prefix_tails = false;  // blocks carry what resuming at their end needs (prefix caching)
  int n_slots = 1;            // sequences in flight at once
  StepLimits limits;
  // KV budget: explicit bytes (blocks + slots), or 0 = from the backend's free memory after weights and
  // workspace (times memory_utilization), capped at what n_slots full-length sequences can use twice over.
  uint64_t kv_cache_memory = 0;
  double memory_utilization = 0.9;
  int64_t max_model_len = 0;  // 0: what fits (capped by max_position_embeddings)
  LoadProgress progress;
  bool profile_ops = false;  // wrap the backend in a TimingBackend (per-op times; slower steps)
  // A backend of the caller's own instead of make_backend(device) (tests: a shadowing or instrumented one).
  std::function<std::unique_ptr<Backend>()> backend_factory;
  // Tensor parallelism: this process is rank dist.rank of dist.world_size. Rank 0's options (everything above
  // but model_dir, device and the factory) are sent to every rank at the rendezvous, so ranks cannot disagree.
  dist::DistConfig dist;
  PipelineOptions pipeline;
  bool expert_parallel = false;  // routed experts split by expert id instead of by width
  EplbOptions eplb;
  // Speculative decoding with the checkpoint's drafter (MTP layer or DSpark stages): its weights, its KV and the
  // verify save areas for draft_tokens drafts per step.
  Drafter drafter = Drafter::None;
  int draft_tokens = 0;
  int local_rank = 0;            // the GPU this rank uses on its host
  // Expert load statistics over the last N forward passes (runtime/expert_load.h); 0: not counted. Rank 0
  // counts for the group (routing is replicated).
  int expert_load_window = 0;
};


struct StepResult {
  uint64_t step = 0;
  int64_t rows = 0, vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  ForwardStats stats;
};

struct MemoryPlan {
  uint64_t weights = 0, workspace = 0, kv = 0, kv_slots = 0;
  int64_t kv_blocks = 0, max_model_len = 0;
  // Parts of the above / beyond it: the workspace's indexer score scratch (bounded by the step's rows on a
  // backend that tiles), host memory the backend's KV ops take per call, the arena copy list.
  uint64_t index_scratch = 0, host_scratch = 0, copy_list = 0;
  uint64_t kv_per_seq = 0;  // one max-model-len sequence: its blocks and its slot
  uint64_t total() const { return weights + workspace + kv + host_scratch + copy_list; }
};

class ModelRunner {
 public:
  explicit ModelRunner(RunnerOptions opts);
  ~ModelRunner();

  // On rank 0 of a group this first sends the plan to every rank; the logits come back whole ([rows, vocab]).
  StepResult execute(const StepPlan& plan);
  // Ranks > 0: executes what rank 0 sends until it says stop (returns) or the group fails (throws PeerError).
  void serve_worker();
  // Rank 0 while idle: proves every rank is alive within the timeout (throws PeerError otherwise).
  void heartbeat();
  bool distributed() const { return control_ != nullptr; }
  const dist::Communicator* communicator() const { return comm_.get(); }
  // This rank's pipeline stage (the whole model when there is one stage).
  const PipelineStage& stage() const { return stage_; }

  const ModelConfig& config() const { return cfg_; }
  const KvLayout& kv_layout() const { return kv_->layout(); }
  const MemoryPlan& memory() const { return mem_; }
  Backend& backend() { return *be_; }
  const ModelWeights& weights() const { return *weights_; }
  KvStorage& kv_storage() { return *kv_; }
  double load_seconds() const { return load_seconds_; }
  const RunnerOptions& options() const { return opts_; }
  // Null when not counted (expert_load_window 0, or a rank other than 0).
  const ExpertLoad* expert_load() const { return expert_load_.get(); }
  // EPLB on rank 0: every placement served so far, the current one last (empty without EPLB). Thread-safe.
  std::vector<EplbEpochStats> eplb_epochs() const;

 private:
  StepResult execute_local(const StepPlan& plan);
  // A step over the pipeline: this stage's part of every micro-batch; rank 0 collects the last stage's logits.
  void execute_pipeline(const StepPlan& plan, StepResult& r);
  // [ranks, rows, vocab / ranks] (tensor-parallel vocabulary blocks) or [rows, vocab] -> rows of r.logits.
  void append_logits(const Tensor& logits, StepResult& r);
  // Messages from rank 0 to the other ranks, one broadcast each: a kind byte, then the body.
  static constexpr char kPlan = 'P', kHeartbeat = 'H', kStop = 'Q';
  static constexpr char kEplbPlacement = 'E', kEplbSwitch = 'S';  // a placement to prepare; switch to it now
  void send(char kind, const std::string& body);
  void guard_group(const std::function<void()>& fn);  // a PeerError marks the group failed
  bool failed_ = false;
  uint64_t steps_ = 0;  // forward passes
  RunnerOptions opts_;
  ModelConfig cfg_;
  std::unique_ptr<dist::ControlGroup> control_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<dist::Communicator> comm_;  // the tensor-parallel group's data plane
  std::unique_ptr<dist::Communicator> p2p_;   // every rank, for the pipeline's point-to-point
  PipelineStage stage_;
  int tp_size_ = 1, micro_batches_ = 1;
  std::unique_ptr<Buffer> pipe_logits_buf_;  // rank 0: the last stage's logits of one step
  std::unique_ptr<dist::Watchdog> watchdog_;  // NCCL only
  std::unique_ptr<ModelWeights> weights_;
  std::unique_ptr<Dsv4Model> model_;
  std::unique_ptr<KvStorage> kv_;
  std::unique_ptr<Workspace> ws_;
  std::unique_ptr<ExpertLoad> expert_load_;
  std::unique_ptr<Buffer> copy_buf_;  // arena copy lists
  Tensor copy_list_;
  MemoryPlan mem_;
  double load_seconds_ = 0;
  // EPLB (model_runner_eplb.cpp). Last: destroyed first, before the weights and backend they point into.
  void eplb_start();                           // every rank: the start placement, made alike everywhere
  void eplb_before_step();                     // rank 0: a placement prepared everywhere is switched to
  void eplb_after_step();                      // rank 0: the step's rank loads; every interval a new placement
  void eplb_prepare(EplbPlacement p);          // every rank: its experts of `p`, in the background
  void eplb_switch(uint64_t epoch);            // ranks > 0: the prepared placement from the next step on
  void eplb_install(std::unique_ptr<EplbRankExperts> next, uint64_t epoch);  // the model uses `next` from now
  std::unique_ptr<EplbRankExperts> eplb_cur_;  // in use by the model
  std::future<std::unique_ptr<EplbRankExperts>> eplb_next_;
  uint64_t eplb_steps_ = 0;                    // forward passes since the placement was last computed
  std::vector<std::vector<int32_t>> eplb_owner_;  // current placement: per layer the rank of each replica
  mutable std::mutex eplb_mu_;
  std::vector<EplbEpochStats> eplb_epochs_;
};

}  // namespace dsv4
