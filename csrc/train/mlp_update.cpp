#include "mlp_update.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pydpg {

namespace {

std::string shape_of(const at::Tensor& t) { return c10::str(t.sizes()); }

// A float32, contiguous CPU tensor of exactly `shape`, or std::invalid_argument naming it.
void check_tensor(const at::Tensor& t, at::IntArrayRef shape, const std::string& name) {
  if (!t.defined()) throw std::invalid_argument(name + " is missing");
  if (t.device().type() != at::kCPU || t.scalar_type() != at::kFloat)
    throw std::invalid_argument(name + " must be a float32 CPU tensor, got " + c10::toString(t.scalar_type()) + " on " +
                                t.device().str());
  if (t.sizes() != shape)
    throw std::invalid_argument(name + " has shape " + shape_of(t) + ", expected " + c10::str(shape));
  if (!t.is_contiguous()) throw std::invalid_argument(name + " must be contiguous");
}

float* ptr(const at::Tensor& t) { return t.data_ptr<float>(); }

// The batch size B of obs [B, obs_dim], checked to be one the scratch (int-indexed BLAS) can take.
std::int64_t batch_rows(const at::Tensor& obs) {
  if (!obs.defined() || obs.dim() != 2) throw std::invalid_argument("obs must be a 2-D [B, obs_dim] tensor");
  const std::int64_t B = obs.size(0);
  if (B < 1 || B > (1 << 24)) throw std::invalid_argument("batch size " + std::to_string(B) + " is out of range");
  return B;
}

// The element-wise passes between the products, compiled for AVX2 and for the baseline x86-64, the
// right one picked at load time (the wheel itself must run on any x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define PYDPG_CLONES __attribute__((target_clones("avx2", "default")))
#define PYDPG_CLONES_ON
#else
#define PYDPG_CLONES
#endif

// Every row of h [n, cols] = b.
void fill_rows(float* h, const float* b, int n, int cols) {
  for (int r = 0; r < n; ++r) std::memcpy(h + static_cast<std::int64_t>(r) * cols, b, sizeof(float) * cols);
}

// `v < 0 ? 0 : v` keeps NaN, as torch.relu does.
PYDPG_CLONES void relu(float* h, std::int64_t len) {
  for (std::int64_t i = 0; i < len; ++i) h[i] = h[i] < 0.0f ? 0.0f : h[i];
}

// db[j] = sum_r g[r, j].
PYDPG_CLONES void column_sums(const float* g, int n, int cols, float* db) {
  std::fill(db, db + cols, 0.0f);
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < cols; ++j) db[j] += g[static_cast<std::int64_t>(r) * cols + j];
}

// Back through a ReLU: g [n, cols] is zeroed where the ReLU's output h was zero (torch's
// threshold_backward). With db, the column sums of the result (the bias gradient of the layer that
// fed the ReLU) in the same pass.
PYDPG_CLONES void relu_backward(float* g, const float* h, int n, int cols, float* db) {
  if (db) std::fill(db, db + cols, 0.0f);
  for (int r = 0; r < n; ++r) {
    float* row = g + static_cast<std::int64_t>(r) * cols;
    const float* hr = h + static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) row[j] = hr[j] > 0.0f ? row[j] : 0.0f;
    if (db)
      for (int j = 0; j < cols; ++j) db[j] += row[j];
  }
}

// t <- lerp(t, o, w) as torch.lerp computes it: t + w (o - t) for w < 0.5, o - (1 - w)(o - t) above
// (so w = 1 copies exactly), with one fused multiply-add where the CPU has FMA, as torch's vectorized
// lerp does; without torch's dispatch per tensor.
#if defined(PYDPG_CLONES_ON)
__attribute__((target("arch=x86-64-v3"))) void polyak(float* t, const float* o, std::int64_t n, float w) {
  if (w < 0.5f) {
    for (std::int64_t i = 0; i < n; ++i) t[i] = std::fma(w, o[i] - t[i], t[i]);
  } else {
    for (std::int64_t i = 0; i < n; ++i) t[i] = std::fma(w - 1.0f, o[i] - t[i], o[i]);
  }
}
__attribute__((target("default")))
#endif
void polyak(float* t, const float* o, std::int64_t n, float w) {
  if (w < 0.5f) {
    for (std::int64_t i = 0; i < n; ++i) t[i] = t[i] + w * (o[i] - t[i]);
  } else {
    for (std::int64_t i = 0; i < n; ++i) t[i] = o[i] - (o[i] - t[i]) * (1.0f - w);
  }
}

