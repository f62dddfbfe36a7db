// Replay buffer for off-policy RL: one storage, two samplers (uniform and proportional prioritized),
// n-step returns folded in at insertion time. Plain C++17: no Python, no torch.
//
// Each stored transition is one row of float32, laid out as
//     obs | action | reward | next_obs | done | discount
// so that sampling is one memcpy per transition and the whole batch is one contiguous block that
// the caller can move to a device in a single copy, and split into zero-copy views.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "random.hpp"
#include "sum_tree.hpp"

namespace pydpg {

// Thrown for bad arguments; the bindings turn it into ValueError.
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// Thrown when a file is not a readable buffer file (wrong magic, version, shape, truncated, corrupt).
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Thrown when the OS refuses a file operation (missing file, permissions).
struct FileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Thrown when storage cannot be allocated; names the bytes that were asked for.
struct OutOfMemory : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A shape as Python prints a tuple: "(3,)", "(4, 2)", "()". Declared here so that every error
// message about a shape, the core's and the bindings', is written by this one function.
std::string shape_str(const std::vector<std::int64_t>& shape);

struct ReplayBufferConfig {
  std::int64_t capacity = 0;
  std::vector<std::int64_t> obs_shape;
  std::vector<std::int64_t> action_shape;
  bool prioritized = false;
  double alpha = 0.6;  // Schaul et al. 2015, proportional variant, Table 3
  int n_step = 1;
  double gamma = 0.99;
  std::optional<std::uint64_t> seed;
};

// Column offsets of one stored row.
struct RowLayout {
  std::int64_t obs_dim = 0, act_dim = 0;
  std::int64_t obs() const { return 0; }
  std::int64_t action() const { return obs_dim; }
  std::int64_t reward() const { return obs_dim + act_dim; }
  std::int64_t next_obs() const { return obs_dim + act_dim + 1; }
  std::int64_t done() const { return 2 * obs_dim + act_dim + 1; }
  std::int64_t discount() const { return 2 * obs_dim + act_dim + 2; }
  std::int64_t width() const { return 2 * obs_dim + act_dim + 3; }
  // Stored rows are padded to whole 64-byte cache lines: a sampled row then touches
  // ceil(width/16) lines instead of straddling one more, which is most of a gather's cost.
  std::int64_t stride() const { return (width() + 15) / 16 * 16; }
};

// N transitions, one per row, from N environments (or N steps of one).
struct TransitionBatch {
  std::int64_t n = 0;
  const float* obs = nullptr;             // [n, obs_dim]
  const float* action = nullptr;          // [n, act_dim]
  const float* reward = nullptr;          // [n]
  const float* next_obs = nullptr;        // [n, obs_dim]
  const bool* terminated = nullptr;       // [n]
  const bool* truncated = nullptr;        // [n]
  const std::int64_t* env_ids = nullptr;  // [n] or null: row i belongs to environment i
};

// Zero-initialized float storage, mapped lazily, on huge pages where the kernel allows.
class Storage {
 public:
  Storage() = default;
  explicit Storage(std::size_t bytes);  // data() is null if the memory cannot be had
  Storage(Storage&& other) noexcept { *this = std::move(other); }
  Storage& operator=(Storage&& other) noexcept;
  ~Storage();
  float* data() const { return data_; }

 private:
  float* data_ = nullptr;
  std::size_t length_ = 0;
};

class ReplayBuffer {
 public:
  static constexpr std::uint32_t kFormatVersion = 1;
  // Priorities are floored here so that no stored item ever has zero probability: a TD error of
  // exactly 0 would otherwise remove a transition from the sampler for good.
  static constexpr double kMinPriority = 1e-6;

  explicit ReplayBuffer(ReplayBufferConfig config);
  ReplayBuffer(const ReplayBuffer&) = delete;
  ReplayBuffer& operator=(const ReplayBuffer&) = delete;

  // Stores the batch whole or, if any value is invalid, not at all. With n_step > 1 a transition
  // becomes sampleable once its n-step return is known (n steps later, or at its episode's end).
  void extend(const TransitionBatch& batch);

  // Fills `rows` ([batch_size, width]) by uniform sampling with replacement, or, when prioritized,
  // by stratified proportional sampling; then also `weights` ([batch_size], (N·P(i))^-beta divided by
  // the largest weight over the buffer) and `ids` ([batch_size], ids for update_priorities).
  void sample(std::int64_t batch_size, double beta, float* rows, float* weights, std::int64_t* ids);

  // Priorities are raw (e.g. |TD error|); stored as max(p, kMinPriority)^alpha.
  void update_priorities(std::int64_t n, const std::int64_t* ids, const double* priorities);

  // The priority new transitions get is the largest ever set; this lowers it to the largest stored
  // now. LAP (Fujimoto et al. 2020) as TD7 runs it does so at every target update, so one early,
  // huge TD error does not make every later transition a favourite. O(capacity).
  void reset_max_priority();

  // Copies the stored transitions with these ids (insertion numbers, as sample returns them; those
  // in the buffer are [total_added - size, total_added)) into `rows` ([n, width]): what a buffer
  // holds, for inspection and tests, without drawing anything.
  void get(std::int64_t n, const std::int64_t* ids, float* rows) const;

  void save(const std::string& path) const;
  // Replaces this buffer's whole state (configuration included) by the file's. Unlike every other
  // member, not for a buffer other threads are using: it may change the row layout their calls were
  // sized for. Load into a fresh buffer, as pydpg.ReplayBuffer.load does, then share it.
  void load(const std::string& path);

  // Closes environment `env`'s open n-step returns as a time-limit truncation would (shorter
  // returns, done = 0, bootstrapping from the last stored next_obs). For an episode that ends
  // outside the buffer's view, e.g. an environment restarted by its owner; the next transition
  // of that env then starts a new return instead of continuing the old episode's.
  void end_episode(std::int64_t env);

  void clear();
  std::int64_t size() const;
  std::int64_t pending() const;  // transitions waiting for their n-step return
  std::int64_t total_added() const;
  std::int64_t capacity() const { return config_.capacity; }
  std::size_t storage_bytes() const;
  const ReplayBufferConfig& config() const { return config_; }
  const RowLayout& layout() const { return layout_; }
  std::string describe() const;

 private:
  // The transitions of one environment whose n-step return is still open (a ring of n rows).
  struct Stream {
    std::vector<float> rows;
    int head = 0;
    int count = 0;
  };

  void allocate();
  static void check_config(const ReplayBufferConfig& c);
  void check_finite(const TransitionBatch& b) const;
  void push(std::int64_t env, const float* obs, const float* action, float reward, const float* next_obs,
            bool terminated, bool truncated);
  void emit_oldest(Stream& s, int length, bool terminated);
  float* append_row();
  std::int64_t pending_unlocked() const;
  std::int64_t slot_to_id(std::int64_t slot) const;
  void check_ids(std::int64_t n, const std::int64_t* ids, const char* source) const;  // mutex held

  ReplayBufferConfig config_;
  RowLayout layout_;
  Storage storage_;
  std::int64_t size_ = 0;
  std::int64_t total_ = 0;  // transitions ever stored; the id of a row is its insertion number
  std::vector<Stream> streams_;
  SumMinTree tree_;
  double max_priority_ = 1.0;
  std::vector<double> gamma_pow_;  // gamma^0 .. gamma^n
  Xoshiro256 rng_;
  std::vector<std::int64_t> scratch_slots_;
  std::vector<double> scratch_mass_;
  std::vector<std::size_t> scratch_leaf_;
  mutable std::mutex mutex_;
};

}  // namespace pydpg
