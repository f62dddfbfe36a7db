// The C++ update (csrc/train/mlp_update.*) from C++ alone, run under the sanitizers by tests/cpp/sanitize.sh:
// its hand-written loops index scratch that grows with the batch, weights of any depth and width,
// and column blocks of the critic's first layer. Parity with the autograd update is the Python
// suite's job (tests/test_mlp_update.py); here every path runs, on sizes that change, and must stay
// in bounds, finite, and learn a fixed batch.
#include <cmath>
#include <stdexcept>

#include <ATen/ATen.h>

#include "mlp_update.hpp"
// c10's logging defines a CHECK of its own (a fatal assertion); the drivers' counting one replaces it.
#undef CHECK
#include "check.hpp"

using pydpg::AdamState;
using pydpg::MlpParams;
using pydpg::MlpUpdate;
using pydpg::UpdateBatch;

namespace {

MlpParams mlp(std::vector<std::int64_t> widths) {
  MlpParams p;
  for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(widths[l]));
    p.weight.push_back(at::rand({widths[l + 1], widths[l]}) * (2 * bound) - bound);
    p.bias.push_back(at::rand({widths[l + 1]}) * (2 * bound) - bound);
  }
  return p;
}

MlpParams copy_of(const MlpParams& p) {
  MlpParams c;
  for (const auto& w : p.weight) c.weight.push_back(w.clone());
  for (const auto& b : p.bias) c.bias.push_back(b.clone());
  return c;
}

AdamState adam_for(const std::vector<MlpParams>& nets) {
  AdamState s;
  for (const auto& n : nets)
    for (std::size_t l = 0; l < n.weight.size(); ++l)
      for (const at::Tensor& t : {n.weight[l], n.bias[l]}) {
        s.grad.push_back(at::zeros_like(t));
        s.exp_avg.push_back(at::zeros_like(t));
        s.exp_avg_sq.push_back(at::zeros_like(t));
        s.step.push_back(at::zeros({}, at::kFloat));
      }
  return s;
}

bool finite(const at::Tensor& t) { return at::isfinite(t).all().item<bool>(); }

UpdateBatch batch(std::int64_t n, std::int64_t obs, std::int64_t act, bool weights, bool noise) {
  UpdateBatch b;
  b.obs = at::randn({n, obs});
  b.action = at::rand({n, act}) * 2 - 1;
  b.reward = at::randn({n, 1});
  b.next_obs = at::randn({n, obs});
  b.done = (at::rand({n, 1}) < 0.2).to(at::kFloat);
  b.discount = at::full({n, 1}, 0.99f);
  if (weights) b.weights = at::rand({n, 1}) + 0.5;
  if (noise) b.noise = (at::randn({n, act}) * 0.2).clamp(-0.5, 0.5);
  return b;
}

