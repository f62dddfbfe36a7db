// pydpg_control_loop: runs an exported policy against MuJoCo at a fixed control rate, no Python.
//
// Everything env-specific comes from the policy's metadata ("task"): which MuJoCo model, how many
// physics steps per control step, how observations are assembled from mjData, the reward terms,
// the health (termination) conditions and the reset noise. The exporter writes that block only
// after checking it reproduces the Gymnasium env's observations, so this file has no per-env code.
//
// Timing: each control period has an absolute deadline t0 + k * period (clock_nanosleep with
// TIMER_ABSTIME), so jitter in one step does not shift later ones. A step whose work ends after its
// deadline is a miss; after a miss the schedule restarts from "now" rather than bursting to catch up.
//
// Usage: pydpg_control_loop POLICY [--model XML] [--hz HZ] [--episodes N] [--max-steps N]
//        [--seed S] [--no-sleep] [--threads N] [--on-nonfinite raise|hold|safe]
//        [--init-states FILE] [--json OUT] [--trace OUT] [--quiet]
#include <mujoco/mujoco.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "json.hpp"
#include "observation.hpp"
#include "policy_runtime.hpp"

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct TaskError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: pydpg_control_loop POLICY [--model XML] [--hz HZ] [--episodes N] [--max-steps N] [--seed S]\n"
    "                          [--no-sleep] [--threads N] [--on-nonfinite raise|hold|safe]\n"
    "                          [--init-states FILE] [--json OUT] [--trace OUT] [--quiet]\n";

struct Args {
  std::string policy, model, json_out, trace_out, init_states, on_nonfinite = "hold";
  double hz = 0.0;  // 0: the env's own control rate
  long episodes = 1, max_steps = 0, threads = 1;
  unsigned long long seed = 0;
  bool sleep = true, quiet = false;
};

long parse_long(const std::string& flag, const std::string& v, long lo) {
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo)
    throw UsageError(flag + " expects an integer >= " + std::to_string(lo) + ", got '" + v + "'");
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
    if (s == "--model") a.model = value();
    else if (s == "--hz") {
      const std::string v = value();
      char* end = nullptr;
      a.hz = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(a.hz > 0) || !std::isfinite(a.hz))
        throw UsageError("--hz expects a positive number, got '" + v + "'");
    } else if (s == "--episodes") a.episodes = parse_long(s, value(), 1);
    else if (s == "--max-steps") a.max_steps = parse_long(s, value(), 1);
    else if (s == "--seed") a.seed = static_cast<unsigned long long>(parse_long(s, value(), 0));
    else if (s == "--threads") a.threads = parse_long(s, value(), 1);
    else if (s == "--on-nonfinite") a.on_nonfinite = value();
    else if (s == "--init-states") a.init_states = value();
    else if (s == "--json") a.json_out = value();
    else if (s == "--trace") a.trace_out = value();
    else if (s == "--no-sleep") a.sleep = false;
    else if (s == "--quiet") a.quiet = true;
    else if (s == "-h" || s == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (!s.empty() && s[0] == '-') throw UsageError("unknown option " + s);
    else rest.push_back(s);
  }
  if (rest.size() != 1) throw UsageError("expected exactly one POLICY file");
  a.policy = rest[0];
  return a;
}

// ---------------------------------------------------------------------------------------- task spec
// Health conditions read these mjData slices (the observation itself is pydpg::ObservationBuilder's).
enum class Field { Qpos, Qvel, State, QfrcConstraint, CfrcExt };

Field parse_field(const std::string& s) {
  if (s == "qpos") return Field::Qpos;
  if (s == "qvel") return Field::Qvel;
  if (s == "state") return Field::State;  // qpos ++ qvel, Gymnasium's state_vector()
  if (s == "qfrc_constraint") return Field::QfrcConstraint;
  if (s == "cfrc_ext") return Field::CfrcExt;
  throw TaskError("unknown mjData field '" + s + "' in a health condition");
}

int field_size(const mjModel* m, Field f) {
  switch (f) {
    case Field::Qpos: return m->nq;
    case Field::Qvel: return m->nv;
    case Field::State: return m->nq + m->nv;
    case Field::QfrcConstraint: return m->nv;
    case Field::CfrcExt: return 6 * m->nbody;
  }
  return 0;
}

