// PolicyRuntime: load + validate + warm up once, then act() with preallocated buffers.
//
// Two backends compute the same function:
//   "mlp"          the exporter describes the network (Linear layers + activation) in the metadata;
//                  the runtime copies the weights out of the TorchScript module and runs the layers
//                  itself (mlp_backend.hpp). It is accepted only after it reproduces the module's own
//                  forward at load time.
//   "torchscript"  module.forward() through libtorch's interpreter, for actors the plan cannot
//                  describe. The interpreter allocates its intermediate tensors on every call.
// Reading the file is archive.hpp's job, checking its metadata metadata.hpp's.
#include "pydpg/policy_runtime.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include "archive.hpp"
#include "metadata.hpp"
#include "mlp_backend.hpp"
#include "pydpg/percentiles.hpp"
#include "rounding_bound.hpp"

namespace pydpg {

namespace {

constexpr const char* kModelFile = "model.xml";

// The load check's worst entry: its difference, the rounding it may show, and their ratio (> 1, or
// HUGE_VAL for a NaN or an unbounded entry: the plan is refused).
struct BackendComparison {
  double ratio = 0.0, diff = 0.0, allowed = 0.0;
  const char* arithmetic = "";
};

}  // namespace

NonFinitePolicy parse_nonfinite_policy(const std::string& name) {
  if (name == "raise") return NonFinitePolicy::Raise;
  if (name == "hold") return NonFinitePolicy::HoldLast;
  if (name == "safe") return NonFinitePolicy::Safe;
  throw PolicyArgumentError("on_nonfinite must be 'raise', 'hold' or 'safe', got '" + name + "'");
}

const char* to_string(NonFinitePolicy p) {
  switch (p) {
    case NonFinitePolicy::Raise:
      return "raise";
    case NonFinitePolicy::HoldLast:
      return "hold";
    case NonFinitePolicy::Safe:
      return "safe";
  }
  return "?";
}

// Hidden although nested in the exported class: it is no part of the API.
struct __attribute__((visibility("hidden"))) PolicyRuntime::Impl {
  std::string path;
  PolicyOptions opt;
  PolicyMetadata meta;
  std::map<std::string, std::string> extras;
  torch::jit::Module module;
  std::string backend;  // "mlp" or "torchscript", for users; `mlp` below is what the hot path reads
  bool mlp = false;

  MlpNetwork net;  // "mlp" backend; empty unless its plan was built

  // Buffers, sized once for max_batch. `obs_in` holds the guarded (and, for "mlp", normalized)
  // observation rows and is only ever read by forward(); `h0`/`h1` are the hidden layers' scratch,
  // which forward() overwrites before it reads them; `y` receives the actions.
  AlignedFloats obs_in, row_in, h0, h1, y;
  std::vector<float> last, safe;
  std::vector<unsigned char> bad;
  at::Tensor input;  // "torchscript" backend: [max_batch, obs_dim], filled in place

  // Statistics.
  std::vector<std::uint64_t> lat_ns;
  std::uint64_t lat_count = 0, lat_sum_ns = 0, lat_max_ns = 0;
  GuardStats guard;

  std::int64_t obs_dim() const { return meta.obs_dim; }
  std::int64_t act_dim() const { return meta.act_dim; }

