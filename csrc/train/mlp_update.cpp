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

// dst[r] = [a[r], b[r]]: the critic's input, the observation then the action.
void concat_rows(const float* a, std::int64_t na, const float* b, std::int64_t nb, int n, float* dst) {
  for (int r = 0; r < n; ++r) {
    std::memcpy(dst + r * (na + nb), a + r * na, sizeof(float) * na);
    std::memcpy(dst + r * (na + nb) + na, b + r * nb, sizeof(float) * nb);
  }
}

}  // namespace

MlpUpdate::Net MlpUpdate::check_net(const MlpParams& p, std::int64_t in, std::int64_t out, const char* name) const {
  if (p.weight.empty() || p.weight.size() != p.bias.size())
    throw std::invalid_argument(std::string(name) + ": " + std::to_string(p.weight.size()) + " weights and " +
                                std::to_string(p.bias.size()) +
                                " biases; expected one of each per layer, at least one");
  Net net;
  std::int64_t width = in;
  for (std::size_t l = 0; l < p.weight.size(); ++l) {
    const std::string layer = std::string(name) + " layer " + std::to_string(l);
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
  if (critics.empty() || critics.size() > 2 || critic_targets.size() != critics.size())
    throw std::invalid_argument("expected one or two critics and as many targets, got " +
                                std::to_string(critics.size()) + " and " + std::to_string(critic_targets.size()));
  if (!(action_bound > 0.0)) throw std::invalid_argument("action_bound must be positive");
  actor_ = check_net(actor, obs_dim_, act_dim_, "actor");
  actor_target_ = check_net(actor_target, obs_dim_, act_dim_, "actor target");
  if (actor_target_.out != actor_.out)
    throw std::invalid_argument("actor target: layer widths differ from the actor's");
  for (std::size_t k = 0; k < critics.size(); ++k) {
    const std::string c = "critic " + std::to_string(k);
    critics_.push_back(check_net(critics[k], obs_dim_ + act_dim_, 1, c.c_str()));
    critic_targets_.push_back(check_net(critic_targets[k], obs_dim_ + act_dim_, 1, (c + " target").c_str()));
    if (critic_targets_.back().out != critics_.back().out)
      throw std::invalid_argument(c + " target: layer widths differ from the critic's");
  }
  auto flat = [](const MlpParams& p, std::vector<at::Tensor>& into) {
    for (std::size_t l = 0; l < p.weight.size(); ++l) {
      into.push_back(p.weight[l]);
      into.push_back(p.bias[l]);
    }
  };
  flat(actor, actor_params_);
  for (const auto& c : critics) flat(c, critic_params_);
  online_ = actor_params_;
  online_.insert(online_.end(), critic_params_.begin(), critic_params_.end());
  flat(actor_target, target_);
  for (const auto& c : critic_targets) flat(c, target_);

  auto check_adam = [](const AdamState& s, const std::vector<at::Tensor>& params, const std::string& name,
                       std::vector<float*>& wgrad, std::vector<float*>& bgrad) {
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
      (i % 2 == 0 ? wgrad : bgrad).push_back(ptr(s.grad[i]));
    }
  };
  check_adam(actor_opt_, actor_params_, "actor optimizer", actor_wgrad_, actor_bgrad_);
  std::vector<float*> wg, bg;
  check_adam(critic_opt_, critic_params_, "critic optimizer", wg, bg);
  std::size_t at_layer = 0;
  for (const Net& c : critics_) {
    critic_wgrad_.emplace_back(wg.begin() + at_layer, wg.begin() + at_layer + c.depth());
    critic_bgrad_.emplace_back(bg.begin() + at_layer, bg.begin() + at_layer + c.depth());
    at_layer += c.depth();
  }
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
  actor_acts_.clear();
  for (std::size_t l = 0; l + 1 < actor_.depth(); ++l) actor_acts_.push_back(buffer(rows * W));
  critic_acts_.assign(critics_.size(), {});
  q_.clear();
  for (std::size_t k = 0; k < critics_.size(); ++k) {
    // A target critic has its critic's widths (the constructor checks), so it shares these buffers.
    for (std::size_t l = 0; l + 1 < critics_[k].depth(); ++l) critic_acts_[k].push_back(buffer(rows * W));
    q_.push_back(buffer(rows));
  }
  rows_ = rows;
}

