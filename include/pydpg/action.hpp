// The action contract of a policy: how its output in [-1, 1] becomes the robot's actuator commands.
//
// A spec (JSON, versioned, stored in the policy metadata under "action") lists one entry per policy
// output, in order, each naming the actuator it drives ("actuator": its name, or "joint": the joint
// it drives, for models whose actuators are unnamed, as Gymnasium's are):
//
//   {"version": 1,
//    "actuators": [{"actuator": "hip", "scale": 0.5, "offset": 0.1,
//                   "pd": {"joint": "hip", "kp": 40, "kd": 1, "torque_limit": 30}}, ...],
//    "max_delta": 0.25, "safe_action": "default"}
//
// - command = offset + scale * a. Without "pd" the command is the actuator's ctrl; "scale"/"offset"
//   default to the actuator's ctrlrange (offset its middle, scale its half-width: today's mapping).
// - With "pd" the command is a position target for the named joint (offset defaults to the joint's
//   qpos0, the model's default pose: target = default_pose + scale * a; "pd.joint" defaults to the
//   joint the actuator drives) and a PD law runs at the
//   physics rate: ctrl = clip(kp * (target - q) - kd * qdot, +-torque_limit), for a torque actuator.
// - The action is clipped to [-1, 1] and, with "max_delta", moves at most that much per control step.
//   ctrl is clipped to the actuator's ctrlrange where the model limits it. Each clip is counted.
// - The safe action replaces a non-finite action, and is what command_safe() sends (a stale input, a
//   stop): "default" (a = 0: the default pose, or the middle of ctrlrange), "hold" (the last action
//   sent) or "zero" (ctrl 0 on the listed actuators, no PD).
// Actuators the spec does not list get ctrl 0.
//
// ActionMap binds a spec to an mjModel once; command() (control rate) and apply() (physics rate)
// then run with no allocation. It is the one evaluator: the Gymnasium wrapper that training uses
// (through the binding), the C++ control loop and a user's own C++ loop all run it.
#pragma once

#include <mujoco/mujoco.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace pydpg {

// A spec that cannot be bound to the model (unknown key or name, a non-finite or out-of-range
// number, a newer version), or a call that breaks the contract (wrong action size). The bindings
// turn it into ValueError.
struct ActionError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ActionMap {
 public:
  static constexpr int kSpecVersion = 1;
  enum class Safe { Default, Hold, Zero };

  struct Entry {
    std::string label;  // e.g. "hip" or "hip (PD on joint hip)", for messages and reports
    int actuator = -1;
    int qpos = -1, dof = -1;  // the PD joint's addresses, -1 without PD
    double scale = 1, offset = 0;
    double kp = 0, kd = 0, torque_limit = 0;  // torque_limit 0: none
    bool pd = false;
  };

  // What the map did, since construction (or reset_counters()).
  struct Counters {
    long commands = 0;      // command() and command_safe() calls
    long action_clips = 0;  // commands with some |a_i| > 1 clipped
    long rate_limits = 0;   // commands moved by max_delta
    long safe_actions = 0;  // commands that sent the safe action
    long ctrl_clips = 0;    // apply() calls with some ctrl clipped to ctrlrange or torque_limit
  };

  // Parses spec_json and binds it to `model`, which must outlive the map. Throws ActionError naming
  // the first offending entry.
  ActionMap(const std::string& spec_json, const mjModel* model);

  // The action spec in a policy's metadata (PolicyRuntime::metadata().json) as the JSON text the
  // constructor takes, or "" when the policy has none (its output goes to ctrl as it is).
  static std::string spec_from_policy_metadata(const std::string& metadata_json);

  int size() const { return static_cast<int>(entries_.size()); }  // the policy's action size
  const std::vector<Entry>& entries() const { return entries_; }
  bool has_pd() const { return has_pd_; }
  double max_delta() const { return max_delta_; }  // 0: no rate limit
  Safe safe_action() const { return safe_; }

  // Episode start: the previous action (what max_delta and "hold" refer to) becomes 0.
  void reset();
  // Control rate: takes the policy's action a[size()]; returns false when the safe action was sent
  // instead (a non-finite entry). No allocation.
  bool command(const float* action);
  bool command(const double* action);
  void command_safe();
  // Physics rate: writes ctrl for every actuator of `data` (of the bound model) from the last command
  // and, for PD entries, the joint's current position and velocity. No allocation.
  void apply(mjData* data);
  // One control step's physics, as Gymnasium's MujocoEnv steps it: `physics_steps` times apply() and
  // mj_step, then mj_rnePostConstraint (so that cacc/cfrc_* are current for the observation).
  void step(mjData* data, int physics_steps);

  // The action after clipping and rate limiting (what "hold" sends again), and the commands
  // (ctrl values, or PD targets) of the last command().
  const std::vector<double>& last_action() const { return action_; }
  const std::vector<double>& commands() const { return command_; }
  bool sending_zero() const { return zero_; }  // the "zero" safe action is in force
  // Puts back what last_action() and sending_zero() said (a checkpoint's resume): the next command's
  // rate limit and "hold" continue from it.
  void restore(const double* last_action, bool sending_zero);
  const Counters& counters() const { return counters_; }
  void reset_counters() { counters_ = Counters{}; }

 private:
  void bind(const std::string& spec_json);
  template <typename T>
  bool command_from(const T* action);
  void set_commands();

  const mjModel* model_;
  std::vector<Entry> entries_;
  std::vector<double> action_, command_;
  bool has_pd_ = false, zero_ = false;
  double max_delta_ = 0;
  Safe safe_ = Safe::Default;
  Counters counters_;
};

}  // namespace pydpg