double field_value(const mjModel* m, const mjData* d, Field f, int i) {
  switch (f) {
    case Field::Qpos: return d->qpos[i];
    case Field::Qvel: return d->qvel[i];
    case Field::State: return i < m->nq ? d->qpos[i] : d->qvel[i - m->nq];
    case Field::QfrcConstraint: return d->qfrc_constraint[i];
    case Field::CfrcExt: return d->cfrc_ext[i];
  }
  return 0.0;
}

struct Slice {
  Field field = Field::Qpos;
  std::string name;
  int start = 0, stop = 0;
};

struct Condition {
  Slice slice;
  double lo = -HUGE_VAL, hi = HUGE_VAL;
  bool strict = true;
};

struct Task {
  int frame_skip = 1;
  double timestep = 0;
  long max_episode_steps = 1000;
  std::string observation_spec;  // JSON for pydpg::ObservationBuilder
  bool has_reward = false;        // no reward terms: returns are left to the Python replay (--trace)
  double forward_weight = 0, ctrl_cost_weight = 0, healthy_reward = 0;
  int x_index = 0;
  bool finite_obs_healthy = false, terminate_when_unhealthy = false;
  std::vector<Condition> health;
  std::string qpos_noise = "uniform", qvel_noise = "uniform";
  double qpos_scale = 0, qvel_scale = 0;
};

Slice parse_slice(const pydpg::Json& j, const mjModel* m, const std::string& what) {
  Slice s;
  s.name = j["field"].string(what + ".field");
  s.field = parse_field(s.name);
  const int size = field_size(m, s.field);
  s.start = j["start"].is_null() ? 0 : static_cast<int>(j["start"].integer(what + ".start"));
  s.stop = j["stop"].is_null() ? size : static_cast<int>(j["stop"].integer(what + ".stop"));
  if (s.start < 0 || s.stop > size || s.start > s.stop)
    throw TaskError(what + ": slice " + s.name + "[" + std::to_string(s.start) + ":" + std::to_string(s.stop) +
                    "] does not fit the model (" + s.name + " has " + std::to_string(size) + " entries)");
  return s;
}

Task parse_task(const pydpg::PolicyRuntime& policy, const mjModel* m) {
  const pydpg::Json meta = pydpg::Json::parse(policy.metadata().json);
  const pydpg::Json& t = meta["task"];
  if (!t.is_object())
    throw TaskError("the policy carries no task description (metadata 'task'): it was exported without a "
                    "supported Gymnasium MuJoCo env, so the control loop cannot build its observations");
  Task k;
  k.frame_skip = static_cast<int>(t["frame_skip"].integer("task.frame_skip"));
  k.timestep = t["timestep"].number("task.timestep");
  if (k.frame_skip < 1) throw TaskError("task.frame_skip must be >= 1");
  if (!t["max_episode_steps"].is_null()) k.max_episode_steps = t["max_episode_steps"].integer("task.max_episode_steps");
  k.observation_spec = pydpg::ObservationBuilder::spec_from_policy_metadata(policy.metadata().json);
  const pydpg::Json& r = t["reward"];
  k.has_reward = r.is_object();
  k.forward_weight = r["forward_weight"].is_null() ? 0.0 : r["forward_weight"].number("reward.forward_weight");
  k.ctrl_cost_weight = r["ctrl_cost_weight"].is_null() ? 0.0 : r["ctrl_cost_weight"].number("reward.ctrl_cost_weight");
  k.healthy_reward = r["healthy_reward"].is_null() ? 0.0 : r["healthy_reward"].number("reward.healthy_reward");
  k.x_index = r["x_index"].is_null() ? 0 : static_cast<int>(r["x_index"].integer("reward.x_index"));
  if (k.has_reward && (k.x_index < 0 || k.x_index >= m->nq)) throw TaskError("reward.x_index is outside qpos");
  const pydpg::Json& h = t["health"];
  k.finite_obs_healthy = h["finite_obs"].is_bool() && h["finite_obs"].boolean("");
  k.terminate_when_unhealthy = h["terminate_when_unhealthy"].is_bool() && h["terminate_when_unhealthy"].boolean("");
  for (const auto& c : h["conditions"].items()) {
    Condition cond;
    cond.slice = parse_slice(c, m, "task.health.conditions[]");
    if (!c["min"].is_null()) cond.lo = c["min"].number("min");
    if (!c["max"].is_null()) cond.hi = c["max"].number("max");
    cond.strict = !c["strict"].is_bool() || c["strict"].boolean("");
    k.health.push_back(cond);
  }
  const pydpg::Json& n = t["reset_noise"];
  if (n.is_object()) {
    k.qpos_noise = n["qpos"]["dist"].is_string() ? n["qpos"]["dist"].string("") : "uniform";
    k.qvel_noise = n["qvel"]["dist"].is_string() ? n["qvel"]["dist"].string("") : "uniform";
    k.qpos_scale = n["qpos"]["scale"].is_number() ? n["qpos"]["scale"].number("") : 0.0;
    k.qvel_scale = n["qvel"]["scale"].is_number() ? n["qvel"]["scale"].number("") : 0.0;
  }
  return k;
}