void MlpUpdate::forward(const Net& net, const float* x, int n, std::vector<float*>& acts, float* out, bool tanh_out) {
  const float* in = x;
  for (std::size_t l = 0; l < net.depth(); ++l) {
    const int o = net.out[l];
    const bool last = l + 1 == net.depth();
    float* h = last ? out : acts[l];
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

void MlpUpdate::backward(const Net& net, const float* x, int n, const std::vector<float*>& acts, float* g_out,
                         const std::vector<float*>* wgrad, const std::vector<float*>* bgrad, float* dx, int dx_from,
                         int dx_cols) {
  float* g = g_out;
  const std::size_t last = net.depth() - 1;
  if (bgrad) column_sums(g, n, net.out[last], (*bgrad)[last]);
  for (std::size_t l = last + 1; l-- > 0;) {
    const int in = net.in[l], out = net.out[l];
    const float* x_l = l > 0 ? acts[l - 1] : x;
    // dL/dW = g^T x: [out, in].
    if (wgrad) gemm(sgemm_, true, false, out, in, n, 1.0f, g, out, x_l, in, 0.0f, (*wgrad)[l], in);
    if (l > 0) {
      // dL/dx = g W, then through the ReLU: zero where its output was zero (torch's threshold_backward);
      // the previous layer's bias gradient is the column sum of the result, taken in the same pass.
      float* next = (g == g0_) ? g1_ : g0_;
      gemm(sgemm_, false, false, n, in, out, 1.0f, g, out, net.w[l], in, 0.0f, next, in);
      relu_backward(next, acts[l - 1], n, in, bgrad ? (*bgrad)[l - 1] : nullptr);
      g = next;
    } else if (dx) {
      // Only the asked-for input columns: W's column block [dx_from, dx_from + dx_cols).
      gemm(sgemm_, false, false, n, dx_cols, out, 1.0f, g, out, net.w[0] + dx_from, in, 0.0f, dx, dx_cols);
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
  reserve(B);
  const int n = static_cast<int>(B);
  const std::int64_t O = obs_dim_, A = act_dim_;

  // Target: a' = clamp(mu'(s') + noise), y = r + discount * (1 - done) * min_k Q'_k(s', a').
  forward(actor_target_, ptr(bt.next_obs), n, actor_acts_, a_, /*tanh_out=*/true);
  if (bt.noise.defined()) {
    const float* eps = ptr(bt.noise);
    const float lo = static_cast<float>(-action_bound_), hi = static_cast<float>(action_bound_);
    for (std::int64_t i = 0; i < B * A; ++i) {
      const float v = a_[i] + eps[i];
      a_[i] = v < lo ? lo : (v > hi ? hi : v);
    }
  }
  concat_rows(ptr(bt.next_obs), O, a_, A, n, z_);
  for (std::size_t k = 0; k < critic_targets_.size(); ++k)
    forward(critic_targets_[k], z_, n, critic_acts_[k], q_[k], false);
  const float *r = ptr(bt.reward), *done = ptr(bt.done), *disc = ptr(bt.discount);
  for (int i = 0; i < n; ++i) {
    float next_q = q_[0][i];
    if (q_.size() > 1) {
      const float other = q_[1][i];
      next_q = (next_q < other || next_q != next_q) ? next_q : other;  // torch.minimum: NaN wins
    }
    // The torch path's order of operations: reward + (discount * (1 - done)) * next_q.
    y_[i] = r[i] + disc[i] * (1.0f - done[i]) * next_q;
  }

  // Online critics on (s, a), their loss and its gradient dL/dQ_k = 2 w (Q_k - y) / B.
  concat_rows(ptr(bt.obs), O, ptr(bt.action), A, n, z_);
  for (std::size_t k = 0; k < critics_.size(); ++k) forward(critics_[k], z_, n, critic_acts_[k], q_[k], false);
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
  for (std::size_t k = 0; k < critics_.size(); ++k) {
    for (int i = 0; i < n; ++i) g0_[i] = (w ? inv_n * w[i] : inv_n) * (2.0f * (q_[k][i] - y_[i]));
    backward(critics_[k], z_, n, critic_acts_[k], g0_, &critic_wgrad_[k], &critic_bgrad_[k], nullptr, 0, 0);
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

  forward(actor_, ptr(obs), n, actor_acts_, a_, /*tanh_out=*/true);
  concat_rows(ptr(obs), O, a_, A, n, z_);
  forward(critics_[0], z_, n, critic_acts_[0], q_[0], false);
  double q_sum = 0.0;
  for (int i = 0; i < n; ++i) q_sum += q_[0][i];
  // dJ/dQ = -1/B; back through the critic to its action input only (no critic weight gradients),
  // through tanh (dtanh = 1 - a^2), then through the actor with its weight gradients.
  const float g = -(1.0f / static_cast<float>(n));
  std::fill(g0_, g0_ + n, g);
  backward(critics_[0], z_, n, critic_acts_[0], g0_, nullptr, nullptr, da_, static_cast<int>(O), static_cast<int>(A));
  for (std::int64_t i = 0; i < B * A; ++i) g0_[i] = da_[i] * (1.0f - a_[i] * a_[i]);
  backward(actor_, ptr(obs), n, actor_acts_, g0_, &actor_wgrad_, &actor_bgrad_, nullptr, 0, 0);
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