// A batch's column means (into sum) and sums of squared deviations (into sq), in two passes with
// double accumulation, as torch's CPU batch norm computes them.
PYDPG_CLONES void column_moments(const float* __restrict x, int n, int cols, double* __restrict sum,
                                 double* __restrict sq) {
  std::fill(sum, sum + 2 * static_cast<std::ptrdiff_t>(cols), 0.0);
  for (int r = 0; r < n; ++r) {
    const float* xr = x + static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) sum[j] += xr[j];
  }
  for (int j = 0; j < cols; ++j) sum[j] /= n;
  for (int r = 0; r < n; ++r) {
    const float* xr = x + static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) {
      const double d = xr[j] - sum[j];
      sq[j] += d * d;
    }
  }
}

// x_hat = (x - mean) inv into xhat, and u = x_hat a + c, per column.
PYDPG_CLONES void normalize_rows(const float* __restrict x, int n, int cols, const float* __restrict mean,
                                 const float* __restrict inv, const float* __restrict a, const float* __restrict c,
                                 float* __restrict xhat, float* __restrict u) {
  for (int r = 0; r < n; ++r) {
    const std::int64_t o = static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) {
      const float v = (x[o + j] - mean[j]) * inv[j];
      xhat[o + j] = v;
      u[o + j] = v * a[j] + c[j];
    }
  }
}

// u = (x - shift) scale + b, per column (an evaluation-mode normalization).
PYDPG_CLONES void affine_rows(const float* __restrict x, int n, int cols, const float* __restrict shift,
                              const float* __restrict scale, const float* __restrict b, float* __restrict u) {
  for (int r = 0; r < n; ++r) {
    const std::int64_t o = static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) u[o + j] = (x[o + j] - shift[j]) * scale[j] + b[j];
  }
}

// dst[r] = [a[r], b[r]]: the critic's input, the observation then the action.
void concat_rows(const float* a, std::int64_t na, const float* b, std::int64_t nb, int n, float* dst) {
  for (int r = 0; r < n; ++r) {
    std::memcpy(dst + r * (na + nb), a + r * na, sizeof(float) * na);
    std::memcpy(dst + r * (na + nb) + na, b + r * nb, sizeof(float) * nb);
  }
}

// A normalization's step counter: a scalar int64 CPU tensor, as the module's `steps` buffer.
void check_steps(const at::Tensor& t, const std::string& name) {
  if (!t.defined()) throw std::invalid_argument(name + " is missing");
  if (t.device().type() != at::kCPU || t.scalar_type() != at::kLong || t.dim() != 0)
    throw std::invalid_argument(name + " must be a scalar int64 CPU tensor, got " + c10::toString(t.scalar_type()) +
                                " of shape " + shape_of(t) + " on " + t.device().str());
}

}  // namespace

MlpUpdate::Net MlpUpdate::check_net(const MlpParams& p, std::int64_t in, std::int64_t out, const char* name) const {
  if (p.weight.empty() || p.weight.size() != p.bias.size())
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(p.weight.size()) + " weights and " +
                                std::to_string(p.bias.size()) +
                                " biases; expected one of each per layer, at least one");
  if (!p.norm.empty() && p.norm.size() != p.weight.size())
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(p.norm.size()) + " normalizations for " +
                                std::to_string(p.weight.size()) + " layers; expected none or one per layer");
  Net net;
  std::int64_t width = in;
  for (std::size_t l = 0; l < p.weight.size(); ++l) {
    const std::string layer = std::string(name) + " layer " + std::to_string(l);
    if (!p.norm.empty()) {
      const BatchRenormParams& q = p.norm[l];
      const std::string nl = layer + " normalization";
      check_tensor(q.weight, {width}, nl + " weight");
      check_tensor(q.bias, {width}, nl + " bias");
      check_tensor(q.running_mean, {width}, nl + " running_mean");
      check_tensor(q.running_var, {width}, nl + " running_var");
      check_steps(q.steps, nl + " steps");
      if (!(q.momentum > 0.0 && q.momentum <= 1.0) || !(q.eps > 0.0 && std::isfinite(q.eps)) || !(q.r_max >= 1.0) ||
          !std::isfinite(q.r_max) || !(q.d_max >= 0.0) || !std::isfinite(q.d_max) || q.warmup < 0)
        throw std::invalid_argument(nl + ": momentum must be in (0, 1], eps > 0, r_max >= 1, d_max >= 0 (finite) " +
                                    "and warmup >= 0");
      Norm nm;
      nm.w = ptr(q.weight);
      nm.b = ptr(q.bias);
      nm.running_mean = ptr(q.running_mean);
      nm.running_var = ptr(q.running_var);
      nm.steps = q.steps.data_ptr<std::int64_t>();
      nm.momentum = static_cast<float>(q.momentum);
      nm.eps = static_cast<float>(q.eps);
      nm.r_max = static_cast<float>(q.r_max);
      nm.d_max = static_cast<float>(q.d_max);
      nm.warmup = q.warmup;
      net.norm.push_back(nm);
    }
    const at::Tensor& w = p.weight[l];
    if (!w.defined() || w.dim() != 2) throw std::invalid_argument(layer + " weight must be 2-D [out, in]");
    const std::int64_t o = w.size(0);
    if (l + 1 == p.weight.size() && o != out)
      throw std::invalid_argument(layer + " has " + std::to_string(o) + " outputs, expected " + std::to_string(out));
    check_tensor(w, {o, width}, layer + " weight");
    check_tensor(p.bias[l], {o}, layer + " bias");
    net.w.push_back(ptr(w));
    net.b.push_back(ptr(p.bias[l]));
    net.in.push_back(static_cast<int>(width));
    net.out.push_back(static_cast<int>(o));
    width = o;
  }
  return net;
}

