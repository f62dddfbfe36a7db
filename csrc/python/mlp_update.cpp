#include <ATen/DLConvertor.h>

#include <algorithm>
#include <initializer_list>
#include <optional>

#include "bindings.hpp"
#include "convert.hpp"
#include "mlp_update.hpp"

namespace pydpg::python {

namespace {

// A torch tensor (anything with __dlpack__) as an at::Tensor on the same memory, holding a
// reference to it; None is an undefined tensor. A tensor that requires grad is refused by torch
// itself ("use tensor.detach()").
at::Tensor tensor_arg(py::handle h, const std::string& name) {
  if (h.is_none()) return at::Tensor();
  if (!py::hasattr(h, "__dlpack__")) throw py::type_error(name + " must be a torch tensor, got " + type_name(h));
  py::object exported;
  try {
    exported = h.attr("__dlpack__")();
  } catch (py::error_already_set& e) {  // e.g. a tensor that requires grad: say which argument it was
    throw py::type_error(name + ": " + e.what());
  }
  py::capsule cap = py::reinterpret_borrow<py::capsule>(exported);
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (!managed) throw py::error_already_set();
  at::Tensor t = at::fromDLPack(managed);
  PyCapsule_SetName(cap.ptr(), "used_dltensor");  // the tensor owns it now (the DLPack protocol)
  return t;
}

// A CPU torch tensor of a batch as an at::Tensor viewing its memory through NumPy (cheaper per call
// than DLPack); `keep` holds the array, which must outlive the view. None is an undefined tensor.
// A non-contiguous input is read from a contiguous copy, as the autograd update would accept it;
// an output (`copy_ok` false) is viewed as it is, so that what is written lands in it.
at::Tensor batch_tensor(py::handle h, const char* name, std::vector<py::array>& keep, bool copy_ok = true) {
  if (h.is_none()) return at::Tensor();
  if (!py::hasattr(h, "numpy"))
    throw py::type_error(std::string(name) + " must be a torch tensor, got " + type_name(h));
  py::array a;
  try {
    a = py::reinterpret_borrow<py::array>(h.attr("numpy")());
  } catch (py::error_already_set& e) {  // a CUDA tensor, one that requires grad, ...
    throw py::type_error(std::string(name) + ": " + e.what());
  }
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::value_error(std::string(name) + " must be a float32 CPU tensor, got dtype " +
                          std::string(py::str(a.dtype())));
  if (copy_ok && !(a.flags() & py::array::c_style)) a = py::array::ensure(a, py::array::c_style);
  std::vector<std::int64_t> shape(a.shape(), a.shape() + a.ndim()), strides;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) strides.push_back(a.strides(i) / static_cast<py::ssize_t>(sizeof(float)));
  at::Tensor t = at::from_blob(a.mutable_data(), shape, strides, at::kFloat);
  keep.push_back(std::move(a));
  return t;
}

std::vector<at::Tensor> tensor_list(py::handle seq, const std::string& name) {
  std::vector<at::Tensor> out;
  std::size_t i = 0;
  for (py::handle h : py::reinterpret_borrow<py::sequence>(seq))
    out.push_back(tensor_arg(h, name + "[" + std::to_string(i++) + "]"));
  return out;
}

// [w0, b0, w1, b1, ...] as Module.parameters() lists an nn.Sequential of Linear layers.
pydpg::MlpParams mlp_params(py::handle seq, const std::string& name) {
  std::vector<at::Tensor> flat = tensor_list(seq, name);
  if (flat.size() % 2)
    throw py::value_error(name + ": expected weight, bias pairs, got " + std::to_string(flat.size()) + " tensors");
  pydpg::MlpParams p;
  for (std::size_t i = 0; i < flat.size(); i += 2) {
    p.weight.push_back(flat[i]);
    p.bias.push_back(flat[i + 1]);
  }
  return p;
}

// Exactly `keys` in `d`: a missing key or one not among them is refused by name.
void check_keys(const py::dict& d, std::initializer_list<const char*> keys, const std::string& name) {
  for (const char* key : keys)
    if (!d.contains(key)) throw py::value_error(name + " has no '" + key + "'");
  for (auto item : d) {
    const std::string k = py::str(item.first);
    if (std::none_of(keys.begin(), keys.end(), [&](const char* key) { return k == key; }))
      throw py::value_error(name + " has an unknown key '" + k + "'");
  }
}

// A BatchRenorm's tensors and constants, from a dict of them (pydpg.core.mlp_update._norm_params).
pydpg::BatchRenormParams norm_params(py::handle h, const std::string& name) {
  if (!py::isinstance<py::dict>(h)) throw py::type_error(name + " must be a dict, got " + type_name(h));
  const py::dict d = py::reinterpret_borrow<py::dict>(h);
  check_keys(d,
             {"weight", "bias", "running_mean", "running_var", "steps", "momentum", "warmup", "eps", "r_max", "d_max"},
             name);
  pydpg::BatchRenormParams q;
  q.weight = tensor_arg(d["weight"], name + ".weight");
  q.bias = tensor_arg(d["bias"], name + ".bias");
  q.running_mean = tensor_arg(d["running_mean"], name + ".running_mean");
  q.running_var = tensor_arg(d["running_var"], name + ".running_var");
  q.steps = tensor_arg(d["steps"], name + ".steps");
  q.momentum = d["momentum"].cast<double>();
  q.warmup = d["warmup"].cast<std::int64_t>();
  q.eps = d["eps"].cast<double>();
  q.r_max = d["r_max"].cast<double>();
  q.d_max = d["d_max"].cast<double>();
  return q;
}

// A network's Linear layers, and with `norms` (not None) its normalizations, one per layer.
pydpg::MlpParams net_params(py::handle seq, py::handle norms, const std::string& name) {
  pydpg::MlpParams p = mlp_params(seq, name);
  if (norms.is_none()) return p;
  std::size_t i = 0;
  for (py::handle h : py::reinterpret_borrow<py::sequence>(norms))
    p.norm.push_back(norm_params(h, name + " normalization " + std::to_string(i++)));
  return p;
}

pydpg::AdamState adam_state(const py::dict& d, const std::string& name) {
  check_keys(d, {"grad", "exp_avg", "exp_avg_sq", "step", "beta1", "beta2", "eps", "weight_decay"}, name);
  pydpg::AdamState s;
  s.grad = tensor_list(d["grad"], name + ".grad");
  s.exp_avg = tensor_list(d["exp_avg"], name + ".exp_avg");
  s.exp_avg_sq = tensor_list(d["exp_avg_sq"], name + ".exp_avg_sq");
  s.step = tensor_list(d["step"], name + ".step");
  s.beta1 = d["beta1"].cast<double>();
  s.beta2 = d["beta2"].cast<double>();
  s.eps = d["eps"].cast<double>();
  s.weight_decay = d["weight_decay"].cast<double>();
  return s;
}

}  // namespace

