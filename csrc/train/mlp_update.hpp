// The DDPG / TD3 update for the default networks (pydpg.networks.Actor and Critic: Linear layers
// with ReLU between them, tanh on the actor's output), with its backward pass written out by hand.
//
// Why it exists: on a CPU, eager torch spends ~2.7 ms of a 256-256 update dispatching ~530 small ops
// around 28 matrix products that cost ~3.9 ms (benchmarks/bench_update.py, docs/benchmarks.md). Here
// the same products go to the same BLAS (blas.hpp) and everything between them is one pass over
// preallocated memory: bias and ReLU in the products' output pass, the ReLU mask and the bias
// gradient in one pass, no autograd graph. Adam and Polyak are torch's own fused kernels on the
// optimizer's own state, so checkpoints are the torch path's.
//
// It works on views of the torch modules' parameters and the optimizers' state, in place; it owns
// only its scratch. The torch update in pydpg/core/agent.py stays the reference: tests/test_mlp_update.py
// pins the two together. No Python here.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "blas.hpp"

namespace pydpg {

// One MLP as nn.Sequential(Linear, ReLU, ..., Linear) holds it: its parameters, [out, in] and [out].
struct MlpParams {
  std::vector<at::Tensor> weight, bias;
};

// One torch.optim.Adam (one parameter group, fused kernel): per parameter, in the optimizer's order,
// the gradient buffer and the optimizer's exp_avg, exp_avg_sq and step tensors.
struct AdamState {
  std::vector<at::Tensor> grad, exp_avg, exp_avg_sq, step;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

// A sampled minibatch (pydpg.batch.Batch): float32, contiguous, B rows. `weights` (PER, [B, 1]) and
// `noise` (TD3 target smoothing, [B, act_dim]) may be undefined tensors.
struct UpdateBatch {
  at::Tensor obs, action, reward, next_obs, done, discount, weights, noise;
};

struct CriticStepStats {
  double loss = 0.0, q_mean = 0.0;
};

struct UpdateStats {
  double critic_loss = 0.0, q_mean = 0.0;
  double actor_loss = std::numeric_limits<double>::quiet_NaN();  // NaN when the actor step was not due
};

class MlpUpdate {
 public:
  // critics and critic_targets: one, or two for TD3. The optimizers' parameter order is
  // [actor layer 0 weight, bias, layer 1 weight, bias, ...] and the same for critic 0 then critic 1,
  // as Module.parameters() lists them. `action_bound` clamps smoothed target actions. `portable`
  // ignores MKL's sgemm even where torch exports it (the path of a torch build without MKL).
  // Throws std::invalid_argument naming the first tensor that does not fit.
  MlpUpdate(MlpParams actor, MlpParams actor_target, std::vector<MlpParams> critics,
            std::vector<MlpParams> critic_targets, AdamState actor_opt, AdamState critic_opt, double action_bound,
            bool portable = false);

  // One critic step: y = r + discount * (1 - done) * min_k Q'_k(s', clamp(mu'(s') + noise)),
  // L = mean_i w_i sum_k (Q_k(s_i, a_i) - y_i)^2, its gradient, one Adam step at `lr`.
  // td_errors ([B] float32) receives |Q_1(s, a) - y|.
  CriticStepStats critic_step(const UpdateBatch& batch, double lr, const at::Tensor& td_errors);
  // One actor step on the (just updated) first critic: J = -mean_i Q_1(s_i, mu(s_i)); its gradient
  // is the deterministic policy gradient dQ/da * dmu/dtheta. Returns J.
  double actor_step(const at::Tensor& obs, double lr);
  // theta' <- theta' + tau * (theta - theta') for the actor and every critic.
  void soft_update(double tau);

  // One DDPG/TD3 update in its order: the critic step, then, when the actor step is due (an
  // actor_lr; the agent decides, DDPGAgent.actor_step_due), the actor step on the updated critic
  // and the Polyak update of every target.
  UpdateStats update(const UpdateBatch& batch, double critic_lr, std::optional<double> actor_lr, double tau,
                     const at::Tensor& td_errors);

  std::int64_t obs_dim() const { return obs_dim_; }
  std::int64_t act_dim() const { return act_dim_; }
  // "mkl sgemm" or "aten addmm".
  const char* kernels() const { return sgemm_ ? "mkl sgemm" : "aten addmm"; }

 private:
  struct Net {
    std::vector<float*> w, b;
    std::vector<int> in, out;
    std::size_t depth() const { return w.size(); }
  };
  Net check_net(const MlpParams& p, std::int64_t in, std::int64_t out, const char* name) const;
  void reserve(std::int64_t rows);
  // Forward pass of `net` on x [n, net.in[0]]. Hidden activations go to acts[l] (each n * width);
  // the output to `out`. tanh_out: the actor's squashing.
  void forward(const Net& net, const float* x, int n, std::vector<float*>& acts, float* out, bool tanh_out);
  // Backward from g_out [n, net.out.back()] (overwritten). With grads: weight and bias gradients
  // into them; dx: the gradient for columns [dx_from, dx_from + dx_cols) of the input into dx.
  void backward(const Net& net, const float* x, int n, const std::vector<float*>& acts, float* g_out,
                const std::vector<float*>* wgrad, const std::vector<float*>* bgrad, float* dx, int dx_from,
                int dx_cols);
  void adam(AdamState& s, std::vector<at::Tensor>& params, double lr);

  SgemmFn sgemm_ = nullptr;
  VmsTanhFn vms_tanh_ = nullptr;
  std::int64_t obs_dim_ = 0, act_dim_ = 0;
  int width_ = 0;  // widest hidden layer
  double action_bound_ = 1.0;
  Net actor_, actor_target_;
  std::vector<Net> critics_, critic_targets_;
  std::vector<at::Tensor> actor_params_, critic_params_, online_, target_;
  AdamState actor_opt_, critic_opt_;
  std::vector<float*> actor_wgrad_, actor_bgrad_;
  std::vector<std::vector<float*>> critic_wgrad_, critic_bgrad_;

  // Scratch, sized for the largest batch seen; reallocated only when a larger one comes.
  std::int64_t rows_ = 0;
  std::vector<at::Tensor> scratch_;
  float *z_ = nullptr, *a_ = nullptr, *da_ = nullptr, *g0_ = nullptr, *g1_ = nullptr, *y_ = nullptr;
  std::vector<float*> actor_acts_;
  std::vector<std::vector<float*>> critic_acts_;  // per critic, its hidden layers (targets reuse them)
  std::vector<float*> q_;                         // per critic [B]
};

}  // namespace pydpg