namespace {

// Module.parameters()'s order: per layer, the normalization's weight and bias, then the Linear's.
void flat_params(const MlpParams& p, std::vector<at::Tensor>& into) {
  for (std::size_t l = 0; l < p.weight.size(); ++l) {
    if (!p.norm.empty()) {
      into.push_back(p.norm[l].weight);
      into.push_back(p.norm[l].bias);
    }
    into.push_back(p.weight[l]);
    into.push_back(p.bias[l]);
  }
}

}  // namespace

MlpUpdate::MlpUpdate(MlpParams actor, MlpParams actor_target, std::vector<MlpParams> critics,
                     std::vector<MlpParams> critic_targets, AdamState actor_opt, AdamState critic_opt,
                     double action_bound, bool portable)
    : sgemm_(portable ? nullptr : find_sgemm()),
      vms_tanh_(portable ? nullptr : find_vms_tanh()),
      action_bound_(action_bound),
      actor_opt_(std::move(actor_opt)),
      critic_opt_(std::move(critic_opt)) {
  if (actor.weight.empty() || !actor.weight.front().defined() || actor.weight.front().dim() != 2 ||
      !actor.weight.back().defined() || actor.weight.back().dim() != 2)
    throw std::invalid_argument("actor: expected 2-D weights, at least one layer");
  obs_dim_ = actor.weight.front().size(1);
  act_dim_ = actor.weight.back().size(0);
  const bool targets = !actor_target.weight.empty();
  if (critics.empty() || critics.size() > 2 || critic_targets.size() != (targets ? critics.size() : 0))
    throw std::invalid_argument("expected one or two critics and as many targets (none without an actor target), got " +
                                std::to_string(critics.size()) + " and " + std::to_string(critic_targets.size()));
  if (!(action_bound > 0.0)) throw std::invalid_argument("action_bound must be positive");
  // The two updates this class has: DDPG/TD3 (plain networks, targets) and CrossQ (normalized, none).
  // Batch renormalization with target networks would need the targets' statistics copied at every
  // Polyak step, and a joint pass without normalization has nothing to share: the autograd path has them.
  bool any_norm = !actor.norm.empty(), all_norm = !actor.norm.empty();
  for (const auto& c : critics) {
    any_norm = any_norm || !c.norm.empty();
    all_norm = all_norm && !c.norm.empty();
  }
  if (targets && any_norm)
    throw std::invalid_argument("normalized networks are supported without target networks only (CrossQ's update)");
  if (!targets && !all_norm)
    throw std::invalid_argument("without target networks every network must be normalized (CrossQ's update)");
  if (targets && (!actor_target.norm.empty() || std::any_of(critic_targets.begin(), critic_targets.end(),
                                                            [](const MlpParams& c) { return !c.norm.empty(); })))
    throw std::invalid_argument("target networks must not be normalized");
  actor_ = check_net(actor, obs_dim_, act_dim_, "actor");
  if (targets) {
    actor_target_ = check_net(actor_target, obs_dim_, act_dim_, "actor target");
    if (actor_target_.out != actor_.out)
      throw std::invalid_argument("actor target: layer widths differ from the actor's");
  }
  for (std::size_t k = 0; k < critics.size(); ++k) {
    const std::string c = "critic " + std::to_string(k);
    critics_.push_back(check_net(critics[k], obs_dim_ + act_dim_, 1, c.c_str()));
    if (!targets) continue;
    critic_targets_.push_back(check_net(critic_targets[k], obs_dim_ + act_dim_, 1, (c + " target").c_str()));
    if (critic_targets_.back().out != critics_.back().out)
      throw std::invalid_argument(c + " target: layer widths differ from the critic's");
  }
  flat_params(actor, actor_params_);
  for (const auto& c : critics) flat_params(c, critic_params_);
  if (targets) {
    online_ = actor_params_;
    online_.insert(online_.end(), critic_params_.begin(), critic_params_.end());
    flat_params(actor_target, target_);
    for (const auto& c : critic_targets) flat_params(c, target_);
  }

  auto check_adam = [](const AdamState& s, const std::vector<at::Tensor>& params, const std::string& name) {
    if (s.grad.size() != params.size() || s.exp_avg.size() != params.size() || s.exp_avg_sq.size() != params.size() ||
        s.step.size() != params.size())
      throw std::invalid_argument(name + ": expected grad, exp_avg, exp_avg_sq and step for each of its " +
                                  std::to_string(params.size()) + " parameters");
    for (std::size_t i = 0; i < params.size(); ++i) {
      const std::string p = name + " parameter " + std::to_string(i);
      check_tensor(s.grad[i], params[i].sizes(), p + " grad");
      check_tensor(s.exp_avg[i], params[i].sizes(), p + " exp_avg");
      check_tensor(s.exp_avg_sq[i], params[i].sizes(), p + " exp_avg_sq");
      check_tensor(s.step[i], {}, p + " step");
    }
  };
  check_adam(actor_opt_, actor_params_, "actor optimizer");
  check_adam(critic_opt_, critic_params_, "critic optimizer");
  // Each network's gradient buffers, in the optimizer's (module) order.
  auto bind = [](const Net& net, const std::vector<at::Tensor>& grad, std::size_t& i) {
    Grads g;
    for (std::size_t l = 0; l < net.depth(); ++l) {
      if (net.normalized()) {
        g.norm_w.push_back(ptr(grad[i++]));
        g.norm_b.push_back(ptr(grad[i++]));
      }
      g.w.push_back(ptr(grad[i++]));
      g.b.push_back(ptr(grad[i++]));
    }
    return g;
  };
  std::size_t i = 0;
  actor_grads_ = bind(actor_, actor_opt_.grad, i);
  i = 0;
  for (const Net& c : critics_) critic_grads_.push_back(bind(c, critic_opt_.grad, i));
  for (const Net* n : {&actor_, &actor_target_})
    for (int o : n->out) width_ = std::max(width_, o);
  for (const auto& cs : {critics_, critic_targets_})
    for (const Net& n : cs)
      for (int o : n.out) width_ = std::max(width_, o);
  width_ = std::max<int>(width_, static_cast<int>(obs_dim_ + act_dim_));
}

