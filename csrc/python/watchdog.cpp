#include "bindings.hpp"
#include "convert.hpp"
#include "pydpg/watchdog.hpp"

namespace pydpg::python {

// The loop-side watchdog (<pydpg/watchdog.hpp>), for tests and for loops written in Python.
void bind_watchdog(py::module_& m) {
  using pydpg::Watchdog;
  py::class_<Watchdog>(m, "Watchdog")
      .def(py::init<>())
      .def(
          "add",
          [](Watchdog& w, const std::string& name, std::int64_t deadline_ns) {
            try {
              return w.add(name, deadline_ns);
            } catch (const std::invalid_argument& e) {
              throw py::value_error(e.what());
            }
          },
          py::arg("name"), py::arg("deadline_ns"))
      .def("reset", &Watchdog::reset, py::arg("now_ns"))
      .def(
          "refresh",
          [](Watchdog& w, int input, std::int64_t now_ns) {
            try {
              w.refresh(input, now_ns);
            } catch (const std::out_of_range& e) {
              throw py::index_error(e.what());
            }
          },
          py::arg("input"), py::arg("now_ns"))
      .def("stale", &Watchdog::stale, py::arg("now_ns"), "-1 when every input is fresh, else the first stale one")
      .def_property_readonly("stale_steps", &Watchdog::stale_steps)
      .def_property_readonly("inputs", [](const Watchdog& w) {
        py::list out;
        for (const auto& in : w.inputs()) {
          py::dict d;
          d["name"] = in.name;
          d["deadline_ns"] = in.deadline_ns;
          d["last_ns"] = in.last_ns;
          d["stale_steps"] = in.stale_steps;
          out.append(d);
        }
        return out;
      });
}

}  // namespace pydpg::python
