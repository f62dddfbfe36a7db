#include "bindings.hpp"
#include "convert.hpp"
#ifdef PYDPG_WITH_MUJOCO
#include "pydpg/action.hpp"
#endif

namespace pydpg::python {

// pydpg.contract.action.ActionMap wraps this as the observation builder is wrapped: it checks the
// mujoco.MjModel / MjData objects and keeps the model alive, so the raw addresses stay valid.
void bind_action(py::module_& m) {
#ifdef PYDPG_WITH_MUJOCO
  using pydpg::ActionMap;
  register_error<pydpg::ActionError>(m, "ActionError", PyExc_ValueError);
  m.attr("ACTION_SPEC_VERSION") = ActionMap::kSpecVersion;
  py::class_<ActionMap>(m, "ActionMap")
      .def(py::init([](const std::string& spec, std::uintptr_t model_address) {
             return std::make_unique<ActionMap>(spec, reinterpret_cast<const mjModel*>(model_address));
           }),
           py::arg("spec_json"), py::arg("model_address"))
      .def_property_readonly("size", &ActionMap::size)
      .def_property_readonly("has_pd", &ActionMap::has_pd)
      .def_property_readonly("entries",
                             [](const ActionMap& a) {
                               py::list out;
                               for (const auto& e : a.entries()) {
                                 py::dict d;
                                 d["label"] = e.label;
                                 d["actuator"] = e.actuator;
                                 d["scale"] = e.scale;
                                 d["offset"] = e.offset;
                                 d["pd"] = e.pd;
                                 d["kp"] = e.kp;
                                 d["kd"] = e.kd;
                                 d["torque_limit"] = e.torque_limit;
                                 out.append(d);
                               }
                               return out;
                             })
      .def("reset", &ActionMap::reset)
      .def(
          "command",
          [](ActionMap& a, py::array_t<double, py::array::c_style | py::array::forcecast> action) {
            if (action.ndim() != 1 || action.size() != a.size())
              throw pydpg::ActionError("ActionMap.command: the action has shape " + shape_str(shape_of(action)) +
                                       ", the spec lists " + std::to_string(a.size()) + " outputs");
            return a.command(action.data());
          },
          py::arg("action"), "False when the safe action was sent instead (a non-finite action)")
      .def("command_safe", &ActionMap::command_safe)
      .def_property_readonly("sending_zero", &ActionMap::sending_zero)
      .def(
          "restore",
          [](ActionMap& a, py::array_t<double, py::array::c_style | py::array::forcecast> last, bool zero) {
            if (last.ndim() != 1 || last.size() != a.size())
              throw pydpg::ActionError("ActionMap.restore: last_action has shape " + shape_str(shape_of(last)) +
                                       ", the spec lists " + std::to_string(a.size()) + " outputs");
            a.restore(last.data(), zero);
          },
          py::arg("last_action"), py::arg("sending_zero"))
      .def(
          "apply", [](ActionMap& a, std::uintptr_t data_address) { a.apply(reinterpret_cast<mjData*>(data_address)); },
          py::arg("data_address"))
      .def(
          "step",
          [](ActionMap& a, std::uintptr_t data_address, int physics_steps) {
            if (physics_steps < 1 || physics_steps > 1000000)
              throw pydpg::ActionError("ActionMap.step: physics_steps must be in 1..1e6, got " +
                                       std::to_string(physics_steps));
            a.step(reinterpret_cast<mjData*>(data_address), physics_steps);
          },
          py::arg("data_address"), py::arg("physics_steps"))
      .def_property_readonly("last_action",
                             [](const ActionMap& a) {
                               const auto& v = a.last_action();
                               return py::array_t<double>(static_cast<py::ssize_t>(v.size()), v.data());
                             })
      .def_property_readonly("commands",
                             [](const ActionMap& a) {
                               const auto& v = a.commands();
                               return py::array_t<double>(static_cast<py::ssize_t>(v.size()), v.data());
                             })
      .def_property_readonly("counters", [](const ActionMap& a) {
        const auto& c = a.counters();
        py::dict d;
        d["commands"] = c.commands;
        d["action_clips"] = c.action_clips;
        d["rate_limits"] = c.rate_limits;
        d["safe_actions"] = c.safe_actions;
        d["ctrl_clips"] = c.ctrl_clips;
        return d;
      });
#endif
}

}  // namespace pydpg::python
