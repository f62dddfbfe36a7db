// pydpg_control_loop: runs an exported policy against MuJoCo at a fixed control rate, no Python.
//
// Everything robot-specific is data in the policy's metadata: the MuJoCo model, the physics steps per
// control step ("task": frame_skip, timestep, max_episode_steps), and the observation spec, which
// says how pydpg::ObservationBuilder assembles observations from mjData and, optionally, when an
// episode ends (pydpg::TerminationCheck). The exporter writes them only after checking them against
// the Gymnasium env. There is no per-task code here: no reward, no reset noise. Episodes start from
// --init-states (`pydpg run` samples them from the env's own reset) or from the model's qpos0, and
// returns come from replaying the --trace through the env in Python (pydpg.deploy.replay_trace).
//
// Timing: each control period has an absolute deadline t0 + k * period (clock_nanosleep with
// TIMER_ABSTIME), so jitter in one step does not shift later ones. A step whose work ends after its
// deadline is a miss; after a miss the schedule restarts from "now" rather than bursting to catch up.
//
// Under --randomization (a spec file, or "policy": the one the policy was trained under) the loop
// perturbs what it runs with pydpg::DomainRandomization, the unit training's envs use: model fields
// redrawn per episode, noise on the observation's base (before any history), action noise and delay
// between the policy and the action map, pushes. --randomization-seed seeds it as an env's reset seed
// seeds the training wrapper: the same draws, so a replay through the randomized env is exact.
//
// Usage: pydpg_control_loop POLICY [--model XML] [--hz HZ] [--episodes N] [--max-steps N]
//        [--no-sleep] [--threads N] [--on-nonfinite raise|hold|safe]
//        [--init-states FILE] [--json OUT] [--trace OUT] [--quiet]
//        [--randomization FILE|policy] [--randomization-seed N]
#include <mujoco/mujoco.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "pydpg/action.hpp"
#include "pydpg/fixed_rate.hpp"
#include "json_access.hpp"
#include "pydpg/observation.hpp"
#include "pydpg/percentiles.hpp"
#include "pydpg/policy_runtime.hpp"
#include "pydpg/randomization.hpp"

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct TaskError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: pydpg_control_loop POLICY [--model XML] [--hz HZ] [--episodes N] [--max-steps N]\n"
    "                          [--no-sleep] [--threads N] [--on-nonfinite raise|hold|safe]\n"
    "                          [--init-states FILE] [--json OUT] [--trace OUT] [--quiet]\n"
    "                          [--randomization FILE|policy] [--randomization-seed N]\n";

struct Args {
  std::string policy, model, json_out, trace_out, init_states, on_nonfinite = "hold", randomization;
  unsigned long long randomization_seed = 0;
  double hz = 0.0;  // 0: the env's own control rate
  long episodes = 1, max_steps = 0, threads = 1;
  bool sleep = true, quiet = false;
};

long parse_long(const std::string& flag, const std::string& v, long lo, long hi) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi)
    throw UsageError(flag + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" +
                     v + "'");
  return x;
}

Args parse_args(int argc, char** argv) {
  Args a;
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(s + " needs a value");
      return argv[++i];
    };
    if (s == "--model")
      a.model = value();
    else if (s == "--hz") {
      const std::string v = value();
      char* end = nullptr;
      a.hz = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(a.hz > 0) || !std::isfinite(a.hz))
        throw UsageError("--hz expects a positive number, got '" + v + "'");
    } else if (s == "--episodes")
      a.episodes = parse_long(s, value(), 1, 1000000);
    // A billion actions per episode, as task.max_episode_steps: no product of them overflows.
    else if (s == "--max-steps")
      a.max_steps = parse_long(s, value(), 1, 1000000000);
    else if (s == "--threads")
      a.threads = parse_long(s, value(), 1, 1024);
    else if (s == "--on-nonfinite")
      a.on_nonfinite = value();
    else if (s == "--init-states")
      a.init_states = value();
    else if (s == "--json")
      a.json_out = value();
    else if (s == "--trace")
      a.trace_out = value();
    else if (s == "--randomization")
      a.randomization = value();
    else if (s == "--randomization-seed") {
      const std::string v = value();
      char* end = nullptr;
      errno = 0;
      a.randomization_seed = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0)
        throw UsageError("--randomization-seed expects a whole number >= 0, got '" + v + "'");
    } else if (s == "--no-sleep")
      a.sleep = false;
    else if (s == "--quiet")
      a.quiet = true;
    else if (s == "-h" || s == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (!s.empty() && s[0] == '-')
      throw UsageError("unknown option " + s);
    else
      rest.push_back(s);
  }
  if (rest.size() != 1) throw UsageError("expected exactly one POLICY file");
  a.policy = rest[0];
  return a;
}