void MlpUpdate::reserve(std::int64_t rows) {
  if (rows <= rows_) return;
  scratch_.clear();
  auto buffer = [&](std::int64_t n) {
    scratch_.push_back(at::empty({std::max<std::int64_t>(n, 1)}, at::kFloat));
    return ptr(scratch_.back());
  };
  const std::int64_t W = width_;
  z_ = buffer(rows * (obs_dim_ + act_dim_));
  a_ = buffer(rows * act_dim_);
  da_ = buffer(rows * act_dim_);
  g0_ = buffer(rows * W);
  g1_ = buffer(rows * W);
  y_ = buffer(rows);
  col_sums_.assign(2 * static_cast<std::size_t>(W), 0.0);
  col_coef_.assign(3 * static_cast<std::size_t>(W), 0.0f);
  auto pass_for = [&](const Net& net) {
    Pass p;
    for (std::size_t l = 0; l + 1 < net.depth(); ++l) p.acts.push_back(buffer(rows * W));
    if (net.normalized())
      for (std::size_t l = 0; l < net.depth(); ++l) {
        p.u.push_back(buffer(rows * W));
        p.xhat.push_back(buffer(rows * W));
        p.col.push_back(buffer(6 * W));
      }
    return p;
  };
  actor_pass_ = pass_for(actor_);  // the actor target has the actor's widths and no normalization
  critic_pass_.clear();
  q_.clear();
  for (const Net& c : critics_) {
    // A target critic has its critic's widths (the constructor checks), so it shares these buffers.
    critic_pass_.push_back(pass_for(c));
    q_.push_back(buffer(rows));
  }
  rows_ = rows;
}