void bind_mlp_update(py::module_& m) {
  using pydpg::MlpUpdate;
  py::class_<MlpUpdate>(m, "MlpUpdate")
      .def(py::init([](py::handle actor, py::handle actor_target, py::sequence critics, py::sequence critic_targets,
                       py::dict actor_opt, py::dict critic_opt, double action_bound, bool portable,
                       py::handle actor_norm, py::handle critic_norms) {
             if (!critic_norms.is_none() && py::len(critic_norms) != critics.size())
               throw py::value_error("critic_norms: one list per critic expected, got " +
                                     std::to_string(py::len(critic_norms)) + " for " + std::to_string(critics.size()) +
                                     " critics");
             std::vector<pydpg::MlpParams> cs, cts;
             for (std::size_t k = 0; k < critics.size(); ++k)
               cs.push_back(net_params(
                   critics[k], critic_norms.is_none() ? py::object(py::none()) : py::object(critic_norms[py::int_(k)]),
                   "critics[" + std::to_string(k) + "]"));
             for (std::size_t k = 0; k < critic_targets.size(); ++k)
               cts.push_back(mlp_params(critic_targets[k], "critic_targets[" + std::to_string(k) + "]"));
             // No actor target (None): CrossQ's update, without target networks.
             pydpg::MlpParams at =
                 actor_target.is_none() ? pydpg::MlpParams{} : mlp_params(actor_target, "actor_target");
             return std::make_unique<MlpUpdate>(net_params(actor, actor_norm, "actor"), std::move(at), std::move(cs),
                                                std::move(cts), adam_state(actor_opt, "actor_opt"),
                                                adam_state(critic_opt, "critic_opt"), action_bound, portable);
           }),
           py::arg("actor"), py::arg("actor_target"), py::arg("critics"), py::arg("critic_targets"),
           py::arg("actor_opt"), py::arg("critic_opt"), py::arg("action_bound") = 1.0, py::arg("portable") = false,
           py::arg("actor_norm") = py::none(), py::arg("critic_norms") = py::none())
      .def(
          "update",
          [](MlpUpdate& u, py::handle obs, py::handle action, py::handle reward, py::handle next_obs, py::handle done,
             py::handle discount, py::handle weights, py::handle noise, double critic_lr, py::object actor_lr,
             double tau, py::handle td_errors) {
            std::vector<py::array> keep;  // the arrays the views below read, alive until the call returns
            pydpg::UpdateBatch b{batch_tensor(obs, "obs", keep),         batch_tensor(action, "action", keep),
                                 batch_tensor(reward, "reward", keep),   batch_tensor(next_obs, "next_obs", keep),
                                 batch_tensor(done, "done", keep),       batch_tensor(discount, "discount", keep),
                                 batch_tensor(weights, "weights", keep), batch_tensor(noise, "noise", keep)};
            const at::Tensor td = batch_tensor(td_errors, "td_errors", keep, /*copy_ok=*/false);
            const std::optional<double> alr =
                actor_lr.is_none() ? std::nullopt : std::optional<double>(actor_lr.cast<double>());
            pydpg::UpdateStats s;
            {
              py::gil_scoped_release release;
              s = u.update(b, critic_lr, alr, tau, td);
            }
            return py::make_tuple(s.critic_loss, s.q_mean, s.actor_loss);  // with the GIL again
          },
          py::arg("obs"), py::arg("action"), py::arg("reward"), py::arg("next_obs"), py::arg("done"),
          py::arg("discount"), py::arg("weights"), py::arg("noise"), py::arg("critic_lr"), py::arg("actor_lr"),
          py::arg("tau"), py::arg("td_errors"),
          "One critic step; with actor_lr (not None) also the actor step and the Polyak update. Returns "
          "(critic_loss, q_mean, actor_loss), actor_loss NaN without the actor step.")
      .def_property_readonly("kernels", &MlpUpdate::kernels)
      .def_property_readonly("has_targets", &MlpUpdate::has_targets);
}

}  // namespace pydpg::python