// ---------------------------------------------------------------------------------------- task
struct Task {
  pydpg::TaskTiming timing;  // the policy's own (PolicyRuntime::task_timing), checked when it loaded
  std::string spec;          // observation spec JSON, with its optional termination conditions
};

Task parse_task(const pydpg::PolicyRuntime& policy, const mjModel* m) {
  if (!policy.metadata().has_task)
    throw TaskError(
        "the policy carries no task description (metadata 'task'): it was exported without a MuJoCo "
        "env, so the loop does not know its control rate; export it with env= (or --env)");
  Task k;
  k.timing = policy.task_timing();
  k.spec = pydpg::ObservationBuilder::spec_from_policy_metadata(policy.metadata().json, m);
  return k;
}

// An input file must be a regular file: a FIFO or a device would block the loop's start, or never end.
void check_regular_file(const std::string& path, const std::string& flag) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) throw UsageError("cannot read " + flag + " file '" + path + "'");
  if (!S_ISREG(st.st_mode)) throw UsageError(flag + " '" + path + "' is not a regular file");
}

std::vector<std::vector<double>> read_init_states(const std::string& path, const mjModel* m) {
  check_regular_file(path, "--init-states");
  std::ifstream f(path);
  if (!f) throw UsageError("cannot open --init-states file '" + path + "'");
  std::vector<std::vector<double>> states;
  std::string line;
  while (std::getline(f, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::istringstream in(line);
    std::vector<double> s;
    double x;
    while (in >> x) s.push_back(x);
    if (!in.eof() || static_cast<int>(s.size()) != m->nq + m->nv)
      throw UsageError("--init-states line " + std::to_string(states.size() + 1) +
                       " must hold nq + nv = " + std::to_string(m->nq + m->nv) + " numbers (qpos then qvel)");
    states.push_back(std::move(s));
  }
  if (states.empty()) throw UsageError("--init-states file '" + path + "' holds no states");
  return states;
}

void mujoco_warning(const char* msg) { std::fprintf(stderr, "mujoco warning: %s\n", msg); }

int run(const Args& a) {
  pydpg::PolicyOptions opt;
  opt.max_batch = 1;
  opt.num_threads = static_cast<int>(a.threads);
  opt.on_nonfinite = pydpg::parse_nonfinite_policy(a.on_nonfinite);
  pydpg::PolicyRuntime policy(a.policy, opt);

  // MuJoCo writes warnings to MUJOCO_LOG.TXT in the working directory by default; keep them on stderr.
  mju_user_warning = mujoco_warning;
  char err[1024] = {0};
  mjModel* m = nullptr;
  std::string model_name;
  if (!a.model.empty()) {
    m = mj_loadXML(a.model.c_str(), nullptr, err, sizeof err);
    model_name = a.model;
  } else {
    const std::string& xml = policy.extra_file("model.xml");
    if (xml.empty()) throw TaskError("the policy carries no MuJoCo model (model.xml); pass --model FILE.xml");
    mjVFS vfs;
    mj_defaultVFS(&vfs);
    mj_addBufferVFS(&vfs, "model.xml", xml.data(), static_cast<int>(xml.size()));
    m = mj_loadXML("model.xml", &vfs, err, sizeof err);
    mj_deleteVFS(&vfs);
    model_name = "model.xml embedded in the policy";
  }
  if (!m) throw TaskError("MuJoCo cannot load " + model_name + ": " + err);
  struct Cleanup {
    mjModel* m;
    mjData* d = nullptr;
    ~Cleanup() {
      if (d) mj_deleteData(d);
      mj_deleteModel(m);
    }
  } cleanup{m};
  // The action contract, if the policy has one: its map drives ctrl at every physics step.
  std::unique_ptr<pydpg::ActionMap> act_map;
  const std::string action_spec = pydpg::ActionMap::spec_from_policy_metadata(policy.metadata().json);
  if (!action_spec.empty()) {
    act_map = std::make_unique<pydpg::ActionMap>(action_spec, m);
    if (act_map->size() != policy.act_dim())
      throw TaskError("the policy's action spec lists " + std::to_string(act_map->size()) +
                      " outputs, the policy has act_dim " + std::to_string(policy.act_dim()));
  } else if (m->nu != policy.act_dim()) {
    throw TaskError("the model " + model_name + " has " + std::to_string(m->nu) +
                    " actuators, the policy has act_dim " + std::to_string(policy.act_dim()));
  }
  const Task task = parse_task(policy, m);
  pydpg::ObservationBuilder observe(task.spec, m);
  const pydpg::TerminationCheck termination(task.spec, m);
  if (observe.size() != policy.obs_dim())
    throw TaskError("the observation spec builds " + std::to_string(observe.size()) + " values from " + model_name +
                    ", the policy expects obs_dim " + std::to_string(policy.obs_dim()) +
                    " (is --model the model it was trained on?)");
  // The loop fills one external input itself: the previous action (zeros at an episode's start).
  bool feeds_prev_action = false;
  for (const std::string& name : observe.input_names()) {
    if (name == "prev_action" && observe.input_size(name) == policy.act_dim())
      feeds_prev_action = true;
    else
      throw TaskError("the observation spec has an external input '" + name +
                      "' that pydpg_control_loop cannot fill "
                      "(it fills only prev_action of act_dim entries); a robot's own loop sets it with "
                      "ObservationBuilder::set_input");
  }
  const pydpg::TaskTiming& timing = task.timing;
  if (m->opt.timestep != timing.timestep && !a.quiet)  // the same double, through JSON's %.17g
    std::fprintf(stderr, "warning: the model's timestep %g differs from the training env's %g\n", m->opt.timestep,
                 timing.timestep);
  mjData* d = mj_makeData(m);
  cleanup.d = d;

  // Randomization: between the policy and the action map (the map's inputs are [-1, 1]; without a
  // map, the policy's own bounds), and on the observation's base. Declared after the model's owner,
  // so that it puts the nominal model back before the model is deleted.
  std::unique_ptr<pydpg::DomainRandomization> randomize;
  std::vector<double> base(static_cast<std::size_t>(observe.base_size())), act_in, applied;
  std::vector<float> sent;
  std::vector<long> delays;
  if (!a.randomization.empty()) {
    std::string spec;
    if (a.randomization == "policy") {
      spec = pydpg::DomainRandomization::spec_from_policy_metadata(policy.metadata().json);
      if (spec.empty()) throw UsageError("--randomization policy: the policy was trained without randomization");
    } else {
      check_regular_file(a.randomization, "--randomization");
      std::ifstream f(a.randomization);
      if (!f) throw UsageError("cannot read --randomization file '" + a.randomization + "'");
      std::stringstream text;
      text << f.rdbuf();
      spec = text.str();
    }
    const int A = static_cast<int>(policy.act_dim());
    std::vector<double> low(A, -1.0), high(A, 1.0);
    if (!act_map)
      for (int i = 0; i < A; ++i) {
        low[i] = policy.metadata().action_low.at(i);
        high[i] = policy.metadata().action_high.at(i);
      }
    randomize = std::make_unique<pydpg::DomainRandomization>(spec, m, observe.base_size(), A, low.data(), high.data());
    randomize->seed(a.randomization_seed);
    act_in.resize(A);
    applied.resize(A);
    sent.resize(A);
  }

  const double env_hz = 1.0 / (m->opt.timestep * timing.frame_skip);
  const double hz = a.hz > 0 ? a.hz : env_hz;
  int substeps = 0;
  try {
    substeps = pydpg::physics_steps_per_action(m->opt.timestep, hz);
  } catch (const pydpg::PolicyArgumentError& e) {
    throw UsageError(std::string("--hz: ") + e.what());
  }
  if (substeps != timing.frame_skip && !a.quiet)
    std::fprintf(stderr, "warning: --hz %g gives %d physics steps per action; the policy was trained with %d\n", hz,
                 substeps, timing.frame_skip);
  const long long period_ns = static_cast<long long>(std::llround(1e9 / hz));
  const long max_steps = a.max_steps > 0 ? a.max_steps : static_cast<long>(timing.max_episode_steps);

  std::vector<std::vector<double>> init;
  if (!a.init_states.empty()) init = read_init_states(a.init_states, m);
  const long episodes = init.empty() ? a.episodes : static_cast<long>(init.size());

  std::FILE* trace = nullptr;
  if (!a.trace_out.empty()) {
    trace = std::fopen(a.trace_out.c_str(), "w");
    if (!trace) throw UsageError("cannot write --trace file '" + a.trace_out + "'");
    // Enough to replay the run in the Gymnasium env (pydpg.deploy.replay_trace): each episode's
    // initial qpos/qvel, per step the observation the policy saw and the action it sent, and how
    // the episode ended (the failed termination condition's index, or -1).
    std::fprintf(trace, "# pydpg control loop trace 2: nq %lld nv %lld act_dim %ld obs_dim %ld\n",
                 static_cast<long long>(m->nq), static_cast<long long>(m->nv), static_cast<long>(policy.act_dim()),
                 static_cast<long>(policy.obs_dim()));
    std::fputs("# init,episode,qpos...,qvel... | step,episode,t,action...,observation... | end,episode,steps,failed\n",
               trace);
  }

  const int D = static_cast<int>(policy.obs_dim()), A = static_cast<int>(policy.act_dim());
  std::vector<float> obs(D), action(A), seen(D);
  // Step times of the most recent kStepWindow steps, in a ring allocated before the loop starts (the
  // runtime's own latency keeps its window alike): a billion-step run needs no 8 GB of samples.
  constexpr long kStepWindow = 1L << 20;
  std::vector<double> step_us(
      static_cast<std::size_t>(std::min(kStepWindow, std::max(1L, episodes) * std::min(max_steps, kStepWindow))));
  std::size_t step_count = 0;
  std::vector<long> lengths;
  std::vector<int> failed_conditions;
  lengths.reserve(static_cast<std::size_t>(episodes));
  failed_conditions.reserve(static_cast<std::size_t>(episodes));
  long steps_total = 0;
  pydpg::FixedRateClock clock(period_ns);
  policy.reset_latency();
  const auto wall0 = std::chrono::steady_clock::now();

  // The observation: with randomization, its base gets the noise before the history records it.
  auto observe_now = [&] {
    if (!randomize) return observe.build(d, obs.data());
    observe.build_base(d, base.data());
    randomize->observe(base.data());
    observe.build_from_current(base.data(), obs.data());
  };
  // One control step's actuation of `sent` (float: the policy's action, double: the randomized one).
  auto actuate = [&](const auto* sent) {
    if (act_map) {
      act_map->command(sent);      // a non-finite action becomes the safe action (counted)
      act_map->step(d, substeps);  // the PD law, where the spec has one, at the physics rate
    } else {
      for (int i = 0; i < A; ++i) d->ctrl[i] = sent[i];
      for (int i = 0; i < substeps; ++i) mj_step(m, d);
      // Gymnasium calls this after stepping so that cacc/cfrc_* are up to date for observations.
      mj_rnePostConstraint(m, d);
    }
  };
  for (long ep = 0; ep < episodes; ++ep) {
    if (randomize) {  // before the reset, as the training wrapper draws before the env's own reset
      randomize->reset();
      delays.push_back(randomize->delay());
    }
    mj_resetData(m, d);
    if (act_map) act_map->reset();
    if (!init.empty()) {
      for (int i = 0; i < m->nq; ++i) d->qpos[i] = init[ep][i];
      for (int i = 0; i < m->nv; ++i) d->qvel[i] = init[ep][m->nq + i];
    }
    mj_forward(m, d);
    if (trace) {
      std::fprintf(trace, "init,%ld", ep);
      for (int i = 0; i < m->nq; ++i) std::fprintf(trace, ",%.17g", d->qpos[i]);
      for (int i = 0; i < m->nv; ++i) std::fprintf(trace, ",%.17g", d->qvel[i]);
      std::fputc('\n', trace);
    }
    if (feeds_prev_action) {
      std::fill(action.begin(), action.end(), 0.0f);
      observe.set_input("prev_action", action.data(), A);
    }
    observe.reset();  // a new episode: history terms start from this first observation
    observe_now();

    long t = 0;
    int failed = -1;
    clock.start();
    while (t < max_steps && failed < 0) {
      const auto s0 = std::chrono::steady_clock::now();
      if (trace) std::copy(obs.begin(), obs.end(), seen.begin());
      policy.act(obs.data(), 1, action.data());
      if (randomize) {  // noise, clip and delay; this step's pushes go to xfrc_applied
        std::copy(action.begin(), action.end(), act_in.begin());
        randomize->step(act_in.data(), applied.data(), d);
        // In the policy's float32, as the training wrapper hands the env an action of the policy's type.
        std::copy(applied.begin(), applied.end(), sent.begin());
        actuate(sent.data());
      } else {
        actuate(action.data());
      }
      if (feeds_prev_action) observe.set_input("prev_action", action.data(), A);
      observe_now();
      failed = termination.first_failure(d);
      ++t;
      step_us[step_count++ % step_us.size()] =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - s0).count();
      if (trace) {
        std::fprintf(trace, "step,%ld,%ld", ep, t - 1);
        for (int i = 0; i < A; ++i) std::fprintf(trace, ",%.9g", action[i]);
        for (int i = 0; i < D; ++i) std::fprintf(trace, ",%.9g", seen[i]);
        std::fputc('\n', trace);
      }
      if (a.sleep) clock.wait();
    }
    if (trace) std::fprintf(trace, "end,%ld,%ld,%d\n", ep, t, failed);
    steps_total += t;
    lengths.push_back(t);
    failed_conditions.push_back(failed);
    if (!a.quiet) {
      std::printf("episode %ld: %ld steps", ep, t);
      if (failed >= 0) std::printf(" (terminated: %s failed)", termination.conditions()[failed].label.c_str());
      std::printf("\n");
    }
  }
  if (trace) {
    const bool failed_write = std::ferror(trace) != 0;
    if (std::fclose(trace) != 0 || failed_write)
      throw std::runtime_error("cannot write the --trace file '" + a.trace_out + "': " + std::strerror(errno));
  }
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();

  const pydpg::LatencyStats lat = policy.latency();
  step_us.resize(std::min(step_count, step_us.size()));  // the samples taken (episodes may end early)
  const pydpg::Percentiles st = pydpg::summarize(step_us);
  const long misses = static_cast<long>(clock.misses());
  const pydpg::GuardStats g = policy.guard_stats();

  if (!a.quiet) {
    std::printf("\npolicy %s (backend %s, %d thread%s) on %s\n", a.policy.c_str(), policy.backend().c_str(),
                static_cast<int>(a.threads), a.threads == 1 ? "" : "s", model_name.c_str());
    std::printf("control rate %.2f Hz (period %.3f ms, %d physics steps of %g s)%s\n", hz, period_ns / 1e6, substeps,
                m->opt.timestep, a.sleep ? "" : ", free-running (--no-sleep)");
    std::printf("%ld episode(s), %ld steps in %.2f s\n\n", episodes, steps_total, wall_s);
    std::printf("%-22s %10s %10s %10s %10s %10s %10s\n", "latency (us)", "mean", "p50", "p90", "p99", "p99.9", "max");
    std::printf("%-22s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", "policy act()", lat.mean_us, lat.p50_us,
                lat.p90_us, lat.p99_us, lat.p999_us, lat.max_us);
    std::printf("%-22s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", "step (act+physics+obs)", st.mean, st.p50, st.p90,
                st.p99, st.p999, st.max);
    if (a.sleep) std::printf("\ndeadline misses: %ld of %ld periods\n", misses, steps_total);
    if (randomize) std::printf("randomization: seed %llu, %zu episode(s) drawn\n", a.randomization_seed, delays.size());
    if (act_map) {
      const auto& c = act_map->counters();
      std::printf(
          "action contract: %ld command(s); %ld clipped to [-1, 1], %ld rate limited, %ld safe action(s), "
          "%ld physics step(s) with ctrl clipped\n",
          c.commands, c.action_clips, c.rate_limits, c.safe_actions, c.ctrl_clips);
    }
    if (g.nonfinite_obs_rows || g.nonfinite_action_rows)
      std::printf("non-finite guard: %llu observation(s), %llu action(s) replaced (%s)\n",
                  static_cast<unsigned long long>(g.nonfinite_obs_rows),
                  static_cast<unsigned long long>(g.nonfinite_action_rows), a.on_nonfinite.c_str());
  }

  if (!a.json_out.empty()) {
    using pydpg::Json;
    // JSON has no NaN/Inf: a statistic that is not finite (no samples) is written as null.
    auto num = [](double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); };
    Json terminated = Json::array(), terminated_by = Json::array();
    for (int f : failed_conditions) {
      terminated.push_back(f >= 0);
      terminated_by.push_back(f >= 0 ? Json(termination.conditions()[f].label) : Json(nullptr));
    }
    Json report = {
        {"lengths", lengths},
        {"terminated", terminated},
        {"terminated_by", terminated_by},
        {"steps", steps_total},
        {"hz", num(hz)},
        {"substeps", substeps},
        {"realtime", a.sleep},
        {"deadline_misses", misses},
        {"wall_s", num(wall_s)},
        {"backend", policy.backend()},
        {"latency_us",
         {{"count", lat.count},
          {"mean", num(lat.mean_us)},
          {"p50", num(lat.p50_us)},
          {"p90", num(lat.p90_us)},
          {"p99", num(lat.p99_us)},
          {"p999", num(lat.p999_us)},
          {"max", num(lat.max_us)}}},
        {"step_us",
         {{"count", st.n},
          {"mean", num(st.mean)},
          {"p50", num(st.p50)},
          {"p90", num(st.p90)},
          {"p99", num(st.p99)},
          {"p999", num(st.p999)},
          {"max", num(st.max)}}},
        {"guard", {{"nonfinite_obs_rows", g.nonfinite_obs_rows}, {"nonfinite_action_rows", g.nonfinite_action_rows}}},
    };
    if (randomize) report["randomization"] = {{"seed", a.randomization_seed}, {"delays", delays}};
    if (randomize) report["randomization"] = {{"seed", a.randomization_seed}, {"delays", delays}};
    if (act_map) {
      const auto& c = act_map->counters();
      report["action"] = {{"commands", c.commands},
                          {"action_clips", c.action_clips},
                          {"rate_limits", c.rate_limits},
                          {"safe_actions", c.safe_actions},
                          {"ctrl_clips", c.ctrl_clips}};
    }
    std::ofstream j(a.json_out);
    if (!j) throw UsageError("cannot write --json file '" + a.json_out + "'");
    // error_handler replace: a model or file name that is not valid UTF-8 must not abort the report.
    j << report.dump(1, ' ', false, Json::error_handler_t::replace) << "\n";
    j.close();
    if (!j) throw std::runtime_error("cannot write the --json file '" + a.json_out + "' (disk full?)");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::fprintf(stderr, "pydpg_control_loop: error: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pydpg_control_loop: error: %s\n", e.what());
    return 1;
  }
}
