// The custom robot's policy driven from C++: pydpg::runtime computes actions, pydpg::mujoco builds
// the observation from mjData with the spec stored in the policy file and checks the spec's
// termination conditions (a safety stop; the arm's spec states none, Hopper's would stop a fallen
// robot), and, where the policy carries an action contract, pydpg::ActionMap turns its actions into
// ctrl (position targets and the PD law at every physics step, clips, rate limit, safe action).
// No Python, no task code.
//
//   cmake -S examples/custom_robot -B build -Dpydpg_DIR="$(python -m pydpg --cmake-dir)"
//   cmake --build build && ./build/robot_loop arm_policy.pt examples/custom_robot/arm.xml 200
//
// A real robot's loop reads its sensors into mjData (or fills ObservationBuilder inputs) where this
// one steps the simulator, and keeps the deadline schedule of examples/cpp_control_loop.
#include <mujoco/mujoco.h>
#include <pydpg/action.hpp>
#include <pydpg/observation.hpp>
#include <pydpg/policy_runtime.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: robot_loop POLICY MODEL.xml STEPS\n");
    return 2;
  }
  char error[1000] = "";
  mjModel* m = mj_loadXML(argv[2], nullptr, error, sizeof error);
  if (!m) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[2], error);
    return 1;
  }
  mjData* d = mj_makeData(m);
  int rc = 0;
  try {
    pydpg::PolicyRuntime policy(argv[1]);
    // Binds the spec to this model: names are resolved here, a missing sensor or site is an error now.
    const std::string spec = pydpg::ObservationBuilder::spec_from_policy_metadata(policy.metadata().json, m);
    pydpg::ObservationBuilder observe(spec, m);
    const pydpg::TerminationCheck safety_stop(spec, m);
    // The action contract, if the policy was trained under one ("" if not: its actions are ctrl).
    const std::string action_spec = pydpg::ActionMap::spec_from_policy_metadata(policy.metadata().json);
    std::unique_ptr<pydpg::ActionMap> act_map;
    if (!action_spec.empty()) act_map = std::make_unique<pydpg::ActionMap>(action_spec, m);
    const int outputs = act_map ? act_map->size() : m->nu;
    if (observe.size() != policy.obs_dim() || outputs != policy.act_dim()) {
      std::fprintf(stderr, "the policy does not fit this model (obs %d vs %lld, actions %d vs %lld)\n", observe.size(),
                   static_cast<long long>(policy.obs_dim()), outputs, static_cast<long long>(policy.act_dim()));
      rc = 1;
    } else {
      d->qpos[2] = 0.25;  // the target, on its two slide joints
      d->qpos[3] = 0.1;
      mj_forward(m, d);
      std::vector<float> obs(observe.size()), action(policy.act_dim());
      // The training env's timing travels in the file: physics steps per action at its control rate
      // (the arm's: 4 steps of 0.01 s, 25 Hz), computed as the shipped control loop computes it.
      const pydpg::TaskTiming& timing = policy.task_timing();
      const int frame_skip = pydpg::physics_steps_per_action(m->opt.timestep, timing.control_hz);
      const long steps = std::atol(argv[3]);
      long t = 0;
      int stopped_by = -1;
      // One episode from a fresh builder; a loop of several calls observe.reset() at each start, so
      // that terms with a history start over (docs/deployment.md, "Observation history").
      for (; t < steps && stopped_by < 0; ++t) {
        observe.build(d, obs.data());
        policy.act(obs.data(), 1, action.data());
        if (act_map) {
          act_map->command(action.data());  // a NaN action sends the safe action instead
          for (int k = 0; k < frame_skip; ++k) {
            act_map->apply(d);  // the PD law runs at the physics rate
            mj_step(m, d);
          }
        } else {
          for (int i = 0; i < m->nu; ++i) d->ctrl[i] = action[i];
          for (int k = 0; k < frame_skip; ++k) mj_step(m, d);
        }
        stopped_by = safety_stop.first_failure(d);
      }
      if (stopped_by >= 0) {
        std::fprintf(stderr, "safety stop after %ld steps: %s failed\n", t,
                     safety_stop.conditions()[stopped_by].label.c_str());
        if (act_map) {  // a failed condition is the stop: the safe action goes out, not the policy's
          act_map->command_safe();
          act_map->apply(d);
        }
      }
      observe.build(d, obs.data());
      const int n = observe.size();
      const double dist = std::hypot(obs[n - 2], obs[n - 1]);  // the last term: fingertip - target
      const pydpg::LatencyStats lat = policy.latency();
      std::printf(
          "{\"steps\": %ld, \"obs_dim\": %d, \"final_distance\": %.6f, \"act_p50_us\": %.2f, \"safe_actions\": %ld}\n",
          t, n, dist, lat.p50_us, act_map ? act_map->counters().safe_actions : 0L);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    rc = 1;
  }
  mj_deleteData(d);
  mj_deleteModel(m);
  return rc;
}