bool healthy(const Task& k, const mjModel* m, const mjData* d, const float* obs, int obs_dim) {
  if (k.finite_obs_healthy)
    for (int i = 0; i < obs_dim; ++i)
      if (!std::isfinite(obs[i])) return false;
  for (const auto& c : k.health)
    for (int i = c.slice.start; i < c.slice.stop; ++i) {
      const double v = field_value(m, d, c.slice.field, i);
      const bool ok = c.strict ? (c.lo < v && v < c.hi) : (c.lo <= v && v <= c.hi);
      if (!ok) return false;
    }
  return true;
}

// ---------------------------------------------------------------------------------------- statistics
struct Percentiles {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
  std::size_t n = 0;
};

Percentiles summarize(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    std::size_t rank = static_cast<std::size_t>(std::ceil(q * v.size()));
    return v[std::min(std::max<std::size_t>(rank, 1), v.size()) - 1];
  };
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / v.size();
  p.p50 = at(0.5);
  p.p90 = at(0.9);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.max = v.back();
  return p;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

void timespec_add(timespec& t, long long ns) {
  t.tv_nsec += ns;
  while (t.tv_nsec >= 1000000000L) {
    t.tv_nsec -= 1000000000L;
    ++t.tv_sec;
  }
}

bool later(const timespec& a, const timespec& b) {
  return a.tv_sec != b.tv_sec ? a.tv_sec > b.tv_sec : a.tv_nsec > b.tv_nsec;
}

