// The observation contract of a policy: which mjData values, in which order, with which operations.
//
// A spec (JSON, versioned, stored in the policy metadata) is an ordered list of terms. A term reads
// one mjData array, optionally only the entries of named joints/actuators/bodies/sites/sensors
// (resolved with mj_name2id when the spec is bound to a model, so editing the model cannot silently
// shift an index), then a [start, stop) slice of what it selected, minus another selection of the
// same width (Reacher's fingertip - target), times scale plus offset, then sin or cos, then a clip.
// A term can instead be an external input: a named vector the caller sets (previous action, a
// command or goal) that the simulator does not know.
//
// A term (an input too) may carry `"history": k`: it then writes its last k values, oldest first and
// the current one last (IsaacLab's history_length order), k times its width. The builder keeps them
// in a ring it allocated when bound: build() records one control step, so call it once per step, and
// reset() at an episode's start, after which the first build() fills every slot with the current
// value (as IsaacLab's CircularBuffer does after a reset). The "base" of a spec is its terms without
// history: what a simulator's own observation holds, and what build_from_current() takes.
//
// ObservationBuilder binds a spec to an mjModel once, precomputing every source index; build()
// then writes the observation with no allocation. This is the one evaluator: the C++ control loop
// and Python's export verification (through the binding) both use it.
#pragma once

#include <mujoco/mujoco.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pydpg {

// A spec that cannot be bound to the model (unknown field, name or operation, slice out of range,
// newer version), or a call that breaks the builder's contract (unknown input, wrong size, input not
// set before build). The bindings turn it into ValueError.
struct ObservationError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ObservationBuilder {
 public:
  static constexpr int kSpecVersion = 1;

  struct Term {
    std::string label;    // e.g. "qpos[2:15]" or "xpos(fingertip) - xpos(target)", for messages
    int offset = 0;       // first observation index this term writes
    int size = 0;         // history * width
    int history = 1;      // how many control steps it writes, oldest first
    int base_offset = 0;  // where its current value stands in the base (the spec without history)
    std::string input;    // the external input it writes; empty for an mjData term
  };

  // The history rings, for a checkpoint: `primed` is false after reset() (the next build fills
  // them), `heads` has one slot index per history term (the oldest), `values` every ring in order.
  struct HistoryState {
    bool primed = false;
    std::vector<int> heads;
    std::vector<double> values;
  };

  // Parses spec_json ({"version": 1, "terms": [...]}) and binds it to `model`, which must outlive
  // the builder. Throws ObservationError naming the first offending term.
  ObservationBuilder(const std::string& spec_json, const mjModel* model);

  // The observation spec stored in a policy's metadata (PolicyRuntime::metadata().json), as the JSON
  // text the constructor takes (and TerminationCheck's). Older files are rewritten to a spec here:
  // pydpg 0.1's task.observation slices become terms, and the task.health conditions of 0.1/0.2
  // become termination conditions (those that read 'state' = qpos ++ qvel need `model` to be split).
  // Throws ObservationError when the policy carries no observation layout.
  static std::string spec_from_policy_metadata(const std::string& metadata_json, const mjModel* model = nullptr);

  int size() const { return size_; }
  // The width of the base: every term once, without history (== size() when no term has history).
  int base_size() const { return base_size_; }
  bool has_history() const { return has_history_; }
  const std::vector<Term>& terms() const { return terms_; }
  const std::vector<std::string>& input_names() const { return input_names_; }
  int input_size(const std::string& name) const;

  // Copies `n` values into the named external input. Every input must be set before build().
  void set_input(const std::string& name, const float* values, int n);

