// The DDPG / TD3 update for the default networks (pydpg.networks.Actor and Critic: Linear layers
// with ReLU between them, tanh on the actor's output), with its backward pass written out by hand;
// and CrossQ's (Bhatt et al. 2024): the same networks with batch renormalization in front of every
// Linear, no target networks, the critic's target from one joint training-mode pass over
// [(s, a); (s', mu(s'))].
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

// Batch renormalization in front of a Linear layer, as pydpg.core.networks.BatchRenorm holds it:
// weight, bias, running_mean and running_var [F] float32, steps a scalar int64 (training forwards so far).
struct BatchRenormParams {
  at::Tensor weight, bias, running_mean, running_var, steps;
  double momentum = 0.01, eps = 1e-3, r_max = 3.0, d_max = 5.0;
  std::int64_t warmup = 100000;
};

// One MLP as nn.Sequential(Linear, ReLU, ..., Linear) holds it: its parameters, [out, in] and [out];
// with `norm` (one per Linear), nn.Sequential(BatchRenorm, Linear, ReLU, ..., BatchRenorm, Linear).
struct MlpParams {
  std::vector<at::Tensor> weight, bias;
  std::vector<BatchRenormParams> norm;
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
  // as Module.parameters() lists them (a normalized layer's weight and bias come before its Linear's).
  // No target networks (an actor_target without layers, no critic_targets): CrossQ's update, which
  // needs every network normalized; normalized networks need it. `action_bound` clamps smoothed
  // target actions. `portable` ignores MKL's sgemm even where torch exports it (the path of a torch
  // build without MKL). Throws std::invalid_argument naming the first tensor that does not fit.
  MlpUpdate(MlpParams actor, MlpParams actor_target, std::vector<MlpParams> critics,
            std::vector<MlpParams> critic_targets, AdamState actor_opt, AdamState critic_opt, double action_bound,
            bool portable = false);

  // One critic step: y = r + discount * (1 - done) * min_k Q'_k(s', clamp(mu'(s') + noise)),
  // L = mean_i w_i sum_k (Q_k(s_i, a_i) - y_i)^2, its gradient, one Adam step at `lr`.
  // td_errors ([B] float32) receives |Q_1(s, a) - y|. Without targets (CrossQ): mu' is the actor in
  // evaluation mode, and each critic runs once in training mode on the 2B rows [(s, a); (s', a')],
  // Q'_k its last B outputs (held constant); its batch statistics and gradient are the joint batch's.
  CriticStepStats critic_step(const UpdateBatch& batch, double lr, const at::Tensor& td_errors);
  // One actor step on the (just updated) first critic: J = -mean_i Q_1(s_i, mu(s_i)); its gradient
  // is the deterministic policy gradient dQ/da * dmu/dtheta. Returns J. Normalized: the actor in
  // training mode (its batch statistics, which it updates), the critic in evaluation mode.
  double actor_step(const at::Tensor& obs, double lr);
  // theta' <- theta' + tau * (theta - theta') for the actor and every critic; nothing without targets.
  void soft_update(double tau);

  // One DDPG/TD3 update in its order: the critic step, then, when the actor step is due (an
  // actor_lr; the agent decides, DDPGAgent.actor_step_due), the actor step on the updated critic
  // and the Polyak update of every target.
  UpdateStats update(const UpdateBatch& batch, double critic_lr, std::optional<double> actor_lr, double tau,
                     const at::Tensor& td_errors);

  std::int64_t obs_dim() const { return obs_dim_; }
  bool has_targets() const { return !critic_targets_.empty(); }
  std::int64_t act_dim() const { return act_dim_; }
  // "mkl sgemm" or "aten addmm".
  const char* kernels() const { return sgemm_ ? "mkl sgemm" : "aten addmm"; }

 private:
  // A batch renormalization layer's tensors as raw pointers, and its constants in float32 as the
  // module holds them on a float32 tensor's side of each operation.
  struct Norm {
    float *w = nullptr, *b = nullptr, *running_mean = nullptr, *running_var = nullptr;
    std::int64_t* steps = nullptr;
    float momentum = 0.0f, eps = 0.0f, r_max = 1.0f, d_max = 0.0f;
    std::int64_t warmup = 0;
  };
  struct Net {
    std::vector<float*> w, b;
    std::vector<int> in, out;
    std::vector<Norm> norm;  // empty, or one in front of each Linear
    std::size_t depth() const { return w.size(); }
    bool normalized() const { return !norm.empty(); }
  };
  // Per layer: the Linear's weight and bias gradients, and (normalized) the normalization's.
  struct Grads {
    std::vector<float*> w, b, norm_w, norm_b;
  };
  // One network's pass over a batch, kept for its backward: hidden ReLU outputs (acts), and for a
  // normalized network each normalization's output (u, the Linear's input), its x_hat (training
  // mode) and per-column coefficients (col: r, d, 1/std in training mode; weight / std in evaluation).
  struct Pass {
    std::vector<float*> acts, u, xhat, col;
    bool train = false;
  };
  Net check_net(const MlpParams& p, std::int64_t in, std::int64_t out, const char* name) const;
  void reserve(std::int64_t rows);
  // Forward pass of `net` on x [n, net.in[0]]. Hidden activations go to pass.acts[l] (each n * width);
  // the output to `out`. tanh_out: the actor's squashing. train: normalizations use and update their
  // batch statistics (else their running ones).
  void forward(const Net& net, const float* x, int n, Pass& pass, float* out, bool tanh_out, bool train);
  // One normalization of x [n, cols] into pass.u[l] (and xhat, col).
  void normalize(const Norm& nm, const float* x, int n, int cols, Pass& pass, std::size_t l);
  // Backward from g_out [n, net.out.back()] (overwritten). With grads: weight and bias gradients
  // into them; dx: the gradient for columns [dx_from, dx_from + dx_cols) of the input into dx.
  void backward(const Net& net, const float* x, int n, const Pass& pass, float* g_out, const Grads* grads, float* dx,
                int dx_from, int dx_cols);
  void adam(AdamState& s, std::vector<at::Tensor>& params, double lr);

  SgemmFn sgemm_ = nullptr;
  VmsTanhFn vms_tanh_ = nullptr;
  std::int64_t obs_dim_ = 0, act_dim_ = 0;
  int width_ = 0;  // widest layer input or output
  double action_bound_ = 1.0;
  Net actor_, actor_target_;
  std::vector<Net> critics_, critic_targets_;
  std::vector<at::Tensor> actor_params_, critic_params_, online_, target_;
  AdamState actor_opt_, critic_opt_;
  Grads actor_grads_;
  std::vector<Grads> critic_grads_;

  // Scratch, sized for the largest batch seen (2B rows for the joint pass); reallocated only when a
  // larger one comes.
  std::int64_t rows_ = 0;
  std::vector<at::Tensor> scratch_;
  float *z_ = nullptr, *a_ = nullptr, *da_ = nullptr, *g0_ = nullptr, *g1_ = nullptr, *y_ = nullptr;
  std::vector<double> col_sums_;  // per column, the batch sums of a normalization (double accumulation)
  std::vector<float> col_coef_;   // per column, a normalization's backward coefficients
  Pass actor_pass_;
  std::vector<Pass> critic_pass_;  // per critic (targets reuse them)
  std::vector<float*> q_;          // per critic [rows]
};

}  // namespace pydpg