void MlpUpdate::normalize(const Norm& nm, const float* x, int n, int cols, Pass& pass, std::size_t l) {
  float* u = pass.u[l];
  float* col = pass.col[l];
  if (!pass.train) {
    // The module's evaluation mode, (x - running_mean) / sqrt(running_var + eps) * weight + bias, with
    // the per-column factor weight / std kept for the backward pass (col).
    for (int j = 0; j < cols; ++j) col[j] = nm.w[j] * (1.0f / std::sqrt(nm.running_var[j] + nm.eps));
    affine_rows(x, n, cols, nm.running_mean, col, nm.b, u);
    return;
  }
  // Training mode: the batch's mean and (biased) variance, summed in double; then Ioffe's r and d from
  // the running statistics as they were before this batch, and the running statistics' move.
  double* sum = col_sums_.data();
  double* sq = sum + cols;
  column_moments(x, n, cols, sum, sq);
  float *rr = col, *dd = col + cols, *inv = col + 2 * cols, *mean = col + 3 * cols, *a = col + 4 * cols,
        *c = col + 5 * cols;
  const bool renorm = *nm.steps >= nm.warmup;  // r = 1 and d = 0 during warmup: plain batch norm
  for (int j = 0; j < cols; ++j) {
    const double var = sq[j] / n;
    const double std_b = std::sqrt(var + nm.eps);
    const double running_std = std::sqrt(static_cast<double>(nm.running_var[j]) + nm.eps);
    mean[j] = static_cast<float>(sum[j]);
    inv[j] = static_cast<float>(1.0 / std_b);
    rr[j] = renorm ? static_cast<float>(std::clamp(std_b / running_std, 1.0 / nm.r_max, double(nm.r_max))) : 1.0f;
    dd[j] = renorm ? static_cast<float>(
                         std::clamp((sum[j] - nm.running_mean[j]) / running_std, -double(nm.d_max), double(nm.d_max)))
                   : 0.0f;
    // lerp(running, batch, momentum) as torch.lerp computes a weight below 0.5 (momentum 1 copies).
    const float w = nm.momentum;
    const float bv = static_cast<float>(var);
    if (w < 0.5f) {
      nm.running_mean[j] += w * (mean[j] - nm.running_mean[j]);
      nm.running_var[j] += w * (bv - nm.running_var[j]);
    } else {
      nm.running_mean[j] = mean[j] - (mean[j] - nm.running_mean[j]) * (1.0f - w);
      nm.running_var[j] = bv - (bv - nm.running_var[j]) * (1.0f - w);
    }
    // u = (x_hat r + d) weight + bias = x_hat a + c.
    a[j] = rr[j] * nm.w[j];
    c[j] = dd[j] * nm.w[j] + nm.b[j];
  }
  ++*nm.steps;
  normalize_rows(x, n, cols, mean, inv, a, c, pass.xhat[l], u);
}

void MlpUpdate::forward(const Net& net, const float* x, int n, Pass& pass, float* out, bool tanh_out, bool train) {
  pass.train = train;
  const float* in = x;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    if (net.normalized()) {
      normalize(net.norm[l], in, n, net.in[l], pass, l);
      in = pass.u[l];
    }
    const int o = net.out[l];
    const bool last = l + 1 == net.depth();
    float* h = last ? out : pass.acts[l];
    // h = bias, then h += x W^T with beta = 1: torch's addmm for nn.Linear, and BLAS skips its own
    // pass over C that beta = 0 would cost. Then the ReLU in place.
    fill_rows(h, net.b[l], n, o);
    gemm(sgemm_, false, true, n, o, net.in[l], 1.0f, in, net.in[l], net.w[l], net.in[l], 1.0f, h, o);
    if (!last) relu(h, static_cast<std::int64_t>(n) * o);
    if (last && tanh_out) {
      const std::int64_t len = static_cast<std::int64_t>(n) * o;
      if (vms_tanh_)
        vms_tanh_(static_cast<int>(len), h, h, kVmlMode);
      else
        for (std::int64_t i = 0; i < len; ++i) h[i] = std::tanh(h[i]);
    }
    in = h;
  }
}

