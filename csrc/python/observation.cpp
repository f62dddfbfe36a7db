#include "bindings.hpp"
#include "convert.hpp"
#ifdef PYDPG_WITH_MUJOCO
#include "pydpg/observation.hpp"
#endif

namespace pydpg::python {

// pydpg.observation.ObservationBuilder wraps this: it checks that `model`/`data` are mujoco.MjModel /
// MjData objects and holds a reference to the model, so the raw addresses below stay valid.
void bind_observation(py::module_& m) {
#ifdef PYDPG_WITH_MUJOCO
  using pydpg::ObservationBuilder;
  register_error<pydpg::ObservationError>(m, "ObservationError", PyExc_ValueError);
  m.attr("OBSERVATION_SPEC_VERSION") = ObservationBuilder::kSpecVersion;
  py::class_<ObservationBuilder>(m, "ObservationBuilder")
      .def(py::init([](const std::string& spec, std::uintptr_t model_address) {
             return std::make_unique<ObservationBuilder>(spec, reinterpret_cast<const mjModel*>(model_address));
           }),
           py::arg("spec_json"), py::arg("model_address"))
      .def_property_readonly("size", &ObservationBuilder::size)
      .def_property_readonly("base_size", &ObservationBuilder::base_size)
      .def_property_readonly("has_history", &ObservationBuilder::has_history)
      .def_property_readonly("input_names", &ObservationBuilder::input_names)
      .def_property_readonly("term_details",
                             [](const ObservationBuilder& b) {
                               py::list out;
                               for (const auto& t : b.terms()) {
                                 py::dict d;
                                 d["label"] = t.label;
                                 d["offset"] = t.offset;
                                 d["size"] = t.size;
                                 d["history"] = t.history;
                                 d["base_offset"] = t.base_offset;
                                 d["input"] = t.input.empty() ? py::object(py::none()) : py::str(t.input);
                                 out.append(d);
                               }
                               return out;
                             })
      .def_property_readonly("terms",
                             [](const ObservationBuilder& b) {
                               py::list out;
                               for (const auto& t : b.terms()) out.append(py::make_tuple(t.label, t.offset, t.size));
                               return out;
                             })
      .def("input_size", &ObservationBuilder::input_size, py::arg("name"))
      .def(
          "set_input",
          [](ObservationBuilder& b, const std::string& name,
             py::array_t<float, py::array::c_style | py::array::forcecast> v) {
            b.set_input(name, v.data(), static_cast<int>(v.size()));
          },
          py::arg("name"), py::arg("values"))
      .def(
          "build",
          [](ObservationBuilder& b, std::uintptr_t data_address) {
            py::array_t<float> out(b.size());
            b.build(reinterpret_cast<const mjData*>(data_address), out.mutable_data());
            return out;
          },
          py::arg("data_address"))
      .def(
          "build_from_current",
          [](ObservationBuilder& b, py::array_t<double, py::array::c_style | py::array::forcecast> current) {
            if (current.ndim() != 1 || current.size() != b.base_size())
              throw pydpg::ObservationError("build_from_current: the base has " + std::to_string(b.base_size()) +
                                            " values, got " + std::to_string(current.size()) + " in " +
                                            std::to_string(current.ndim()) + " dimension(s)");
            py::array_t<float> out(b.size());
            b.build_from_current(current.data(), out.mutable_data());
            return out;
          },
          py::arg("current"))
      .def("reset", &ObservationBuilder::reset)
      .def("history_state",
           [](const ObservationBuilder& b) {
             const auto s = b.history_state();
             py::dict d;
             d["primed"] = s.primed;
             d["heads"] = s.heads;
             d["values"] = s.values;
             return d;
           })
      .def(
          "load_history_state",
          [](ObservationBuilder& b, bool primed, std::vector<int> heads, std::vector<double> values) {
            b.load_history_state({primed, std::move(heads), std::move(values)});
          },
          py::arg("primed"), py::arg("heads"), py::arg("values"));
  py::class_<pydpg::TerminationCheck>(m, "TerminationCheck")
      .def(py::init([](const std::string& spec, std::uintptr_t model_address) {
             return std::make_unique<pydpg::TerminationCheck>(spec, reinterpret_cast<const mjModel*>(model_address));
           }),
           py::arg("spec_json"), py::arg("model_address"))
      .def_property_readonly("labels",
                             [](const pydpg::TerminationCheck& c) {
                               py::list out;
                               for (const auto& k : c.conditions()) out.append(k.label);
                               return out;
                             })
      .def(
          "first_failure",
          [](const pydpg::TerminationCheck& c, std::uintptr_t data_address) {
            return c.first_failure(reinterpret_cast<const mjData*>(data_address));
          },
          py::arg("data_address"))
      .def_property_readonly("conditions",
                             [](const pydpg::TerminationCheck& c) {
                               py::list out;
                               for (const auto& k : c.conditions()) {
                                 py::dict d;
                                 d["label"] = k.label;
                                 d["offset"] = k.offset;
                                 d["size"] = k.size;
                                 d["min"] = k.lo;
                                 d["max"] = k.hi;
                                 d["strict"] = k.strict;
                                 d["finite"] = k.finite;
                                 out.append(d);
                               }
                               return out;
                             })
      .def(
          "evaluate",
          [](const pydpg::TerminationCheck& c, std::uintptr_t data_address) {
            py::array_t<double> values(c.value_count());
            py::array_t<bool> failed(static_cast<py::ssize_t>(c.conditions().size()));
            std::vector<unsigned char> f(c.conditions().size());
            c.evaluate(reinterpret_cast<const mjData*>(data_address), values.mutable_data(), f.data());
            for (std::size_t i = 0; i < f.size(); ++i) failed.mutable_at(i) = f[i] != 0;
            return py::make_tuple(values, failed);
          },
          py::arg("data_address"), "(values of every condition's term, concatenated; whether each condition fails)");
  m.def(
      "spec_from_policy_metadata",
      [](const std::string& metadata_json, std::uintptr_t model_address) {
        return ObservationBuilder::spec_from_policy_metadata(metadata_json,
                                                             reinterpret_cast<const mjModel*>(model_address));
      },
      py::arg("metadata_json"), py::arg("model_address") = 0);
  m.attr("HAVE_MUJOCO") = true;
#else
  m.attr("HAVE_MUJOCO") = false;
#endif
}

}  // namespace pydpg::python
