// Counts every heap allocation made anywhere in the process (pydpg, libtorch, MKL, libstdc++)
// while PolicyRuntime::act() runs after warm-up.
//
// The executable defines malloc and friends, which the dynamic linker binds ahead of glibc's for
// every shared library; they count and forward to glibc's __libc_* entry points. operator new
// reaches malloc through libstdc++, so it is counted too.
//
// usage: alloc_check POLICY BACKEND BATCH CALLS          -> one JSON line (PolicyRuntime::act)
//        alloc_check --observation MODEL SPEC CALLS       -> one JSON line (ObservationBuilder::build and
//                                                          TerminationCheck::first_failure, with
//                                                          the mean time per call)
//        alloc_check --action MODEL SPEC CALLS SUBSTEPS    -> ActionMap::command and apply
//        alloc_check --randomization MODEL SPEC CALLS EPISODE
//                                                       -> DomainRandomization::reset (every EPISODE
//                                                          steps), step and observe
#include <pydpg/action.hpp>
#include <pydpg/observation.hpp>
#include <pydpg/policy_runtime.hpp>
#include <pydpg/randomization.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

extern "C" {
void* __libc_malloc(size_t);
void* __libc_calloc(size_t, size_t);
void* __libc_realloc(void*, size_t);
void* __libc_memalign(size_t, size_t);
void __libc_free(void*);
}

static std::atomic<bool> g_counting{false};
static std::atomic<long> g_allocs{0};

static inline void count() {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
}

extern "C" {
void* malloc(size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(size_t n, size_t s) {
  count();
  return __libc_calloc(n, s);
}
void* realloc(void* p, size_t n) {
  count();
  return __libc_realloc(p, n);
}
void free(void* p) { __libc_free(p); }
void* memalign(size_t a, size_t n) {
  count();
  return __libc_memalign(a, n);
}
void* aligned_alloc(size_t a, size_t n) {
  count();
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, size_t a, size_t n) {
  count();
  void* p = __libc_memalign(a, n);
  if (!p) return 12;  // ENOMEM
  *out = p;
  return 0;
}
}

// Loads MODEL and the spec text in file SPEC, runs body(m, d, spec) and frees both; any error is
// printed and gives exit status 1.
template <typename Body>
int with_model(const char* model_path, const char* spec_path, Body body) {
  char error[1000] = "";
  mjModel* m = mj_loadXML(model_path, nullptr, error, sizeof error);
  if (!m) {
    std::fprintf(stderr, "error: %s\n", error);
    return 1;
  }
  mjData* d = mj_makeData(m);
  std::ifstream f(spec_path);
  std::stringstream spec;
  spec << f.rdbuf();
  int rc = 0;
  try {
    body(m, d, spec.str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    rc = 1;
  }
  mj_deleteData(d);
  mj_deleteModel(m);
  return rc;
}

// The observation builder bound to MODEL with the spec in file SPEC, on the model's initial state
// after one mj_step (so contact and constraint fields are populated).
int observation_mode(const char* model_path, const char* spec_path, long calls) {
  return with_model(model_path, spec_path, [calls](mjModel* m, mjData* d, const std::string& spec_text) {
    mj_step(m, d);
    pydpg::ObservationBuilder b(spec_text, m);
    const pydpg::TerminationCheck stop(spec_text, m);
    std::vector<float> obs(b.size());
    for (int i = 0; i < 1000; ++i) b.build(d, obs.data());  // warm caches
    g_counting = true;
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < calls; ++i) {
      if (i % 1000 == 0) b.reset();  // an episode's start: history terms refill their rings
      b.build(d, obs.data());
    }
    const auto t1 = std::chrono::steady_clock::now();
    g_counting = false;
    const long build_allocs = g_allocs.exchange(0);
    int failed = -1;
    g_counting = true;
    const auto t2 = std::chrono::steady_clock::now();
    for (long i = 0; i < calls; ++i) failed = std::max(failed, stop.first_failure(d));
    const auto t3 = std::chrono::steady_clock::now();
    g_counting = false;
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / calls;
    const double check_ns = std::chrono::duration<double, std::nano>(t3 - t2).count() / calls;
    std::printf(
        "{\"size\": %d, \"calls\": %ld, \"allocations\": %ld, \"ns_per_build\": %.1f, \"conditions\": %zu, "
        "\"check_allocations\": %ld, \"ns_per_check\": %.1f, \"failed\": %d}\n",
        b.size(), calls, build_allocs, ns, stop.conditions().size(), g_allocs.load(), check_ns, failed);
  });
}

// The action map bound to MODEL with the spec in file SPEC: `calls` control steps, each a command()
// (actions sweeping past [-1, 1], every 100th non-finite) and `substeps` apply() calls, as the loop
// makes them (without mj_step: the map's own cost).
int action_mode(const char* model_path, const char* spec_path, long calls, int substeps) {
  return with_model(model_path, spec_path, [calls, substeps](mjModel* m, mjData* d, const std::string& spec_text) {
    mj_forward(m, d);
    pydpg::ActionMap map(spec_text, m);
    std::vector<float> a(static_cast<std::size_t>(map.size()));
    auto fill = [&](long i) {
      for (std::size_t k = 0; k < a.size(); ++k) a[k] = static_cast<float>(std::sin(0.01 * i + k)) * 1.2f;
      if (i % 100 == 99) a[0] = NAN;
    };
    for (long i = 0; i < 1000; ++i) {  // warm caches
      fill(i);
      map.command(a.data());
      map.apply(d);
    }
    map.reset_counters();
    double command_ns = 0, apply_ns = 0;
    g_counting = true;
    for (long i = 0; i < calls; ++i) {
      fill(i);
      const auto t0 = std::chrono::steady_clock::now();
      map.command(a.data());
      const auto t1 = std::chrono::steady_clock::now();
      for (int s = 0; s < substeps; ++s) map.apply(d);
      const auto t2 = std::chrono::steady_clock::now();
      command_ns += std::chrono::duration<double, std::nano>(t1 - t0).count();
      apply_ns += std::chrono::duration<double, std::nano>(t2 - t1).count();
    }
    g_counting = false;
    // What the map's cost is beside: one physics step of the same model (mj_step, not counted).
    const auto s0 = std::chrono::steady_clock::now();
    for (long i = 0; i < 2000; ++i) mj_step(m, d);
    const double step_ns =
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - s0).count() / 2000;
    const auto& c = map.counters();
    std::printf(
        "{\"size\": %d, \"calls\": %ld, \"allocations\": %ld, \"ns_per_command\": %.1f, \"ns_per_apply\": %.1f, "
        "\"ns_per_mj_step\": %.1f, \"safe_actions\": %ld, \"action_clips\": %ld, \"rate_limits\": %ld, "
        "\"ctrl_clips\": %ld}\n",
        map.size(), calls, g_allocs.load(), command_ns / calls, apply_ns / (calls * substeps), step_ns, c.safe_actions,
        c.action_clips, c.rate_limits, c.ctrl_clips);
  });
}

