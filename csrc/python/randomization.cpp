#include "bindings.hpp"
#include "convert.hpp"
#ifdef PYDPG_WITH_MUJOCO
#include "pydpg/randomization.hpp"
#endif

namespace pydpg::python {

// pydpg.contract.randomization.DomainRandomization (the Gymnasium wrapper) drives this. The object
// writes into the model it was bound to, so it keeps the mujoco.MjModel object alive (keep_alive):
// its destructor puts the nominal values back into a model that still exists.
void bind_randomization(py::module_& m) {
#ifdef PYDPG_WITH_MUJOCO
  using pydpg::DomainRandomization;
  using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
  register_error<pydpg::RandomizationError>(m, "RandomizationError", PyExc_ValueError);
  m.attr("RANDOMIZATION_SPEC_VERSION") = DomainRandomization::kSpecVersion;
  m.attr("RANDOMIZATION_MAX_DELAY") = DomainRandomization::kMaxDelay;
  m.def("canonical_randomization_spec", &DomainRandomization::canonical_spec, py::arg("spec_json"));
  m.def("randomization_spec_keys", &DomainRandomization::spec_keys);
  m.def("randomization_fields", [] {
    py::list out;
    for (const auto& f : DomainRandomization::fields()) out.append(py::make_tuple(f.name, f.kind, f.nonnegative));
    return out;
  });
  py::class_<DomainRandomization>(m, "DomainRandomization")
      .def(py::init([](const std::string& spec, py::object model, int obs_size, Array low, Array high) {
             if (low.ndim() != 1 || high.ndim() != 1 || low.size() != high.size() || low.size() < 1)
               throw pydpg::RandomizationError("randomization: the action bounds must be two vectors of one size");
             const auto address = model.attr("_address").cast<std::uintptr_t>();
             return std::make_unique<DomainRandomization>(spec, reinterpret_cast<mjModel*>(address), obs_size,
                                                          static_cast<int>(low.size()), low.data(), high.data());
           }),
           py::arg("spec_json"), py::arg("model"), py::arg("obs_size"), py::arg("act_low"), py::arg("act_high"),
           py::keep_alive<1, 3>())
      .def_property_readonly("spec", &DomainRandomization::spec)
      .def_property_readonly("delay", &DomainRandomization::delay)
      .def_property_readonly("drawn_values", &DomainRandomization::drawn_values)
      .def("seed", &DomainRandomization::seed, py::arg("seed"))
      .def("reset", &DomainRandomization::reset)
      .def("restore_nominal", &DomainRandomization::restore_nominal)
      .def(
          "step",
          [](DomainRandomization& r, Array action, std::uintptr_t data_address) {
            if (action.ndim() != 1 || action.size() != r.act_size())
              throw pydpg::RandomizationError("randomization step: the action has shape " +
                                              shape_str(shape_of(action)) + ", the env takes " +
                                              std::to_string(r.act_size()) + " values");
            Array applied(r.act_size());
            r.step(action.data(), applied.mutable_data(), reinterpret_cast<mjData*>(data_address));
            return applied;
          },
          py::arg("action"), py::arg("data_address"))
      .def(
          "observe",
          [](DomainRandomization& r, Array obs) {
            if (obs.ndim() != 1 || obs.size() != r.obs_size())
              throw pydpg::RandomizationError("randomization observe: the observation has shape " +
                                              shape_str(shape_of(obs)) + ", the env observes " +
                                              std::to_string(r.obs_size()) + " values");
            Array out(r.obs_size());
            std::copy(obs.data(), obs.data() + obs.size(), out.mutable_data());
            r.observe(out.mutable_data());
            return out;
          },
          py::arg("obs"))
      .def("state",
           [](const DomainRandomization& r) {
             const auto s = r.state();
             py::dict d;
             d["rng"] = std::vector<std::uint64_t>(s.rng.begin(), s.rng.end());
             d["values"] = s.values;
             d["queue"] = s.queue;
             d["t"] = s.t;
             d["next_push"] = s.next_push;
             d["push_until"] = s.push_until;
             d["force"] = s.force;
             return d;
           })
      .def(
          "load_state",
          [](DomainRandomization& r, const std::vector<std::uint64_t>& rng, std::vector<double> values,
             std::vector<double> queue, long t, std::vector<long> next_push, std::vector<long> push_until,
             std::vector<double> force) {
            if (rng.size() != 4) throw pydpg::RandomizationError("randomization state: rng must be 4 words");
            DomainRandomization::State s;
            std::copy(rng.begin(), rng.end(), s.rng.begin());
            s.values = std::move(values);
            s.queue = std::move(queue);
            s.t = t;
            s.next_push = std::move(next_push);
            s.push_until = std::move(push_until);
            s.force = std::move(force);
            r.load_state(s);
          },
          py::arg("rng"), py::arg("values"), py::arg("queue"), py::arg("t"), py::arg("next_push"),
          py::arg("push_until"), py::arg("force"));
#endif
}

}  // namespace pydpg::python