void run(bool twin, std::vector<std::int64_t> hidden, bool portable) {
  const std::int64_t obs = 7, act = 3;
  std::vector<std::int64_t> aw{obs}, cw{obs + act};
  for (auto h : hidden) aw.push_back(h), cw.push_back(h);
  aw.push_back(act);
  cw.push_back(1);
  MlpParams actor = mlp(aw), actor_t = copy_of(actor);
  std::vector<MlpParams> critics{mlp(cw)}, targets{copy_of(critics[0])};
  if (twin) critics.push_back(mlp(cw)), targets.push_back(copy_of(critics[1]));
  MlpUpdate u(actor, actor_t, critics, targets, adam_for({actor}), adam_for(critics), 1.0, portable);
  CHECK(u.obs_dim() == obs && u.act_dim() == act);

  // Growing and shrinking batches: the scratch is reallocated only to grow, and reused below that.
  for (std::int64_t n : {1, 5, 64, 3, 130, 64}) {
    UpdateBatch b = batch(n, obs, act, n % 2 == 0, twin);
    at::Tensor td = at::empty({n});
    auto s = u.critic_step(b, 1e-3, td);
    CHECK(std::isfinite(s.loss) && std::isfinite(s.q_mean) && finite(td) && (td >= 0).all().item<bool>());
    CHECK(std::isfinite(u.actor_step(b.obs, 1e-3)));
    u.soft_update(0.005);
  }
  for (const auto& w : actor.weight) CHECK(finite(w));
  for (const auto& c : critics)
    for (const auto& w : c.weight) CHECK(finite(w));

  // update(): the critic step alone when no actor step is due (actor_loss NaN, the actor and the
  // targets untouched), all three steps when it is.
  {
    UpdateBatch b = batch(16, obs, act, false, twin);
    at::Tensor td = at::empty({16});
    const at::Tensor actor_before = actor.weight[0].clone(), target_before = actor_t.weight[0].clone();
    auto s = u.update(b, 1e-3, std::nullopt, 0.005, td);
    CHECK(std::isfinite(s.critic_loss) && std::isnan(s.actor_loss));
    CHECK(at::equal(actor.weight[0], actor_before) && at::equal(actor_t.weight[0], target_before));
    s = u.update(b, 1e-3, 1e-3, 0.005, td);
    CHECK(std::isfinite(s.critic_loss) && std::isfinite(s.actor_loss));
    CHECK(!at::equal(actor.weight[0], actor_before) && !at::equal(actor_t.weight[0], target_before));
  }

  // A fixed batch, terminal everywhere (y = r): the critic's loss must fall, the actor's J too.
  UpdateBatch fixed = batch(32, obs, act, false, twin);
  fixed.done.fill_(1.0f);
  at::Tensor td = at::empty({32});
  const double first = u.critic_step(fixed, 1e-3, td).loss;
  const double j0 = u.actor_step(fixed.obs, 1e-3);
  double last = first, j = j0;
  for (int i = 0; i < 300; ++i) {
    last = u.critic_step(fixed, 1e-3, td).loss;
    j = u.actor_step(fixed.obs, 1e-3);
  }
  CHECK(last < 0.5 * first);
  CHECK(j < j0);

  // Bad batches: a clear exception, nothing written.
  at::Tensor before = critics[0].weight[0].clone();
  UpdateBatch bad = batch(8, obs, act, false, false);
  bad.action = at::zeros({8, act + 1});
  CHECK_THROWS(std::invalid_argument, u.critic_step(bad, 1e-3, at::empty({8})));
  bad = batch(8, obs, act, false, false);
  CHECK_THROWS(std::invalid_argument, u.critic_step(bad, 1e-3, at::empty({7})));
  bad.obs = bad.obs.to(at::kDouble);
  CHECK_THROWS(std::invalid_argument, u.critic_step(bad, 1e-3, at::empty({8})));
  CHECK_THROWS(std::invalid_argument, u.actor_step(at::zeros({4, obs + 1}), 1e-3));
  CHECK(at::equal(before, critics[0].weight[0]));
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (bool portable : {false, true}) {
    run(false, {16, 24}, portable);
    run(true, {20}, portable);
    run(true, {8, 12, 9}, portable);
  }
  // Mismatched networks are refused by name at construction.
  MlpParams actor = mlp({5, 8, 2});
  std::vector<MlpParams> critics{mlp({7, 8, 1})};
  CHECK_THROWS(std::invalid_argument,
               MlpUpdate(actor, copy_of(actor), critics, {mlp({6, 8, 1})}, adam_for({actor}), adam_for(critics), 1.0));
  CHECK_THROWS(std::invalid_argument,
               MlpUpdate(actor, copy_of(actor), critics, {copy_of(critics[0])}, adam_for({actor}), adam_for({}), 1.0));
  CHECK_THROWS(std::invalid_argument, MlpUpdate(actor, copy_of(actor), {mlp({7, 8, 2})}, {mlp({7, 8, 2})},
                                                adam_for({actor}), adam_for({mlp({7, 8, 2})}), 1.0));
  return pydpg_test::finish("update_test");
}
