// Real-time policy runtime: runs an exported pydpg policy (TorchScript file) from C++ with no Python.
//
// This header is the whole public C++ API of pydpg::runtime. It deliberately includes no torch
// header, so a control loop that links pydpg::runtime compiles in seconds and never sees libtorch's
// include tree; libtorch is a private dependency of the shared library.
//
// Contract of act(): after construction (load, validation, warm-up) a call performs no heap
// allocation in pydpg's code, and on the "mlp" backend none anywhere in the process (tests/
// test_runtime.py counts malloc/new around it). One PolicyRuntime must not be used by two threads
// at once: it owns its scratch buffers. Create one per control thread.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// libpydpg_runtime is built with hidden visibility; this marks what it exports. The error types are
// marked too, so that the library and its users share one type_info for each and an exception
// thrown inside the library is caught by its type in the user's code.
#if defined(__GNUC__)
#define PYDPG_RUNTIME_API __attribute__((visibility("default")))
#else
#define PYDPG_RUNTIME_API
#endif

namespace pydpg {

// Base of every error the runtime throws.
struct PYDPG_RUNTIME_API PolicyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The file cannot be opened or read (missing, a directory, no permission).
struct PYDPG_RUNTIME_API PolicyFileError : PolicyError {
  using PolicyError::PolicyError;
};
// The file is not a usable pydpg policy: empty, truncated, corrupt, not TorchScript, TorchScript
// without pydpg metadata, an unsupported format version, or metadata that contradicts the module.
struct PYDPG_RUNTIME_API PolicyFormatError : PolicyError {
  using PolicyError::PolicyError;
};
// A call's arguments are wrong (batch out of range, options out of range, wrong vector sizes).
struct PYDPG_RUNTIME_API PolicyArgumentError : PolicyError {
  using PolicyError::PolicyError;
};
// A NaN or Inf observation or action under NonFinitePolicy::Raise.
struct PYDPG_RUNTIME_API NonFiniteError : PolicyError {
  using PolicyError::PolicyError;
};

// What act() does with a row whose observation, or resulting action, is NaN or Inf. Every such row
// is counted (GuardStats) whatever the policy.
enum class NonFinitePolicy {
  Raise,     // throw NonFiniteError; the output buffer is left untouched
  HoldLast,  // repeat that row's last good action (the safe action before the first good one)
  Safe,      // output the safe action
};

struct PolicyOptions {
  std::int64_t max_batch = 1;  // scratch buffers are sized for this many rows, once
  // Intra-op threads. libtorch keeps one pool per process, so this sets it process-wide; 0 leaves
  // the current setting alone. 1 is the real-time default: no wake-up jitter from pool threads.
  int num_threads = 1;
  int warmup_calls = 64;  // act() calls at batch 1 and at max_batch before the clock starts
  NonFinitePolicy on_nonfinite = NonFinitePolicy::Raise;
  std::vector<float> safe_action;  // act_dim values inside the bounds; empty = zeros clamped into them
  // Latencies of the most recent `latency_window` calls are kept for the percentiles; count, mean and
  // max cover every call since the last reset.
  std::int64_t latency_window = 1 << 16;
  // "auto": the allocation-free "mlp" backend when the metadata describes the network and it
  // reproduces the module's forward, else "torchscript". "mlp"/"torchscript" force one.
  std::string backend = "auto";
  // false: one BLAS call for the whole batch (fastest). BLAS chooses its kernel by matrix shape and
  // CPU, so a row's action can differ in the last bits with the batch size it came in.
  // true: each row is computed on its own, so row i's action is exactly what act() returns for that
  // row alone, whatever the other rows hold or how many there are (a multi-robot controller gets
  // per-robot determinism); costs throughput at large batches (benchmarks/bench_inference.py).
  bool batch_invariant = false;
  // The mlp backend's kernels: "auto" binds MKL's sgemm and VML tanh when libtorch exports them
  // (x86 wheels), else at::addmm and std::tanh; "portable" always takes the latter.
  std::string mlp_kernels = "auto";
};

// The training env's control timing, as the policy file records it (metadata "task"): what a
// control loop needs to step the physics as training did.
struct TaskTiming {
  int frame_skip = 0;                  // physics steps per action in training
  double timestep = 0.0;               // the model's physics step in training, s
  double control_period = 0.0;         // timestep * frame_skip, s
  double control_hz = 0.0;             // 1 / control_period
  std::int64_t max_episode_steps = 0;  // the env's time limit, in actions
};

struct PolicyMetadata {
  int format_version = 0;
  std::string pydpg_version, torch_version, env_id;
  std::int64_t obs_dim = 0, act_dim = 0;
  std::vector<float> action_low, action_high;
  bool normalized = false;
  std::vector<float> obs_mean, obs_std;  // std = sqrt(var + eps), as the module divides by it
  float obs_clip = 0.0f;                 // |normalized obs| <= obs_clip; 0 = no clip
  std::int64_t training_steps = -1;      // -1: unknown
  double eval_return = 0.0;
  bool has_eval_return = false;
  bool has_task = false;  // false: exported without a MuJoCo env (no timing known)
  TaskTiming task;
  std::string json;  // the full metadata document, for fields this struct does not carry
};

struct LatencyStats {
  std::uint64_t count = 0;   // calls since reset
  std::uint64_t window = 0;  // calls the percentiles are over (the most recent ones)
  double mean_us = 0, p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0, max_us = 0;
};

struct GuardStats {
  std::uint64_t nonfinite_obs_rows = 0;     // rows with a NaN/Inf observation
  std::uint64_t nonfinite_action_rows = 0;  // rows whose computed action was NaN/Inf
  std::uint64_t held_rows = 0;              // rows answered with the last good action
  std::uint64_t safe_rows = 0;              // rows answered with the safe action
  std::uint64_t raised = 0;                 // calls that threw NonFiniteError
};

class PYDPG_RUNTIME_API PolicyRuntime {
 public:
  static constexpr int kFormatVersion = 1;  // the policy file format this runtime reads