  void load_file();
  void probe_module();
  void check_options();
  void allocate();
  void warm_up();
  void use_backend(const char* name) {
    backend = name;
    mlp = backend == "mlp";
  }
  // One observation row, raw and finite, into the units the backend reads: normalized and clipped
  // for "mlp" (the module does that itself for "torchscript").
  void load_row(const float* raw, float* dst) const {
    const std::int64_t D = meta.obs_dim;
    if (!(mlp && net.normalize)) {
      std::memcpy(dst, raw, sizeof(float) * D);
      return;
    }
    const float clip = net.clip;
    for (std::int64_t k = 0; k < D; ++k) {
      float v = (raw[k] - net.mean[k]) / net.stdev[k];
      if (clip > 0) v = std::min(std::max(v, -clip), clip);
      dst[k] = v;
    }
  }
  void mlp_rows(const float* x, std::int64_t n, float* out) { forward_mlp(net, x, n, h0.data(), h1.data(), out); }
  void torchscript_rows(const float* x, std::int64_t n, float* out);
  void forward(std::int64_t batch);
  BackendComparison compare_backends();
};

void PolicyRuntime::Impl::load_file() {
  PolicyArchive archive = load_policy_archive(path, {kMetadataFile, kModelFile});
  module = std::move(archive.module);
  extras = std::move(archive.extras);
  if (extras[kMetadataFile].empty())
    throw PolicyFormatError("'" + path + "' is a TorchScript module but not a pydpg policy: it carries no " +
                            kMetadataFile + " (export policies with `pydpg export` or pydpg.export_policy)");
}

// Run the module once: it must map [1, obs_dim] float32 to [1, act_dim] float32.
void PolicyRuntime::Impl::probe_module() {
  try {
    module.eval();
    auto out = module.forward({torch::zeros({1, meta.obs_dim})});
    if (!out.isTensor()) throw PolicyFormatError("forward() does not return a tensor");
    const at::Tensor t = out.toTensor();
    if (t.scalar_type() != at::kFloat || t.dim() != 2 || t.size(0) != 1 || t.size(1) != meta.act_dim)
      throw PolicyFormatError("forward() maps [1, " + std::to_string(meta.obs_dim) + "] to " + c10::str(t.sizes()) +
                              " " + std::string(c10::toString(t.scalar_type())) + ", metadata says [1, " +
                              std::to_string(meta.act_dim) + "] float32");
  } catch (const PolicyFormatError& e) {
    throw PolicyFormatError("policy file '" + path + "': " + e.what());
  } catch (const std::exception& e) {
    throw PolicyFormatError("policy file '" + path + "': the module does not accept a [1, " +
                            std::to_string(meta.obs_dim) + "] float32 observation: " + first_line(e.what()));
  }
}

void PolicyRuntime::Impl::check_options() {
  if (opt.max_batch < 1 || opt.max_batch > kMaxDim)
    throw PolicyArgumentError("max_batch must be in [1, " + std::to_string(kMaxDim) + "], got " +
                              std::to_string(opt.max_batch));
  if (opt.num_threads < 0 || opt.num_threads > 1024)
    throw PolicyArgumentError("num_threads must be in [0, 1024], got " + std::to_string(opt.num_threads));
  if (opt.warmup_calls < 0) throw PolicyArgumentError("warmup_calls must be >= 0");
  if (opt.latency_window < 1 || opt.latency_window > (1 << 26))
    throw PolicyArgumentError("latency_window must be in [1, 2^26], got " + std::to_string(opt.latency_window));
  if (opt.mlp_kernels != "auto" && opt.mlp_kernels != "portable")
    throw PolicyArgumentError("mlp_kernels must be 'auto' or 'portable', got '" + opt.mlp_kernels + "'");
  if (opt.backend != "auto" && opt.backend != "mlp" && opt.backend != "torchscript")
    throw PolicyArgumentError("backend must be 'auto', 'mlp' or 'torchscript', got '" + opt.backend + "'");
  safe.assign(meta.act_dim, 0.0f);
  if (!opt.safe_action.empty()) {
    if (static_cast<std::int64_t>(opt.safe_action.size()) != meta.act_dim)
      throw PolicyArgumentError("safe_action has " + std::to_string(opt.safe_action.size()) +
                                " values, the policy has act_dim " + std::to_string(meta.act_dim));
    for (std::int64_t i = 0; i < meta.act_dim; ++i) {
      const float v = opt.safe_action[i];
      if (!std::isfinite(v) || v < meta.action_low[i] || v > meta.action_high[i])
        throw PolicyArgumentError("safe_action[" + std::to_string(i) + "] = " + fmt(v) +
                                  " is outside the action bounds [" + fmt(meta.action_low[i]) + ", " +
                                  fmt(meta.action_high[i]) + "]");
      safe[i] = v;
    }
  } else {
    for (std::int64_t i = 0; i < meta.act_dim; ++i)
      safe[i] = std::min(std::max(0.0f, meta.action_low[i]), meta.action_high[i]);
  }
}

void PolicyRuntime::Impl::allocate() {
  const std::int64_t B = opt.max_batch;
  obs_in.assign(B * meta.obs_dim, 0.0f);
  row_in.assign(meta.obs_dim, 0.0f);
  h0.assign(B * net.width, 0.0f);
  h1.assign(B * net.width, 0.0f);
  y.assign(B * meta.act_dim, 0.0f);
  last.resize(B * meta.act_dim);
  for (std::int64_t r = 0; r < B; ++r) std::copy(safe.begin(), safe.end(), last.begin() + r * meta.act_dim);
  bad.assign(B, 0);
  if (backend == "torchscript") input = torch::zeros({B, meta.obs_dim});
  lat_ns.assign(opt.latency_window, 0);
}

void PolicyRuntime::Impl::torchscript_rows(const float* x, std::int64_t n, float* out) {
  // The profiling executor would re-specialize the graph whenever the batch size changes: run the
  // plain interpreter so a call costs the same every time.
  torch::jit::GraphOptimizerEnabledGuard no_reoptimize(false);
  at::Tensor xt = input.narrow(0, 0, n);
  std::memcpy(xt.data_ptr<float>(), x, sizeof(float) * n * meta.obs_dim);
  const at::Tensor result = module.forward({xt}).toTensor();
  if (result.scalar_type() != at::kFloat || result.dim() != 2 || result.size(0) != n || result.size(1) != meta.act_dim)
    throw PolicyFormatError("forward() returned " + c10::str(result.sizes()) + " for a batch of " + std::to_string(n));
  const at::Tensor c = result.contiguous();
  std::memcpy(out, c.data_ptr<float>(), sizeof(float) * n * meta.act_dim);
}

// y[:batch] = policy(obs_in[:batch]). BLAS picks its kernel by matrix shape, so in one batched call
// row i's rounding can depend on how many rows came with it. With batch_invariant every row is
// computed alone, from the same aligned one-row buffer: row i's action is then exactly what a
// batch-1 call on that row returns, whatever the other rows are.
void PolicyRuntime::Impl::forward(std::int64_t batch) {
#ifdef PYDPG_POISON_SCRATCH
  // Sanitizer builds: scratch starts every call as NaN, so a read of a value this call did not
  // write shows up as a non-finite action instead of a plausible number.
  std::fill(h0.data(), h0.data() + h0.size(), std::numeric_limits<float>::quiet_NaN());
  std::fill(h1.data(), h1.data() + h1.size(), std::numeric_limits<float>::quiet_NaN());
  std::fill(y.data(), y.data() + y.size(), std::numeric_limits<float>::quiet_NaN());
#endif
  if (!opt.batch_invariant) {
    mlp ? mlp_rows(obs_in.data(), batch, y.data()) : torchscript_rows(obs_in.data(), batch, y.data());
    return;
  }
  const std::int64_t D = meta.obs_dim, A = meta.act_dim;
  for (std::int64_t r = 0; r < batch; ++r) {
    std::memcpy(row_in.data(), obs_in.data() + r * D, sizeof(float) * D);
    mlp ? mlp_rows(row_in.data(), 1, y.data() + r * A) : torchscript_rows(row_in.data(), 1, y.data() + r * A);
  }
}

// Whether the mlp backend computes the module's function, judged on kCompareRows observations around
// the normalization statistics, in two arithmetics, each against its forward error bound
// (rounding_bound.hpp), which holds for any summation order:
//  - float64: the plan's own evaluation (the bound's centre) against forward() of a float64 copy of
//    the module. They agree only if the plan describes the module's function, and float64 leaves a
//    plan that lies ~2^29 times less room to hide than float32's rounding would.
//  - float32: the backend's actions against forward(), within twice the float32 bound: a kernel bug
//    shows, BLAS's rounding (batch shapes, CPUs) does not.
// Returns the entry nearest its allowance.
BackendComparison PolicyRuntime::Impl::compare_backends() {
  constexpr std::int64_t kCompareRows = 64;
  const std::int64_t N = kCompareRows, D = meta.obs_dim, A = meta.act_dim;
  std::mt19937 rng(12345);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> obs(N * D);
  for (std::int64_t r = 0; r < N; ++r)
    for (std::int64_t k = 0; k < D; ++k)
      obs[r * D + k] = net.normalize ? net.mean[k] + net.stdev[k] * 3.0f * normal(rng) : 3.0f * normal(rng);
  const at::Tensor batch_in = torch::from_blob(obs.data(), {N, D}).clone();

  BackendComparison worst;
  auto judge = [&](const double* got, const double* want, const std::vector<double>& bound, const char* arithmetic) {
    for (std::int64_t i = 0; i < N * A; ++i) {
      const double d = std::fabs(got[i] - want[i]), allowed = 2.0 * bound[i];
      const double ratio = std::isfinite(allowed) && d <= allowed ? (allowed > 0 ? d / allowed : 0.0) : HUGE_VAL;
      if (ratio >= worst.ratio) worst = {ratio, d, allowed, arithmetic};
    }
  };
  std::vector<double> centre(N * A), bound(N * A);

  torch::jit::Module module64 = module.clone();
  module64.to(at::kDouble);
  const at::Tensor ref64 = module64.forward({batch_in.to(at::kDouble)}).toTensor().to(at::kDouble).contiguous();
  rounding_bound(net, obs.data(), N, Arithmetic{0x1p-53, 0.0, true}, centre.data(), bound.data());
  judge(centre.data(), ref64.data_ptr<double>(), bound, "float64");

  const at::Tensor ref32 = module.forward({batch_in}).toTensor().to(at::kDouble).contiguous();
  std::vector<double> got(N * A);
  for (std::int64_t start = 0; start < N; start += opt.max_batch) {
    const std::int64_t n = std::min(opt.max_batch, N - start);
    for (std::int64_t r = 0; r < n; ++r) load_row(obs.data() + (start + r) * D, obs_in.data() + r * D);
    forward(n);
    for (std::int64_t i = 0; i < n * A; ++i)
      got[start * A + i] = std::min(std::max(y[i], meta.action_low[i % A]), meta.action_high[i % A]);
  }
  rounding_bound(net, obs.data(), N, Arithmetic{}, centre.data(), bound.data());
  judge(got.data(), ref32.data_ptr<double>(), bound, "float32");
  return worst;
}

// Refuse a policy that cannot act at the mean observation, then exercise both batch extremes so
// BLAS, the allocator and the interpreter have made their one-time allocations before the first
// real call. Every call runs on the mean observation, in the units the backend reads: normalized
// (zeros) for "mlp", raw for "torchscript"; forward() never writes its input, so the last warm-up
// call sees the same rows as the first.
void PolicyRuntime::Impl::warm_up() {
  const std::int64_t D = meta.obs_dim;
  for (std::int64_t r = 0; r < opt.max_batch; ++r)
    for (std::int64_t k = 0; k < D; ++k)
      obs_in[r * D + k] = (mlp && net.normalize) || !meta.normalized ? 0.0f : meta.obs_mean[k];
  forward(1);
  if (!all_finite(y.data(), meta.act_dim))
    throw PolicyFormatError("policy file '" + path + "' produces NaN/Inf actions for the mean observation");
  for (int i = 0; i < opt.warmup_calls; ++i) forward(1);
  for (int i = 0; i < std::min(opt.warmup_calls, 4); ++i) forward(opt.max_batch);
}

PolicyRuntime::PolicyRuntime(const std::string& path, PolicyOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  m.opt = std::move(options);
  if (m.opt.num_threads > 0) at::set_num_threads(m.opt.num_threads);
  c10::InferenceMode inference;
  torch::jit::GraphOptimizerEnabledGuard no_reoptimize(false);
  m.load_file();
  m.meta = parse_metadata(m.extras[kMetadataFile], path);
  m.probe_module();
  m.check_options();
  std::string why_not_mlp;
  if (m.opt.backend != "torchscript") {
    try {
      m.net = build_mlp(m.module, m.meta, m.opt.mlp_kernels);
      m.use_backend("mlp");
    } catch (const std::exception& e) {
      why_not_mlp = e.what();
    }
  }
  if (m.backend.empty()) {
    if (m.opt.backend == "mlp")
      throw PolicyFormatError("policy file '" + path + "' cannot run on the mlp backend: " + why_not_mlp);
    m.use_backend("torchscript");
  }
  m.allocate();
  if (m.mlp) {
    const BackendComparison c = m.compare_backends();
    if (!(c.ratio <= 1.0)) {
      if (m.opt.backend == "mlp")
        throw PolicyFormatError("policy file '" + path + "': its network plan does not reproduce forward() (|diff| " +
                                fmt(c.diff) + " in " + c.arithmetic + " where rounding allows at most " +
                                fmt(c.allowed) + ")");
      m.use_backend("torchscript");
      m.allocate();
    }
  }
  m.warm_up();
  reset_latency();
}

PolicyRuntime::~PolicyRuntime() = default;
PolicyRuntime::PolicyRuntime(PolicyRuntime&&) noexcept = default;
PolicyRuntime& PolicyRuntime::operator=(PolicyRuntime&&) noexcept = default;

void PolicyRuntime::act(const float* obs, std::int64_t batch, float* actions) {
  Impl& m = *impl_;
  const auto t0 = std::chrono::steady_clock::now();
  if (batch < 1 || batch > m.opt.max_batch)
    throw PolicyArgumentError("batch must be in [1, max_batch=" + std::to_string(m.opt.max_batch) + "], got " +
                              std::to_string(batch) + " (raise max_batch when loading the policy)");
  if (obs == nullptr || actions == nullptr) throw PolicyArgumentError("obs and actions must not be null");
  const std::int64_t D = m.meta.obs_dim, A = m.meta.act_dim;
  c10::InferenceMode inference;

  // Input guard, fused with normalization into the first layer's buffer. A bad row is zeroed so it
  // cannot reach the network (rows are independent through an MLP, but not through every module).
  std::int64_t bad_rows = 0;
  for (std::int64_t r = 0; r < batch; ++r) {
    const float* in = obs + r * D;
    float* dst = m.obs_in.data() + r * D;
    const bool ok = all_finite(in, D);
    m.bad[r] = ok ? 0 : 1;
    if (!ok) {
      ++bad_rows;
      std::fill(dst, dst + D, 0.0f);
    } else {
      m.load_row(in, dst);
    }
  }
  m.guard.nonfinite_obs_rows += bad_rows;
  if (bad_rows && m.opt.on_nonfinite == NonFinitePolicy::Raise) {
    ++m.guard.raised;
    for (std::int64_t r = 0; r < batch; ++r)
      if (m.bad[r])
        for (std::int64_t k = 0; k < D; ++k)
          if (!std::isfinite(obs[r * D + k]))
            throw NonFiniteError("observation row " + std::to_string(r) + " has " + fmt(obs[r * D + k]) + " at index " +
                                 std::to_string(k) + " (" + std::to_string(bad_rows) +
                                 " non-finite row(s); on_nonfinite='raise')");
  }

  m.forward(batch);

  // Output guard, clamp, and the per-row memory of the last good action.
  for (std::int64_t r = 0; r < batch; ++r) {
    const float* a = m.y.data() + r * A;
    if (!m.bad[r] && !all_finite(a, A)) {
      ++m.guard.nonfinite_action_rows;
      if (m.opt.on_nonfinite == NonFinitePolicy::Raise) {
        ++m.guard.raised;
        throw NonFiniteError("the policy produced a non-finite action for row " + std::to_string(r) +
                             " from a finite observation (on_nonfinite='raise')");
      }
      m.bad[r] = 1;
    }
  }
  for (std::int64_t r = 0; r < batch; ++r) {
    float* out = actions + r * A;
    float* last = m.last.data() + r * A;
    if (m.bad[r]) {
      if (m.opt.on_nonfinite == NonFinitePolicy::HoldLast) {
        std::memcpy(out, last, sizeof(float) * A);
        ++m.guard.held_rows;
      } else {
        std::memcpy(out, m.safe.data(), sizeof(float) * A);
        ++m.guard.safe_rows;
      }
      continue;
    }
    const float* a = m.y.data() + r * A;
    for (std::int64_t k = 0; k < A; ++k) out[k] = std::min(std::max(a[k], m.meta.action_low[k]), m.meta.action_high[k]);
    std::memcpy(last, out, sizeof(float) * A);
  }

  const std::uint64_t ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
  m.lat_ns[m.lat_count % m.lat_ns.size()] = ns;
  ++m.lat_count;
  m.lat_sum_ns += ns;
  m.lat_max_ns = std::max(m.lat_max_ns, ns);
}

LatencyStats PolicyRuntime::latency() const {
  const Impl& m = *impl_;
  LatencyStats s;
  s.count = m.lat_count;
  if (m.lat_count == 0) return s;
  const std::size_t n = std::min<std::size_t>(m.lat_count, m.lat_ns.size());
  std::vector<double> us(n);
  for (std::size_t i = 0; i < n; ++i) us[i] = m.lat_ns[i] / 1e3;
  const Percentiles p = summarize(std::move(us));
  s.window = n;
  // Mean and max cover every call since the reset, the percentiles only the window.
  s.mean_us = static_cast<double>(m.lat_sum_ns) / m.lat_count / 1e3;
  s.p50_us = p.p50;
  s.p90_us = p.p90;
  s.p99_us = p.p99;
  s.p999_us = p.p999;
  s.max_us = m.lat_max_ns / 1e3;
  return s;
}

void PolicyRuntime::reset_latency() {
  Impl& m = *impl_;
  m.lat_count = m.lat_sum_ns = m.lat_max_ns = 0;
}

GuardStats PolicyRuntime::guard_stats() const { return impl_->guard; }
void PolicyRuntime::reset_guard_stats() { impl_->guard = GuardStats{}; }
const PolicyMetadata& PolicyRuntime::metadata() const { return impl_->meta; }
const PolicyOptions& PolicyRuntime::options() const { return impl_->opt; }
std::int64_t PolicyRuntime::obs_dim() const { return impl_->meta.obs_dim; }
std::int64_t PolicyRuntime::act_dim() const { return impl_->meta.act_dim; }
const std::string& PolicyRuntime::backend() const { return impl_->backend; }
std::string PolicyRuntime::kernels() const {
  const Impl& m = *impl_;
  return m.mlp ? m.net.kernels() : "torchscript interpreter";
}
const TaskTiming& PolicyRuntime::task_timing() const {
  if (!impl_->meta.has_task)
    throw PolicyFormatError("policy file '" + impl_->path + "' records no task timing (metadata 'task'): it was " +
                            "exported without a MuJoCo env; export it with env= (or --env)");
  return impl_->meta.task;
}
const std::string& PolicyRuntime::path() const { return impl_->path; }

const std::string& PolicyRuntime::extra_file(const std::string& name) const {
  static const std::string empty;
  auto it = impl_->extras.find(name);
  return it == impl_->extras.end() ? empty : it->second;
}

}  // namespace pydpg
