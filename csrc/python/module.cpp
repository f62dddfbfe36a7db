// The _core module: csrc/python/ is the only C++ that knows about Python, a file per subject
// (bindings.hpp lists them). It converts arguments, releases the GIL around real work, and maps the
// core's exceptions to Python ones. Arrays cross as NumPy buffers; a float32 C-contiguous
// array (or a CPU torch tensor, through its zero-copy __array__) is read in place. The C++ update takes
// the modules' parameters and the optimizers' state as torch tensors through DLPack (it keeps owning
// references and works on their storage), and each batch as NumPy views for the call.
#include "bindings.hpp"
#include "convert.hpp"
#include "replay_buffer.hpp"

using namespace pydpg::python;
using pydpg::ReplayBuffer;

PYBIND11_MODULE(_core, m) {
  m.doc() = "pydpg's C++ core: replay buffer (see pydpg.ReplayBuffer for the documented API)";
  bind_policy_runtime(m);
  bind_observation(m);
  bind_action(m);
  bind_randomization(m);
  bind_watchdog(m);
  bind_mlp_update(m);

  register_error<pydpg::FormatError>(m, "FormatError", PyExc_ValueError);
  map_error<pydpg::InvalidArgument>(PyExc_ValueError);
  map_error<pydpg::FileError>(PyExc_OSError);
  map_error<pydpg::OutOfMemory>(PyExc_MemoryError);

  // The PER priority floor: the trainer adds it to |TD error| (Schaul et al. 2016's epsilon) and the
  // buffer floors stored priorities at it; one constant, read by Python from here.
  m.attr("MIN_PRIORITY") = ReplayBuffer::kMinPriority;
  bind_replay_buffer(m);
}