  // Loads, validates, sets the thread count and warms up. Throws PolicyFileError,
  // PolicyFormatError or PolicyArgumentError (bad options).
  explicit PolicyRuntime(const std::string& path, PolicyOptions options = {});
  ~PolicyRuntime();
  PolicyRuntime(const PolicyRuntime&) = delete;
  PolicyRuntime& operator=(const PolicyRuntime&) = delete;
  PolicyRuntime(PolicyRuntime&&) noexcept;
  PolicyRuntime& operator=(PolicyRuntime&&) noexcept;

  // actions[batch, act_dim] = policy(obs[batch, obs_dim]); both row-major float32, in the env's own
  // units. Actions are clamped to the bounds. 1 <= batch <= max_batch.
  void act(const float* obs, std::int64_t batch, float* actions);

  const PolicyMetadata& metadata() const;
  // The training env's timing; throws PolicyFormatError when the file records none (exported
  // without a MuJoCo env). Step the physics physics_steps_per_action(model timestep, hz) times per
  // act(): task_timing().frame_skip when the model's timestep is the training one and hz its rate.
  const TaskTiming& task_timing() const;
  const PolicyOptions& options() const;
  std::int64_t obs_dim() const;
  std::int64_t act_dim() const;
  const std::string& backend() const;  // "mlp" or "torchscript"
  // What the backend computes with, e.g. "sgemm: mkl, tanh: mkl vml" or "sgemm: aten addmm, tanh: libm".
  std::string kernels() const;
  const std::string& path() const;
  // A named extra file stored beside the metadata ("model.xml": the MuJoCo model the policy was
  // trained on); empty when the file has none.
  const std::string& extra_file(const std::string& name) const;

  LatencyStats latency() const;
  void reset_latency();
  GuardStats guard_stats() const;
  void reset_guard_stats();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Physics steps of one control period at `hz` for a model whose physics step is `timestep` seconds:
// round(1 / (hz * timestep)), at least 1. The shipped control loop and a user's loop share it, so both
// step as the policy was trained when given the policy's rate. Throws PolicyArgumentError for a
// non-finite or non-positive argument, or more than a million steps per action.
PYDPG_RUNTIME_API int physics_steps_per_action(double timestep, double hz);

// "raise" | "hold" | "safe" <-> NonFinitePolicy; throws PolicyArgumentError on anything else.
PYDPG_RUNTIME_API NonFinitePolicy parse_nonfinite_policy(const std::string& name);
PYDPG_RUNTIME_API const char* to_string(NonFinitePolicy policy);

}  // namespace pydpg