  // obs[0 .. size()) from `data` (of the model the builder was bound to), recording this step in
  // the history rings. No allocation. Not for two threads at once (set_input and the rings are the
  // builder's state): one builder per control thread.
  void build(const mjData* data, float* obs);
  // The same values unrounded, in float64 (what a bound on them is compared with).
  void build(const mjData* data, double* values);
  // obs[0 .. size()) from the base's current values (base_size() of them, inputs included at their
  // places), recording them in the rings: a training env whose own observation is the base (verified
  // so) observes through the same history as the loop, noise and all.
  void build_from_current(const double* current, float* obs);
  // The base's current values (base_size() of them, inputs included), unrounded, leaving the rings
  // as they are: what a loop perturbs (pydpg::DomainRandomization::observe) before build_from_current.
  void build_base(const mjData* data, double* base) const;
  // Forget the history: the next build fills every slot with its current value. Call it when an
  // episode starts.
  void reset() { primed_ = false; }

  HistoryState history_state() const;
  // Puts back what history_state() returned (of a builder of the same spec and model).
  void load_history_state(const HistoryState& state);

 private:
  template <typename T>
  void build_into(const mjData* data, T* out);
  template <typename T>
  void evaluate(const mjData* data, T* current) const;
  template <typename T>
  void emit(const double* current, T* out);
  enum class Fn : std::uint8_t { None, Sin, Cos };
  struct Part {
    int field = -1;               // index into the field table; -1: external input
    int input = -1;               // index of the external input
    std::vector<int> src, minus;  // per output entry: index into the field (minus: -1 if none)
    int minus_field = -1;
    double scale = 1.0, offset = 0.0;
    Fn fn = Fn::None;
    bool clip = false;
    double lo = 0.0, hi = 0.0;
    int width = 0, history = 1, base_offset = 0;
    std::size_t ring = 0;  // where its history slots start in history_
    int head = 0;          // the slot holding its oldest value
  };

  const mjModel* model_;
  std::vector<Part> parts_;
  std::vector<Term> terms_;
  std::vector<std::string> input_names_;
  std::vector<std::vector<float>> inputs_;
  std::vector<char> input_set_;
  std::vector<double> current_;  // the base, evaluated by build()
  std::vector<double> history_;  // every history term's k slots of its width
  bool primed_ = false, has_history_ = false;
  int size_ = 0, base_size_ = 0;
};

// When an episode ends: the spec's optional "termination" list, each a condition on one term (the
// same term grammar as the observation's, external inputs excepted) with bounds
// {"min", "max", "strict" (default true: min < v < max), "finite"}. A robot's loop uses it as a
// safety stop ("torso below h"); the control loop ends an episode when a condition fails, as
// Gymnasium's terminate_when_unhealthy does. Values are compared unrounded, in float64.
class TerminationCheck {
 public:
  struct Condition {
    std::string label;  // e.g. "qpos[1:2] > 0.7"
    int offset = 0, size = 0;
    double lo = 0, hi = 0;
    bool strict = true, finite = false;
    // Whether its `size` values (in the order evaluate() writes them) are all within the bounds.
    bool holds(const double* values) const;
  };

  // Binds spec_json's "termination" list (absent or empty: no condition, never fails) to `model`,
  // which must outlive the check. Throws ObservationError naming the first offending condition.
  TerminationCheck(const std::string& spec_json, const mjModel* model);
  ~TerminationCheck();

  const std::vector<Condition>& conditions() const { return conditions_; }
  // -1 while every condition holds, else the index of the first that fails. No allocation; one
  // check per control thread (it evaluates into its own buffer).
  int first_failure(const mjData* data) const;
  bool holds(const mjData* data) const { return first_failure(data) < 0; }
  // Every condition at once, for reports: values[value_count()] (condition i's at its offset) and
  // failed[conditions().size()] (1 where it fails).
  void evaluate(const mjData* data, double* values, unsigned char* failed) const;
  int value_count() const { return static_cast<int>(values_.size()); }

 private:
  std::unique_ptr<ObservationBuilder> terms_;
  std::vector<Condition> conditions_;
  mutable std::vector<double> values_;
};

}  // namespace pydpg