namespace {

// Back through a training-mode normalization, g [n, cols] the gradient at its output u = x_hat a + c
// (r and d constants of the gradient): weight gradient sum g (x_hat r + d), bias gradient sum g, and,
// with `dx`, g overwritten by the gradient at its input,
// (g - mean g - x_hat mean(g x_hat)) r weight / std (batch norm's backward through its statistics).
PYDPG_CLONES void norm_backward(float* __restrict g, const float* __restrict xhat, const float* __restrict col,
                                const float* __restrict w, int n, int cols, double* __restrict sums,
                                float* __restrict coef, float* wgrad, float* bgrad, bool dx) {
  const float *rr = col, *dd = col + cols, *inv = col + 2 * cols;
  double *sg = sums, *sgx = sums + cols;
  std::fill(sums, sums + 2 * static_cast<std::ptrdiff_t>(cols), 0.0);
  for (int r = 0; r < n; ++r) {
    const std::int64_t o = static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) {
      sg[j] += g[o + j];
      sgx[j] += static_cast<double>(g[o + j]) * xhat[o + j];
    }
  }
  for (int j = 0; j < cols; ++j) {
    if (wgrad) wgrad[j] = static_cast<float>(rr[j] * sgx[j] + dd[j] * sg[j]);
    if (bgrad) bgrad[j] = static_cast<float>(sg[j]);
  }
  if (!dx) return;
  // Per column: mean g, mean g x_hat, and r weight / std.
  float *mg = coef, *mgx = coef + cols, *k = coef + 2 * cols;
  for (int j = 0; j < cols; ++j) {
    mg[j] = static_cast<float>(sg[j] / n);
    mgx[j] = static_cast<float>(sgx[j] / n);
    k[j] = rr[j] * w[j] * inv[j];
  }
  for (int r = 0; r < n; ++r) {
    const std::int64_t o = static_cast<std::int64_t>(r) * cols;
    for (int j = 0; j < cols; ++j) g[o + j] = (g[o + j] - mg[j] - xhat[o + j] * mgx[j]) * k[j];
  }
}

// g [n, cols] *= s per column: back through an evaluation-mode normalization (s = weight / std).
PYDPG_CLONES void scale_columns(float* __restrict g, const float* __restrict s, int n, int cols, int ld) {
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < cols; ++j) g[static_cast<std::int64_t>(r) * ld + j] *= s[j];
}

}  // namespace

void MlpUpdate::backward(const Net& net, const float* x, int n, const Pass& pass, float* g_out, const Grads* grads,
                         float* dx, int dx_from, int dx_cols) {
  if (grads && net.normalized() && !pass.train)
    throw std::logic_error("weight gradients through an evaluation-mode normalization are not implemented");
  if (dx && net.normalized() && pass.train)
    throw std::logic_error("the input gradient through a training-mode normalization is not implemented");
  float* g = g_out;
  const std::size_t last = net.depth() - 1;
  if (grads) column_sums(g, n, net.out[last], grads->b[last]);
  for (std::size_t l = last + 1; l-- > 0;) {
    const int in = net.in[l], out = net.out[l];
    const float* x_l = net.normalized() ? pass.u[l] : (l > 0 ? pass.acts[l - 1] : x);
    // dL/dW = g^T x: [out, in].
    if (grads) gemm(sgemm_, true, false, out, in, n, 1.0f, g, out, x_l, in, 0.0f, grads->w[l], in);
    float* next = (g == g0_) ? g1_ : g0_;
    if (l > 0 || (grads && net.normalized())) {
      // dL/dx = g W; through the normalization in front of the Linear, if any; then through the
      // previous ReLU: zero where its output was zero (torch's threshold_backward). The previous
      // layer's bias gradient is the column sum of the result, taken in the same pass.
      gemm(sgemm_, false, false, n, in, out, 1.0f, g, out, net.w[l], in, 0.0f, next, in);
      if (net.normalized()) {
        if (pass.train)
          norm_backward(next, pass.xhat[l], pass.col[l], net.norm[l].w, n, in, col_sums_.data(), col_coef_.data(),
                        grads ? grads->norm_w[l] : nullptr, grads ? grads->norm_b[l] : nullptr, l > 0);
        else
          scale_columns(next, pass.col[l], n, in, in);
      }
      if (l > 0) relu_backward(next, pass.acts[l - 1], n, in, grads ? grads->b[l - 1] : nullptr);
      g = next;
    }
    if (l == 0 && dx) {
      // Only the asked-for input columns: W's column block [dx_from, dx_from + dx_cols).
      gemm(sgemm_, false, false, n, dx_cols, out, 1.0f, g, out, net.w[0] + dx_from, in, 0.0f, dx, dx_cols);
      if (net.normalized()) scale_columns(dx, pass.col[0] + dx_from, n, dx_cols, dx_cols);
    }
  }
}
void MlpUpdate::adam(AdamState& s, std::vector<at::Tensor>& params, double lr) {
  // What torch.optim.Adam(fused=True).step() runs (see _adam_step in pydpg/core/agent.py): the step counts
  // + 1 (float32 scalars, as _foreach_add_(steps, 1) adds; one dispatch per tensor saved), then the
  // fused kernel.
  for (at::Tensor& t : s.step) *ptr(t) += 1.0f;
  at::_fused_adam_(params, s.grad, s.exp_avg, s.exp_avg_sq, {}, s.step, lr, s.beta1, s.beta2, s.weight_decay, s.eps,
                   /*amsgrad=*/false, /*maximize=*/false);
}

