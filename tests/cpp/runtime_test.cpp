// C++ test driver for the policy runtime (csrc/deploy/policy_runtime.cpp), run with no Python in the process
// so that AddressSanitizer/UBSan and ThreadSanitizer see the runtime's own memory accesses
// (tests/cpp/sanitize.sh). The fixtures (policy files and the TorchScript module's reference
// actions) are written by tests/cpp/make_fixtures.py.
//
// usage: runtime_test REFERENCE POLICY [BAD_FILE ...]
//   REFERENCE: int64 n, obs_dim, act_dim; float32 obs[n, obs_dim]; float32 want[n, act_dim];
//   float32 tol[n, act_dim] (want = the TorchScript module's forward on obs, row by row; tol = twice
//   the float32 forward error bound of pydpg.rounding: how far two evaluations may be apart)
#include "pydpg/policy_runtime.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"

using pydpg::PolicyOptions;
using pydpg::PolicyRuntime;

namespace {

struct Reference {
  std::int64_t n = 0, obs_dim = 0, act_dim = 0;
  std::vector<float> obs, want, tol;
};

Reference read_reference(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  Reference r;
  f.read(reinterpret_cast<char*>(&r.n), 8);
  f.read(reinterpret_cast<char*>(&r.obs_dim), 8);
  f.read(reinterpret_cast<char*>(&r.act_dim), 8);
  if (!f || r.n < 1 || r.n > 100000 || r.obs_dim < 1 || r.act_dim < 1) throw std::runtime_error("bad reference header");
  r.obs.resize(r.n * r.obs_dim);
  r.want.resize(r.n * r.act_dim);
  r.tol.resize(r.n * r.act_dim);
  f.read(reinterpret_cast<char*>(r.obs.data()), static_cast<std::streamsize>(r.obs.size() * 4));
  f.read(reinterpret_cast<char*>(r.want.data()), static_cast<std::streamsize>(r.want.size() * 4));
  f.read(reinterpret_cast<char*>(r.tol.data()), static_cast<std::streamsize>(r.tol.size() * 4));
  if (!f) throw std::runtime_error("reference file is truncated");
  return r;
}

// Whether |a - b| <= tol entry by entry (a NaN fails).
bool within(const float* a, const float* b, const float* tol, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    if (!(std::fabs(a[i] - b[i]) <= tol[i])) return false;
  return true;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The default constructor must accept the policy (trained weights once made its warm-up diverge).
void test_default_options(const std::string& path, const Reference& ref) {
  PolicyRuntime p(path);
  CHECK(p.obs_dim() == ref.obs_dim && p.act_dim() == ref.act_dim);
  std::vector<float> a(ref.act_dim);
  for (std::int64_t r = 0; r < ref.n; ++r) {
    p.act(ref.obs.data() + r * ref.obs_dim, 1, a.data());
    CHECK(within(a.data(), ref.want.data() + r * ref.act_dim, ref.tol.data() + r * ref.act_dim, ref.act_dim));
  }
}

void test_parity_and_no_leaks(const std::string& path, const Reference& ref, const std::string& backend, bool invariant,
                              const std::string& kernels = "auto") {
  PolicyOptions o;
  o.max_batch = ref.n;
  o.backend = backend;
  o.mlp_kernels = kernels;
  o.batch_invariant = invariant;
  o.on_nonfinite = pydpg::NonFinitePolicy::HoldLast;
  PolicyRuntime p(path, o);
  CHECK(p.backend() == backend);
  const std::int64_t D = ref.obs_dim, A = ref.act_dim, n = ref.n;
  std::vector<float> obs = ref.obs, out(n * A), again(n * A), single(A);
  p.act(obs.data(), n, out.data());
  CHECK(same_bits(obs, ref.obs));  // act() does not write its input
  CHECK(within(out.data(), ref.want.data(), ref.tol.data(), n * A));

  // Whatever ran in between (other batch sizes, huge and non-finite rows), the same call gives the
  // same bits: no scratch value survives from one call into the next.
  std::vector<float> junk(n * D);
  for (std::int64_t i = 0; i < n * D; ++i) junk[i] = (i % 3 == 0 ? 1e30f : -7.0f) * static_cast<float>(i % 5);
  junk[D + 1] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> junk_out(n * A);
  for (std::int64_t b = 1; b <= n; b = b * 2 + 1) p.act(junk.data(), b, junk_out.data());
  for (std::int64_t r = 0; r < n; ++r) p.act(obs.data() + r * D, 1, single.data());
  p.act(obs.data(), n, again.data());
  CHECK(same_bits(out, again));

  for (std::int64_t r = 0; r < n; ++r) {
    p.act(obs.data() + r * D, 1, single.data());
    CHECK(within(single.data(), ref.want.data() + r * A, ref.tol.data() + r * A, A));
    // Batch invariance: row r of the batch is exactly row r on its own.
    if (invariant) CHECK(std::memcmp(single.data(), out.data() + r * A, A * sizeof(float)) == 0);
  }
  if (invariant) {
    // Reversed order, same rows: the same actions row for row.
    std::vector<float> rev(n * D), rev_out(n * A);
    for (std::int64_t r = 0; r < n; ++r) std::memcpy(rev.data() + r * D, obs.data() + (n - 1 - r) * D, D * 4);
    p.act(rev.data(), n, rev_out.data());
    for (std::int64_t r = 0; r < n; ++r)
      CHECK(std::memcmp(rev_out.data() + r * A, out.data() + (n - 1 - r) * A, A * sizeof(float)) == 0);
  }
}

void test_guards_and_arguments(const std::string& path, const Reference& ref) {
  const std::int64_t D = ref.obs_dim, A = ref.act_dim;
  PolicyOptions o;
  o.max_batch = 2;
  PolicyRuntime raise(path, o);
  std::vector<float> obs(2 * D, 0.0f), out(2 * A, 42.0f);
  obs[D] = std::numeric_limits<float>::infinity();
  CHECK_THROWS(pydpg::NonFiniteError, raise.act(obs.data(), 2, out.data()));
  CHECK(out[0] == 42.0f && out[2 * A - 1] == 42.0f);  // output untouched on raise
  CHECK(raise.guard_stats().raised == 1);
  CHECK_THROWS(pydpg::PolicyArgumentError, raise.act(obs.data(), 0, out.data()));
  CHECK_THROWS(pydpg::PolicyArgumentError, raise.act(obs.data(), 3, out.data()));
  CHECK_THROWS(pydpg::PolicyArgumentError, raise.act(nullptr, 1, out.data()));
  CHECK_THROWS(pydpg::PolicyArgumentError, raise.act(obs.data(), 1, nullptr));

  o.on_nonfinite = pydpg::NonFinitePolicy::Safe;
  PolicyRuntime safe(path, o);
  safe.act(obs.data(), 2, out.data());
  for (std::int64_t k = 0; k < A; ++k) {
    const float lo = safe.metadata().action_low[k], hi = safe.metadata().action_high[k];
    CHECK(out[A + k] == std::min(std::max(0.0f, lo), hi));
    CHECK(out[k] >= lo && out[k] <= hi);
  }
  CHECK(safe.guard_stats().safe_rows == 1);

  PolicyOptions bad;
  bad.max_batch = 0;
  CHECK_THROWS(pydpg::PolicyArgumentError, PolicyRuntime(path, bad));
  bad = PolicyOptions{};
  bad.backend = "gpu";
  CHECK_THROWS(pydpg::PolicyArgumentError, PolicyRuntime(path, bad));
  bad = PolicyOptions{};
  bad.safe_action.assign(A + 1, 0.0f);
  CHECK_THROWS(pydpg::PolicyArgumentError, PolicyRuntime(path, bad));
  bad = PolicyOptions{};
  bad.warmup_calls = -1;
  CHECK_THROWS(pydpg::PolicyArgumentError, PolicyRuntime(path, bad));
  CHECK_THROWS(pydpg::PolicyFileError, PolicyRuntime(path + ".missing"));

  PolicyRuntime p(path);
  for (int i = 0; i < 100; ++i) p.act(ref.obs.data(), 1, out.data());
  const pydpg::LatencyStats s = p.latency();
  CHECK(s.count == 100 && s.p50_us > 0 && s.p50_us <= s.p99_us && s.p99_us <= s.max_us);
}

// One runtime per thread, all acting at once (the documented way to share a policy file).
void test_threads(const std::string& path, const Reference& ref) {
  constexpr int kThreads = 4;
  std::vector<std::unique_ptr<PolicyRuntime>> runtimes;
  PolicyOptions o;
  o.num_threads = 0;  // leave libtorch's process-wide pool alone
  for (int t = 0; t < kThreads; ++t) runtimes.push_back(std::make_unique<PolicyRuntime>(path, o));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      std::vector<float> a(ref.act_dim);
      for (int i = 0; i < 300; ++i) {
        const std::int64_t r = (i + t) % ref.n;
        runtimes[t]->act(ref.obs.data() + r * ref.obs_dim, 1, a.data());
        CHECK(within(a.data(), ref.want.data() + r * ref.act_dim, ref.tol.data() + r * ref.act_dim, ref.act_dim));
      }
    });
  for (auto& th : threads) th.join();
}

