// bench_runtime POLICY BACKEND CALLS_BATCH1 BATCHES... -> one JSON line
// Batch-1 latency comes from the runtime's own per-call statistics; throughput is timed around
// repeated act() calls at each batch size.
#include <pydpg/policy_runtime.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: bench_runtime POLICY BACKEND CALLS [BATCH...]\n");
    return 2;
  }
  try {
    std::vector<long> batches;
    long max_batch = 1;
    for (int i = 4; i < argc; ++i) {
      batches.push_back(std::atol(argv[i]));
      max_batch = std::max(max_batch, batches.back());
    }
    pydpg::PolicyOptions opt;
    opt.backend = argv[2];
    opt.max_batch = max_batch;
    opt.latency_window = 1 << 20;
    pydpg::PolicyRuntime policy(argv[1], opt);
    const long calls = std::atol(argv[3]);
    std::mt19937 rng(0);
    std::normal_distribution<float> normal;
    std::vector<float> obs(max_batch * policy.obs_dim()), act(max_batch * policy.act_dim());
    for (float& x : obs) x = normal(rng);

    for (long i = 0; i < calls; ++i) policy.act(obs.data(), 1, act.data());
    const pydpg::LatencyStats s = policy.latency();
    std::printf("{\"backend\": \"%s\", \"batch1\": {\"mean_us\": %.3f, \"p50_us\": %.3f, \"p90_us\": %.3f, "
                "\"p99_us\": %.3f, \"p999_us\": %.3f, \"max_us\": %.3f}, \"throughput\": {",
                policy.backend().c_str(), s.mean_us, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us);
    for (std::size_t b = 0; b < batches.size(); ++b) {
      const long B = batches[b];
      const long reps = std::max(3L, 200000L / B);
      for (int w = 0; w < 2; ++w) policy.act(obs.data(), B, act.data());
      const auto t0 = std::chrono::steady_clock::now();
      for (long r = 0; r < reps; ++r) policy.act(obs.data(), B, act.data());
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%s\"%ld\": %.1f", b ? ", " : "", B, B * reps / sec);
    }
    std::printf("}}\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