CriticStepStats MlpUpdate::critic_step(const UpdateBatch& bt, double lr, const at::Tensor& td_errors) {
  const std::int64_t B = batch_rows(bt.obs);
  check_tensor(bt.obs, {B, obs_dim_}, "obs");
  check_tensor(bt.action, {B, act_dim_}, "action");
  check_tensor(bt.next_obs, {B, obs_dim_}, "next_obs");
  check_tensor(bt.reward, {B, 1}, "reward");
  check_tensor(bt.done, {B, 1}, "done");
  check_tensor(bt.discount, {B, 1}, "discount");
  if (bt.weights.defined()) check_tensor(bt.weights, {B, 1}, "weights");
  if (bt.noise.defined()) check_tensor(bt.noise, {B, act_dim_}, "noise");
  check_tensor(td_errors, {B}, "td_errors");
  const bool joint = !has_targets();
  if (joint && B > (1 << 23)) throw std::invalid_argument("batch size " + std::to_string(B) + " is out of range");
  reserve(joint ? 2 * B : B);
  const int n = static_cast<int>(B);
  const std::int64_t O = obs_dim_, A = act_dim_;

  // a' = clamp(mu'(s') + noise): the target actor's, or without targets the actor's in evaluation mode.
  if (joint)
    forward(actor_, ptr(bt.next_obs), n, actor_pass_, a_, /*tanh_out=*/true, /*train=*/false);
  else
    forward(actor_target_, ptr(bt.next_obs), n, actor_pass_, a_, /*tanh_out=*/true, /*train=*/false);
  if (bt.noise.defined()) {
    const float* eps = ptr(bt.noise);
    const float lo = static_cast<float>(-action_bound_), hi = static_cast<float>(action_bound_);
    for (std::int64_t i = 0; i < B * A; ++i) {
      const float v = a_[i] + eps[i];
      a_[i] = v < lo ? lo : (v > hi ? hi : v);
    }
  }
  // Q'_k(s', a') into next_q[k]: the target critics' on (s', a'), or rows B..2B of the joint pass, which
  // also gives Q_k(s, a) in rows 0..B.
  const float* next_q[2] = {nullptr, nullptr};  // one or two critics (the constructor checks)
  if (joint) {
    concat_rows(ptr(bt.obs), O, ptr(bt.action), A, n, z_);
    concat_rows(ptr(bt.next_obs), O, a_, A, n, z_ + B * (O + A));
    for (std::size_t k = 0; k < critics_.size(); ++k) {
      forward(critics_[k], z_, 2 * n, critic_pass_[k], q_[k], false, /*train=*/true);
      next_q[k] = q_[k] + B;
    }
  } else {
    // The targets go first through the scratch that the online critics then reuse (y_ keeps the result).
    concat_rows(ptr(bt.next_obs), O, a_, A, n, z_);
    for (std::size_t k = 0; k < critic_targets_.size(); ++k) {
      forward(critic_targets_[k], z_, n, critic_pass_[k], q_[k], false, false);
      next_q[k] = q_[k];
    }
  }
  const float *r = ptr(bt.reward), *done = ptr(bt.done), *disc = ptr(bt.discount);
  for (int i = 0; i < n; ++i) {
    float nq = next_q[0][i];
    if (critics_.size() > 1) {
      const float other = next_q[1][i];
      nq = (nq < other || nq != nq) ? nq : other;  // torch.minimum: NaN wins
    }
    // The torch path's order of operations: reward + (discount * (1 - done)) * next_q.
    y_[i] = r[i] + disc[i] * (1.0f - done[i]) * nq;
  }
  if (!joint) {
    // Online critics on (s, a).
    concat_rows(ptr(bt.obs), O, ptr(bt.action), A, n, z_);
    for (std::size_t k = 0; k < critics_.size(); ++k) forward(critics_[k], z_, n, critic_pass_[k], q_[k], false, false);
  }

  // The loss and its gradient dL/dQ_k = 2 w (Q_k - y) / B on rows 0..B; 0 on the joint pass's target
  // rows (y is held constant), whose inputs still get a gradient through the batch statistics.
  const float* w = bt.weights.defined() ? ptr(bt.weights) : nullptr;
  float* td = ptr(td_errors);
  CriticStepStats stats;
  double loss = 0.0, q_sum = 0.0;
  for (int i = 0; i < n; ++i) {
    double sq = 0.0;
    for (const float* q : q_) sq += static_cast<double>(q[i] - y_[i]) * (q[i] - y_[i]);
    loss += (w ? w[i] : 1.0) * sq;
    q_sum += q_[0][i];
    td[i] = std::fabs(q_[0][i] - y_[i]);
  }
  stats.loss = loss / n;
  stats.q_mean = q_sum / n;
  const float inv_n = 1.0f / static_cast<float>(n);
  const int rows = joint ? 2 * n : n;
  for (std::size_t k = 0; k < critics_.size(); ++k) {
    for (int i = 0; i < n; ++i) g0_[i] = (w ? inv_n * w[i] : inv_n) * (2.0f * (q_[k][i] - y_[i]));
    std::fill(g0_ + n, g0_ + rows, 0.0f);
    backward(critics_[k], z_, rows, critic_pass_[k], g0_, &critic_grads_[k], nullptr, 0, 0);
  }
  adam(critic_opt_, critic_params_, lr);
  return stats;
}