std::vector<std::vector<double>> read_init_states(const std::string& path, const mjModel* m) {
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
      throw UsageError("--init-states line " + std::to_string(states.size() + 1) + " must hold nq + nv = " +
                       std::to_string(m->nq + m->nv) + " numbers (qpos then qvel)");
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
    if (xml.empty())
      throw TaskError("the policy carries no MuJoCo model (model.xml); pass --model FILE.xml");
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
  if (m->nu != policy.act_dim())
    throw TaskError("the model " + model_name + " has " + std::to_string(m->nu) + " actuators, the policy has act_dim " +
                    std::to_string(policy.act_dim()));
  const Task task = parse_task(policy, m);
  pydpg::ObservationBuilder observe(task.observation_spec, m);
  if (observe.size() != policy.obs_dim())
    throw TaskError("the observation spec builds " + std::to_string(observe.size()) + " values from " + model_name +
                    ", the policy expects obs_dim " + std::to_string(policy.obs_dim()) +
                    " (is --model the model it was trained on?)");
  // The loop fills one external input itself: the previous action (zeros at an episode's start).
  bool feeds_prev_action = false;
  for (const std::string& name : observe.input_names()) {
    if (name == "prev_action" && observe.input_size(name) == policy.act_dim()) feeds_prev_action = true;
    else
      throw TaskError("the observation spec has an external input '" + name + "' that pydpg_control_loop cannot fill "
                      "(it fills only prev_action of act_dim entries); a robot's own loop sets it with "
                      "ObservationBuilder::set_input");
  }
  if (std::fabs(m->opt.timestep - task.timestep) > 1e-12 && !a.quiet)
    std::fprintf(stderr, "warning: the model's timestep %g differs from the training env's %g\n", m->opt.timestep,
                 task.timestep);
  mjData* d = mj_makeData(m);
  cleanup.d = d;

  const double env_hz = 1.0 / (m->opt.timestep * task.frame_skip);
  const double hz = a.hz > 0 ? a.hz : env_hz;
  const int substeps = std::max(1, static_cast<int>(std::lround(1.0 / (hz * m->opt.timestep))));
  if (substeps != task.frame_skip && !a.quiet)
    std::fprintf(stderr, "warning: --hz %g gives %d physics steps per action; the policy was trained with %d\n", hz,
                 substeps, task.frame_skip);
  const double dt = m->opt.timestep * substeps;
  const long long period_ns = static_cast<long long>(std::llround(1e9 / hz));
  const long max_steps = a.max_steps > 0 ? a.max_steps : task.max_episode_steps;

  std::vector<std::vector<double>> init;
  if (!a.init_states.empty()) init = read_init_states(a.init_states, m);
  const long episodes = init.empty() ? a.episodes : static_cast<long>(init.size());

  std::FILE* trace = nullptr;
  if (!a.trace_out.empty()) {
    trace = std::fopen(a.trace_out.c_str(), "w");
    if (!trace) throw UsageError("cannot write --trace file '" + a.trace_out + "'");
    // Enough to replay the run in the Gymnasium env (pydpg.deploy.replay_trace): each episode's
    // initial qpos/qvel, then per step the observation the policy saw and the action it sent.
    std::fprintf(trace, "# pydpg control loop trace 1: nq %d nv %d act_dim %ld obs_dim %ld\n", m->nq, m->nv,
                 static_cast<long>(policy.act_dim()), static_cast<long>(policy.obs_dim()));
    std::fputs("# init,episode,qpos...,qvel... | step,episode,t,reward,action...,observation...\n", trace);
  }

  std::mt19937_64 rng(a.seed);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto noise = [&](const std::string& dist, double scale) {
    return scale == 0.0 ? 0.0 : scale * (dist == "normal" ? normal(rng) : uniform(rng));
  };

  const int D = static_cast<int>(policy.obs_dim()), A = static_cast<int>(policy.act_dim());
  std::vector<float> obs(D), action(A), seen(D);
  std::vector<double> returns, step_us;
  std::vector<long> lengths;
  std::vector<int> terminated_flags;
  step_us.reserve(static_cast<std::size_t>(episodes * max_steps));
  long misses = 0, steps_total = 0;
  policy.reset_latency();
  const auto wall0 = std::chrono::steady_clock::now();

  for (long ep = 0; ep < episodes; ++ep) {
    mj_resetData(m, d);
    if (!init.empty()) {
      for (int i = 0; i < m->nq; ++i) d->qpos[i] = init[ep][i];
      for (int i = 0; i < m->nv; ++i) d->qvel[i] = init[ep][m->nq + i];
    } else {
      for (int i = 0; i < m->nq; ++i) d->qpos[i] = m->qpos0[i] + noise(task.qpos_noise, task.qpos_scale);
      for (int i = 0; i < m->nv; ++i) d->qvel[i] = noise(task.qvel_noise, task.qvel_scale);
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
    observe.build(d, obs.data());

    double ret = 0.0;
    long t = 0;
    bool terminated = false;
    timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    while (t < max_steps && !terminated) {
      timespec_add(deadline, period_ns);
      const auto s0 = std::chrono::steady_clock::now();
      if (trace) std::copy(obs.begin(), obs.end(), seen.begin());
      policy.act(obs.data(), 1, action.data());
      const double x_before = task.has_reward ? d->qpos[task.x_index] : 0.0;
      for (int i = 0; i < A; ++i) d->ctrl[i] = action[i];
      for (int i = 0; i < substeps; ++i) mj_step(m, d);
      // Gymnasium calls this after stepping so that cacc/cfrc_* are up to date for observations.
      mj_rnePostConstraint(m, d);
      if (feeds_prev_action) observe.set_input("prev_action", action.data(), A);
      observe.build(d, obs.data());
      const bool ok = healthy(task, m, d, obs.data(), D);
      double ctrl_cost = 0.0;
      for (int i = 0; i < A; ++i) ctrl_cost += static_cast<double>(action[i]) * action[i];
      const double reward = !task.has_reward ? std::nan("")
                                             : task.forward_weight * (d->qpos[task.x_index] - x_before) / dt +
                                                   task.healthy_reward * (ok ? 1.0 : 0.0) - task.ctrl_cost_weight * ctrl_cost;
      terminated = task.terminate_when_unhealthy && !ok;
      ret += reward;
      ++t;
      step_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - s0).count());
      if (trace) {
        std::fprintf(trace, "step,%ld,%ld,%.17g", ep, t - 1, reward);
        for (int i = 0; i < A; ++i) std::fprintf(trace, ",%.9g", action[i]);
        for (int i = 0; i < D; ++i) std::fprintf(trace, ",%.9g", seen[i]);
        std::fputc('\n', trace);
      }
      if (a.sleep) {
        timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (later(now, deadline)) {
          ++misses;
          deadline = now;  // restart the schedule instead of bursting to catch up
        } else {
          while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, nullptr) == EINTR) {
          }
        }
      }
    }
    steps_total += t;
    returns.push_back(ret);
    lengths.push_back(t);
    terminated_flags.push_back(terminated ? 1 : 0);
    if (!a.quiet) {
      char value[64] = "n/a (no reward terms in the task; replay the --trace in Python)";
      if (task.has_reward) std::snprintf(value, sizeof value, "%.3f", ret);
      std::printf("episode %ld: return %s over %ld steps%s\n", ep, value, t, terminated ? " (terminated)" : "");
    }
  }
  if (trace) std::fclose(trace);
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();

  const pydpg::LatencyStats lat = policy.latency();
  const Percentiles st = summarize(step_us);
  const pydpg::GuardStats g = policy.guard_stats();
  double mean_ret = 0;
  for (double r : returns) mean_ret += r;
  mean_ret /= returns.size();

  if (!a.quiet) {
    std::printf("\npolicy %s (backend %s, %d thread%s) on %s\n", a.policy.c_str(), policy.backend().c_str(),
                static_cast<int>(a.threads), a.threads == 1 ? "" : "s", model_name.c_str());
    std::printf("control rate %.2f Hz (period %.3f ms, %d physics steps of %g s)%s\n", hz, period_ns / 1e6, substeps,
                m->opt.timestep, a.sleep ? "" : ", free-running (--no-sleep)");
    char mean_text[32] = "n/a";
    if (task.has_reward) std::snprintf(mean_text, sizeof mean_text, "%.3f", mean_ret);
    std::printf("mean return %s over %ld episode(s), %ld steps in %.2f s\n\n", mean_text, episodes, steps_total,
                wall_s);
    std::printf("%-22s %10s %10s %10s %10s %10s %10s\n", "latency (us)", "mean", "p50", "p90", "p99", "p99.9", "max");
    std::printf("%-22s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", "policy act()", lat.mean_us, lat.p50_us,
                lat.p90_us, lat.p99_us, lat.p999_us, lat.max_us);
    std::printf("%-22s %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f\n", "step (act + physics)", st.mean, st.p50, st.p90,
                st.p99, st.p999, st.max);
    if (a.sleep)
      std::printf("\ndeadline misses: %ld of %ld periods\n", misses, steps_total);
    if (g.nonfinite_obs_rows || g.nonfinite_action_rows)
      std::printf("non-finite guard: %llu observation(s), %llu action(s) replaced (%s)\n",
                  static_cast<unsigned long long>(g.nonfinite_obs_rows),
                  static_cast<unsigned long long>(g.nonfinite_action_rows), a.on_nonfinite.c_str());
  }

  if (!a.json_out.empty()) {
    std::ofstream j(a.json_out);
    if (!j) throw UsageError("cannot write --json file '" + a.json_out + "'");
    j << "{\"returns\": [";
    for (std::size_t i = 0; i < returns.size(); ++i) j << (i ? ", " : "") << json_number(returns[i]);
    j << "], \"lengths\": [";
    for (std::size_t i = 0; i < lengths.size(); ++i) j << (i ? ", " : "") << lengths[i];
    j << "], \"terminated\": [";
    for (std::size_t i = 0; i < terminated_flags.size(); ++i) j << (i ? ", " : "") << terminated_flags[i];
    j << "], \"mean_return\": " << json_number(mean_ret) << ", \"steps\": " << steps_total
      << ", \"hz\": " << json_number(hz) << ", \"substeps\": " << substeps << ", \"realtime\": " << (a.sleep ? "true" : "false")
      << ", \"deadline_misses\": " << misses << ", \"wall_s\": " << json_number(wall_s)
      << ", \"backend\": \"" << policy.backend() << "\""
      << ", \"latency_us\": {\"count\": " << lat.count << ", \"mean\": " << json_number(lat.mean_us)
      << ", \"p50\": " << json_number(lat.p50_us) << ", \"p90\": " << json_number(lat.p90_us)
      << ", \"p99\": " << json_number(lat.p99_us) << ", \"p999\": " << json_number(lat.p999_us)
      << ", \"max\": " << json_number(lat.max_us) << "}"
      << ", \"step_us\": {\"count\": " << st.n << ", \"mean\": " << json_number(st.mean) << ", \"p50\": " << json_number(st.p50)
      << ", \"p90\": " << json_number(st.p90) << ", \"p99\": " << json_number(st.p99) << ", \"p999\": " << json_number(st.p999)
      << ", \"max\": " << json_number(st.max) << "}"
      << ", \"guard\": {\"nonfinite_obs_rows\": " << g.nonfinite_obs_rows
      << ", \"nonfinite_action_rows\": " << g.nonfinite_action_rows << "}}\n";
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
