// A fixed-rate control loop for a fleet of robots sharing one policy, on pydpg::runtime.
//
// The plant here is a stand-in (observations drift as a random walk) so the example needs nothing
// but the policy file; a real loop reads its sensors where read_sensors() is and writes actuators
// where write_actuators() is. Everything inside the loop is allocation-free: buffers are sized
// before it starts and PolicyRuntime::act() does not allocate after its warm-up.
#include <pydpg/fixed_rate.hpp>
#include <pydpg/policy_runtime.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string policy;
  double hz = 500.0;
  long robots = 4;
  double seconds = 1.0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--hz" && has_value)
      o.hz = std::atof(argv[++i]);
    else if (a == "--robots" && has_value)
      o.robots = std::atol(argv[++i]);
    else if (a == "--seconds" && has_value)
      o.seconds = std::atof(argv[++i]);
    else if (o.policy.empty() && a[0] != '-')
      o.policy = a;
    else
      throw std::runtime_error("unknown argument " + a);
  }
  if (o.policy.empty() || !(o.hz > 0) || o.robots < 1 || !(o.seconds > 0))
    throw std::runtime_error("usage: policy_loop POLICY [--hz HZ] [--robots N] [--seconds S]");
  return o;
}

void read_sensors(std::vector<float>& obs, std::mt19937& rng) {
  std::normal_distribution<float> step(0.0f, 0.05f);
  for (float& x : obs) x = 0.99f * x + step(rng);
}

void write_actuators(const std::vector<float>& actions) { (void)actions; }

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    pydpg::PolicyOptions opt;
    opt.max_batch = o.robots;  // one row per robot, one act() call per period
    opt.num_threads = 1;
    opt.on_nonfinite = pydpg::NonFinitePolicy::HoldLast;  // a glitching sensor must not stop the fleet
    pydpg::PolicyRuntime policy(o.policy, opt);
    const auto& meta = policy.metadata();
    std::printf("loaded %s: env %s, obs_dim %lld, act_dim %lld, backend %s\n", o.policy.c_str(),
                meta.env_id.empty() ? "?" : meta.env_id.c_str(), static_cast<long long>(meta.obs_dim),
                static_cast<long long>(meta.act_dim), policy.backend().c_str());

    std::vector<float> obs(o.robots * policy.obs_dim(), 0.0f), actions(o.robots * policy.act_dim());
    std::mt19937 rng(0);
    const long periods = static_cast<long>(o.seconds * o.hz);
    // A late step is counted and the schedule restarts from it; the loop never bursts to catch up.
    pydpg::FixedRateClock clock(static_cast<long long>(1e9 / o.hz));
    clock.start();
    for (long k = 0; k < periods; ++k) {
      read_sensors(obs, rng);
      policy.act(obs.data(), o.robots, actions.data());
      write_actuators(actions);
      clock.wait();
    }

    const pydpg::LatencyStats s = policy.latency();
    std::printf("%ld periods at %.0f Hz, %ld robots, %lld deadline misses\n", periods, o.hz, o.robots, clock.misses());
    std::printf("act() latency us: mean %.2f  p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (n=%llu)\n",
                s.mean_us, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, static_cast<unsigned long long>(s.count));
    std::printf("first action: [");
    for (long i = 0; i < policy.act_dim(); ++i) std::printf(i ? ", %.4f" : "%.4f", actions[i]);
    std::printf("]\n");
    return 0;
  } catch (const pydpg::PolicyError& e) {
    std::fprintf(stderr, "policy error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