double MlpUpdate::actor_step(const at::Tensor& obs, double lr) {
  const std::int64_t B = batch_rows(obs);
  check_tensor(obs, {B, obs_dim_}, "obs");
  reserve(B);
  const int n = static_cast<int>(B);
  const std::int64_t O = obs_dim_, A = act_dim_;

  // A normalized actor trains on its batch statistics; the critic reads its running ones.
  forward(actor_, ptr(obs), n, actor_pass_, a_, /*tanh_out=*/true, /*train=*/actor_.normalized());
  concat_rows(ptr(obs), O, a_, A, n, z_);
  forward(critics_[0], z_, n, critic_pass_[0], q_[0], false, /*train=*/false);
  double q_sum = 0.0;
  for (int i = 0; i < n; ++i) q_sum += q_[0][i];
  // dJ/dQ = -1/B; back through the critic to its action input only (no critic weight gradients),
  // through tanh (dtanh = 1 - a^2), then through the actor with its weight gradients.
  const float g = -(1.0f / static_cast<float>(n));
  std::fill(g0_, g0_ + n, g);
  backward(critics_[0], z_, n, critic_pass_[0], g0_, nullptr, da_, static_cast<int>(O), static_cast<int>(A));
  for (std::int64_t i = 0; i < B * A; ++i) g0_[i] = da_[i] * (1.0f - a_[i] * a_[i]);
  backward(actor_, ptr(obs), n, actor_pass_, g0_, &actor_grads_, nullptr, 0, 0);
  adam(actor_opt_, actor_params_, lr);
  return -q_sum / n;
}

UpdateStats MlpUpdate::update(const UpdateBatch& batch, double critic_lr, std::optional<double> actor_lr, double tau,
                              const at::Tensor& td_errors) {
  UpdateStats s;
  const CriticStepStats c = critic_step(batch, critic_lr, td_errors);
  s.critic_loss = c.loss;
  s.q_mean = c.q_mean;
  if (actor_lr) {
    s.actor_loss = actor_step(batch.obs, *actor_lr);
    soft_update(tau);
  }
  return s;
}

void MlpUpdate::soft_update(double tau) {
  const float w = static_cast<float>(tau);
  for (std::size_t i = 0; i < target_.size(); ++i) polyak(ptr(target_[i]), ptr(online_[i]), target_[i].numel(), w);
}

}  // namespace pydpg