// The randomization bound to MODEL (actions in its ctrlrange, 64 observations) with the spec in file
// SPEC: `calls` control steps of step() and observe(), and a reset() every `episode` steps, as a
// training env makes them (without the env's own physics: the randomization's own cost).
int randomization_mode(const char* model_path, const char* spec_path, long calls, long episode) {
  return with_model(model_path, spec_path, [calls, episode](mjModel* m, mjData* d, const std::string& spec_text) {
    const int n = static_cast<int>(m->nu), obs_size = 64;
    std::vector<double> low(n), high(n), a(n), applied(n), obs(obs_size, 0.5);
    for (int i = 0; i < n; ++i) {
      low[i] = m->actuator_ctrllimited[i] ? m->actuator_ctrlrange[2 * i] : -1.0;
      high[i] = m->actuator_ctrllimited[i] ? m->actuator_ctrlrange[2 * i + 1] : 1.0;
    }
    pydpg::DomainRandomization r(spec_text, m, obs_size, n, low.data(), high.data());
    r.seed(7);
    for (long i = 0; i < 1000; ++i) {  // warm caches
      if (i % episode == 0) r.reset();
      r.step(a.data(), applied.data(), d);
      r.observe(obs.data());
    }
    double reset_ns = 0, step_ns = 0;
    long resets = 0;
    g_counting = true;
    for (long i = 0; i < calls; ++i) {
      for (int k = 0; k < n; ++k) a[k] = 0.5 * (low[k] + high[k]) + 0.4 * (high[k] - low[k]) * std::sin(0.01 * i + k);
      if (i % episode == 0) {  // timed alone: a clock read per step would outweigh it
        const auto r0 = std::chrono::steady_clock::now();
        r.reset();
        reset_ns += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - r0).count();
        ++resets;
      }
      const auto t1 = std::chrono::steady_clock::now();
      r.step(a.data(), applied.data(), d);
      r.observe(obs.data());
      const auto t2 = std::chrono::steady_clock::now();
      step_ns += std::chrono::duration<double, std::nano>(t2 - t1).count();
    }
    g_counting = false;
    std::printf(
        "{\"calls\": %ld, \"resets\": %ld, \"allocations\": %ld, \"ns_per_reset\": %.1f, "
        "\"ns_per_step_and_observe\": %.1f, \"delay\": %d}\n",
        calls, resets, g_allocs.load(), reset_ns / std::max(1L, resets), step_ns / calls, r.delay());
  });
}

int main(int argc, char** argv) {
  if (argc == 6 && std::string(argv[1]) == "--randomization")
    return randomization_mode(argv[2], argv[3], std::atol(argv[4]), std::max(1L, std::atol(argv[5])));
  if (argc == 5 && std::string(argv[1]) == "--observation")
    return observation_mode(argv[2], argv[3], std::atol(argv[4]));
  if (argc == 6 && std::string(argv[1]) == "--action")
    return action_mode(argv[2], argv[3], std::atol(argv[4]), std::atoi(argv[5]));
  if (argc != 5) {
    std::fprintf(stderr, "usage: alloc_check POLICY BACKEND BATCH CALLS\n");
    return 2;
  }
  try {
    pydpg::PolicyOptions opt;
    opt.backend = argv[2];
    opt.max_batch = std::atol(argv[3]);
    const long calls = std::atol(argv[4]);
    pydpg::PolicyRuntime policy(argv[1], opt);
    std::vector<float> obs(opt.max_batch * policy.obs_dim(), 0.1f), act(opt.max_batch * policy.act_dim());

    // The counter must see an allocation made on purpose, or a zero below would prove nothing.
    g_counting = true;
    void* volatile probe = std::malloc(64);
    std::string* volatile probe2 = new std::string(100, 'x');
    g_counting = false;
    std::free(probe);
    delete probe2;
    const long probe_count = g_allocs.exchange(0);

    g_counting = true;
    for (long i = 0; i < calls; ++i) {
      policy.act(obs.data(), 1, act.data());
      policy.act(obs.data(), opt.max_batch, act.data());
    }
    g_counting = false;
    const long during = g_allocs.load();
    std::printf("{\"backend\": \"%s\", \"calls\": %ld, \"allocations\": %ld, \"probe_allocations\": %ld}\n",
                policy.backend().c_str(), 2 * calls, during, probe_count);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
