// One function per binding file of the _core module; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace pydpg::python {

void bind_replay_buffer(pybind11::module_& m);   // replay_buffer.cpp
void bind_policy_runtime(pybind11::module_& m);  // policy_runtime.cpp (and the rounding bound)
void bind_observation(pybind11::module_& m);     // observation.cpp (MuJoCo builds only; else HAVE_MUJOCO = False)
void bind_action(pybind11::module_& m);          // action.cpp (MuJoCo builds only)
void bind_randomization(pybind11::module_& m);   // randomization.cpp (MuJoCo builds only)
void bind_watchdog(pybind11::module_& m);        // watchdog.cpp
void bind_mlp_update(pybind11::module_& m);      // mlp_update.cpp

}  // namespace pydpg::python