// The task timing a file records, and the physics steps per action the loop and users share.
void test_task_timing(const std::string& path) {
  PolicyRuntime p(path);
  if (p.metadata().has_task) {
    const pydpg::TaskTiming& t = p.task_timing();
    CHECK(t.frame_skip >= 1 && t.timestep > 0 && t.max_episode_steps >= 1);
    CHECK(std::fabs(t.control_period - t.timestep * t.frame_skip) <= 1e-15 * t.control_period);
    CHECK(pydpg::physics_steps_per_action(t.timestep, t.control_hz) == t.frame_skip);
  } else {
    CHECK_THROWS(pydpg::PolicyFormatError, p.task_timing());
  }
  CHECK(pydpg::physics_steps_per_action(0.01, 25.0) == 4);
  CHECK(pydpg::physics_steps_per_action(0.002, 1e6) == 1);  // faster than the physics: one step
  for (const auto& [timestep, hz] : std::vector<std::pair<double, double>>{
           {0.01, 1e-9}, {0.0, 25.0}, {-0.01, 25.0}, {0.01, 0.0}, {0.01, std::nan("")}, {HUGE_VAL, 25.0}})
    CHECK_THROWS(pydpg::PolicyArgumentError, pydpg::physics_steps_per_action(timestep, hz));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: runtime_test REFERENCE POLICY [BAD_FILE ...]\n");
    return 2;
  }
  try {
    const Reference ref = read_reference(argv[1]);
    const std::string path = argv[2];
    test_default_options(path, ref);
    for (const char* backend : {"mlp", "torchscript"})
      for (bool invariant : {false, true}) test_parity_and_no_leaks(path, ref, backend, invariant);
    // The mlp backend without MKL (at::addmm, std::tanh), as on a torch build that has none.
    test_parity_and_no_leaks(path, ref, "mlp", false, "portable");
    test_guards_and_arguments(path, ref);
    test_threads(path, ref);
    test_task_timing(path);
    // Damaged files: a clean PolicyError each, never a crash or a policy that loads.
    for (int i = 3; i < argc; ++i) CHECK_THROWS(pydpg::PolicyError, PolicyRuntime{std::string(argv[i])});
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    return 1;
  }
  return pydpg_test::finish("runtime_test");
}
