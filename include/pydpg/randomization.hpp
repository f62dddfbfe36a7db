// Domain randomization as data: what training varies so that a policy survives the real robot, and
// what `pydpg robustness` and a robot team's own C++ tests perturb to ask whether it does.
//
// A spec (JSON, versioned; stored with the run and in the policy metadata under "randomization"):
//
//   {"version": 1,
//    "model": [{"field": "body_mass", "scale": [0.7, 1.3]},            // redrawn at every reset
//              {"field": "geom_friction", "names": ["foot_geom"], "scale": [0.5, 1.5]},
//              {"field": "dof_damping", "offset": [0.0, 0.5], "shared": true}],
//    "observation": {"noise": 0.01},                                  // N(0, std) per entry, per step
//    "action": {"noise": 0.05, "delay": [0, 2]},                      // std in half-ranges; control steps
//    "push": [{"body": "torso", "interval": [100, 300], "force": [0, 50], "duration": 1}]}
//
// - model: an mjModel array times `scale` or plus `offset`, drawn uniformly per object (or once for
//   all, `shared`) for the objects `names` or `indices` select (every one by default; a joint owns its
//   dofs). The nominal model is put back, exactly, before each draw and when the object is destroyed.
// - observation.noise: Gaussian noise on the observation (one std, or one per entry).
// - action.noise: Gaussian noise in half-ranges of the action bounds, then clipped to them.
//   action.delay: the env applies the action of d control steps ago, d drawn per episode from
//   [low, high] (<= kMaxDelay); the first d steps apply the middle of the bounds.
// - push: a force of a magnitude drawn from `force` (N), in a random horizontal direction, on the
//   body's centre of mass for `duration` control steps, every `interval` steps (drawn per push).
//
// DomainRandomization binds a spec to a model once (the model is the caller's and must outlive it);
// reset(), step() and observe() then run with no allocation. Its random numbers are its own
// (xoshiro256**, seeded by seed()), so a run is a function of its seed on any machine, and state()
// / load_state() save and restore everything it remembers. It is the one implementation: the
// Gymnasium wrapper training uses (through the binding), the C++ control loop and users' programs.
#pragma once

#include <mujoco/mujoco.h>

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pydpg {

// A spec that is malformed (unknown key or field, a non-finite number, a range out of order), or that
// cannot be bound to the model (an unknown name or index, a range that makes a mass, inertia,
// friction, damping, armature or stiffness negative), or a call that breaks the contract (wrong
// sizes, a corrupt state). The bindings turn it into ValueError.
struct RandomizationError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class DomainRandomization {
 public:
  static constexpr int kSpecVersion = 1;
  static constexpr int kMaxDelay = 20;  // control steps an action may wait; a longer delay is another task

  // The spec checked without a model and written with every default: what is stored with a run and
  // in a policy file. Throws RandomizationError naming the first offending entry.
  static std::string canonical_spec(const std::string& spec_json);
  // The spec in a policy's metadata ("randomization"), or "" when it has none.
  static std::string spec_from_policy_metadata(const std::string& metadata_json);
  // Every key the reader accepts, as (key, where it stands: "" the top, "model[]", "observation",
  // "action", "push[]"), and every model field with the kind of object its rows belong to and
  // whether its values must stay >= 0: what the documentation lists.
  static std::vector<std::pair<std::string, std::string>> spec_keys();
  struct FieldInfo {
    std::string name, kind;
    bool nonnegative;
  };
  static std::vector<FieldInfo> fields();

  // Binds the spec to `model`, whose arrays it rewrites per episode. `obs_size` observations;
  // `act_size` actions bounded by act_low/act_high (finite, low < high).
  DomainRandomization(const std::string& spec_json, mjModel* model, int obs_size, int act_size, const double* act_low,
                      const double* act_high);
  ~DomainRandomization();  // the nominal model back
  DomainRandomization(const DomainRandomization&) = delete;
  DomainRandomization& operator=(const DomainRandomization&) = delete;

  const std::string& spec() const;  // canonical
  int obs_size() const;
  int act_size() const;

  void seed(std::uint64_t seed);
  // An episode's start, before the env's own reset: the nominal model back, then a new draw of every
  // model entry, of the delay and of each push's first time.
  void reset();
  // One control step: `applied` (act_size values) is what the env applies for `action` (noise,
  // clip, delay), and this step's pushes are written to data->xfrc_applied (of the bound model).
  void step(const double* action, double* applied, mjData* data);
  // The observation's noise, added in place (obs_size values).
  void observe(double* obs);
  void observe(float* obs);
  // The nominal model, exactly (saved copies), until the next reset().
  void restore_nominal();

  int delay() const;  // this episode's delay, in control steps
  // The current values of every randomized row, entry by entry (for reports and tests).
  std::vector<double> drawn_values() const;

  // Everything it remembers: its random stream, the model values drawn, the delayed actions (oldest
  // first), the step count and each push's schedule and force.
  struct State {
    std::array<std::uint64_t, 4> rng{};
    std::vector<double> values;
    std::vector<double> queue;  // delay() * act_size()
    long t = 0;
    std::vector<long> next_push, push_until;
    std::vector<double> force;  // 3 per push
  };
  State state() const;
  // Puts back what state() returned (of an object of the same spec and model); a state of other
  // sizes, an all-zero random state or a negative value where the spec needs none is refused.
  void load_state(const State& state);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pydpg
