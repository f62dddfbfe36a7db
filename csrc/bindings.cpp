// The only file that knows about Python: converts arguments, releases the GIL around real work, and
// maps the core's exceptions to Python ones. Arrays cross as NumPy buffers; a float32 C-contiguous
// array (or a CPU torch tensor, through its zero-copy __array__) is read in place. The C++ update takes
// the modules' parameters and the optimizers' state as torch tensors through DLPack (it keeps owning
// references and works on their storage), and each batch as NumPy views for the call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <ATen/DLConvertor.h>

#include "mlp_update.hpp"
#include "policy_runtime.hpp"
#include "replay_buffer.hpp"
#include "rounding_bound.hpp"
#ifdef PYDPG_WITH_MUJOCO
#include "observation.hpp"
#endif

namespace py = pybind11;
using pydpg::ReplayBuffer;

namespace {

using Shape = std::vector<std::int64_t>;
using pydpg::shape_str;  // Python's tuple spelling, "(3,)" and "(2, 3)", as the buffer's own errors use

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

// The message of the pending Python error, which is then cleared.
std::string take_python_error() {
  py::error_already_set e;
  return e.what();
}

// Sets a Python error from a C++ message. Messages can quote bytes from a damaged file (a metadata
// document, an entry name) and Python strings must be valid UTF-8: invalid bytes are shown escaped
// (\xff) instead of turning the error into a UnicodeDecodeError that names nothing.
void set_error(PyObject* type, const char* what) {
  PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "backslashreplace");
  if (msg == nullptr) {
    PyErr_Clear();
    msg = PyUnicode_FromString("(a message that could not be decoded)");
  }
  PyErr_SetObject(type, msg);
  Py_DECREF(msg);
}

// A C++ error type as a Python exception class of `name` (a subclass of `base`) whose messages go
// through set_error. The class object lives as long as the process (the module is never unloaded).
template <class E>
void register_error(py::module_& m, const char* name, PyObject* base) {
  static py::exception<E>* type = new py::exception<E>(m, name, base);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const E& e) {
      set_error(type->ptr(), e.what());
    }
  });
}

// A C++ error type raised as an existing Python exception (ValueError, OSError, ...).
template <class E>
void map_error(PyObject* python_type) {
  static PyObject* type = python_type;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const E& e) {
      set_error(type, e.what());
    }
  });
}

// Any array-like of real numbers as a C-contiguous array of T. Read in place when it already is
// one; converted (one copy) otherwise; complex, object and string data are refused by name.
template <class T>
py::array_t<T, py::array::c_style | py::array::forcecast> as_array(py::handle h, const char* name) {
  using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;
  if (Arr::check_(h)) return py::reinterpret_borrow<Arr>(h);
  if (h.is_none()) throw py::type_error(std::string(name) + " must be an array of real numbers, got None");
  py::array raw = py::array::ensure(h);
  if (!raw) {
    // ensure() swallows the reason (e.g. a CUDA tensor, or one that requires grad): ask NumPy
    // again, on this error path only, to report it.
    std::string why = "not convertible";
    try {
      py::module_::import("numpy").attr("asarray")(h);
    } catch (py::error_already_set& e) {
      why = e.what();
    }
    throw py::type_error(std::string(name) +
                         " must be a NumPy array, CPU torch tensor or sequence "
                         "of real numbers, got " +
                         type_name(h) + " (" + why + ")");
  }
  const char kind = raw.dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b')
    throw py::type_error(std::string(name) + " must hold real numbers, got dtype " + std::string(py::str(raw.dtype())));
  return Arr::ensure(raw);
}

// Transition ids: integers only (a float id would be truncated to another transition's).
py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> as_ids(py::handle h, const char* name) {
  using Ids = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
  if (Ids::check_(h)) return py::reinterpret_borrow<Ids>(h);  // what sample returns: no second look
  if (!h.is_none()) {
    py::array raw = py::array::ensure(h);
    if (raw && raw.size() > 0 && raw.dtype().kind() != 'i' && raw.dtype().kind() != 'u')
      throw py::type_error(std::string(name) + " must hold integer ids, got dtype " +
                           std::string(py::str(raw.dtype())));
  }
  return as_array<std::int64_t>(h, name);
}

bool has_shape(const py::array& a, const Shape& expected) {
  if (static_cast<std::size_t>(a.ndim()) != expected.size()) return false;
  for (std::size_t i = 0; i < expected.size(); ++i)
    if (a.shape(static_cast<py::ssize_t>(i)) != expected[i]) return false;
  return true;
}

void expect_shape(const py::array& a, const Shape& expected, const char* name) {
  if (!has_shape(a, expected))
    throw py::value_error(std::string(name) + " has shape " + shape_str(shape_of(a)) + ", expected " +
                          shape_str(expected));
}

Shape with_lead(std::int64_t n, const Shape& shape) {
  Shape s{n};
  s.insert(s.end(), shape.begin(), shape.end());
  return s;
}

std::int64_t as_count(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr()))
    throw py::type_error(std::string(name) + " must be an integer, got " + type_name(h));
  const long long v = PyLong_AsLongLong(h.ptr());
  if (v == -1 && PyErr_Occurred())
    throw py::value_error(std::string(name) + " is out of range: " + take_python_error());
  return v;
}

bool is_numpy_bool_scalar(py::handle h) {
  const char* name = Py_TYPE(h.ptr())->tp_name;
  return std::strcmp(name, "numpy.bool") == 0 || std::strcmp(name, "numpy.bool_") == 0;
}

// The arguments of add/extend as the core reads them. Converted arrays are kept alive here for as
// long as the core reads them; scalars (the common case for add) never become arrays at all.
struct Transitions {
  py::object keep[8];
  int kept = 0;
  float reward_scalar = 0.0f;
  bool flag_scalar[2] = {false, false};
  pydpg::TransitionBatch view;

  const float* floats(py::handle h, const char* name, const Shape& expected) {
    auto a = as_array<float>(h, name);
    expect_shape(a, expected, name);
    keep[kept++] = a;
    return a.data();
  }

  // terminated/truncated: bools, or numbers that are exactly 0 or 1.
  const bool* flags(int which, py::handle h, const char* name, const Shape& expected) {
    if (expected.empty() && (PyBool_Check(h.ptr()) || is_numpy_bool_scalar(h))) {
      flag_scalar[which] = PyObject_IsTrue(h.ptr()) == 1;
      return &flag_scalar[which];
    }
    using Flags = py::array_t<bool, py::array::c_style>;
    if (Flags::check_(h)) {
      auto f = py::reinterpret_borrow<Flags>(h);
      expect_shape(f, expected, name);
      keep[kept++] = f;
      return f.data();
    }
    auto values = as_array<double>(h, name);
    expect_shape(values, expected, name);
    auto f = Flags(expected);
    for (py::ssize_t i = 0; i < values.size(); ++i) {
      const double v = values.data()[i];
      if (v != 0.0 && v != 1.0)
        throw py::value_error(std::string(name) + " must be boolean (0 or 1), got " + std::to_string(v));
      f.mutable_data()[i] = v != 0.0;
    }
    keep[kept++] = f;
    return f.data();
  }
};

// One conversion path for add (a single transition, no leading dimension) and extend.
void convert(Transitions& t, const ReplayBuffer& buf, py::handle obs, py::handle action, py::handle reward,
             py::handle next_obs, py::handle terminated, py::handle truncated, py::handle env_ids, bool batched) {
  const auto& cfg = buf.config();
  std::int64_t n = 1;
  Shape lead;
  if (batched) {
    auto o = as_array<float>(obs, "obs");
    if (o.ndim() != static_cast<py::ssize_t>(cfg.obs_shape.size()) + 1)
      throw py::value_error("obs has shape " + shape_str(shape_of(o)) + ", expected (N, " +
                            shape_str(cfg.obs_shape).substr(1));
    n = o.shape(0);
    lead = {n};
    obs = o;
    t.keep[t.kept++] = o;
  }
  Shape lead_obs, lead_action;
  if (batched) {
    lead_obs = with_lead(n, cfg.obs_shape);
    lead_action = with_lead(n, cfg.action_shape);
  }
  const Shape& obs_shape = batched ? lead_obs : cfg.obs_shape;
  t.view.n = n;
  t.view.obs = t.floats(obs, "obs", obs_shape);
  t.view.action = t.floats(action, "action", batched ? lead_action : cfg.action_shape);
  if (!batched && (PyFloat_Check(reward.ptr()) || PyLong_CheckExact(reward.ptr()))) {
    const double r = PyFloat_Check(reward.ptr()) ? PyFloat_AS_DOUBLE(reward.ptr()) : PyLong_AsDouble(reward.ptr());
    if (r == -1.0 && PyErr_Occurred()) throw py::value_error("reward: " + take_python_error());
    t.reward_scalar = static_cast<float>(r);
    t.view.reward = &t.reward_scalar;
  } else {
    auto r = as_array<float>(reward, "reward");
    // add takes a scalar, a 0-d array or a one-element vector
    if (batched || r.size() != 1 || r.ndim() > 1) expect_shape(r, lead, "reward");
    t.keep[t.kept++] = r;
    t.view.reward = r.data();
  }
  t.view.next_obs = t.floats(next_obs, "next_obs", obs_shape);
  t.view.terminated = t.flags(0, terminated, "terminated", lead);
  t.view.truncated = t.flags(1, truncated, "truncated", lead);
  if (!env_ids.is_none()) {
    auto ids = as_array<std::int64_t>(env_ids, "env_ids");
    expect_shape(ids, lead, "env_ids");
    t.keep[t.kept++] = ids;
    t.view.env_ids = ids.data();
  }
}

}  // namespace

namespace {
void bind_policy_runtime(py::module_& m);
void bind_observation(py::module_& m);
void bind_mlp_update(py::module_& m);
}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pydpg's C++ core: replay buffer (see pydpg.ReplayBuffer for the documented API)";
  bind_policy_runtime(m);
  bind_observation(m);
  bind_mlp_update(m);

  register_error<pydpg::FormatError>(m, "FormatError", PyExc_ValueError);
  map_error<pydpg::InvalidArgument>(PyExc_ValueError);
  map_error<pydpg::FileError>(PyExc_OSError);
  map_error<pydpg::OutOfMemory>(PyExc_MemoryError);

  // The PER priority floor: the trainer adds it to |TD error| (Schaul et al. 2016's epsilon) and the
  // buffer floors stored priorities at it; one constant, read by Python from here.
  m.attr("MIN_PRIORITY") = ReplayBuffer::kMinPriority;

  py::class_<ReplayBuffer>(m, "ReplayBuffer", py::dynamic_attr())
      .def(py::init([](py::handle capacity, Shape obs_shape, Shape action_shape, bool prioritized, double alpha,
                       int n_step, double gamma, std::optional<std::uint64_t> seed) {
             pydpg::ReplayBufferConfig c;
             c.capacity = as_count(capacity, "capacity");
             c.obs_shape = std::move(obs_shape);
             c.action_shape = std::move(action_shape);
             c.prioritized = prioritized;
             c.alpha = alpha;
             c.n_step = n_step;
             c.gamma = gamma;
             c.seed = seed;
             return std::make_unique<ReplayBuffer>(std::move(c));
           }),
           py::arg("capacity"), py::arg("obs_shape"), py::arg("action_shape"), py::kw_only(),
           py::arg("prioritized") = false, py::arg("alpha") = 0.6, py::arg("n_step") = 1, py::arg("gamma") = 0.99,
           py::arg("seed") = py::none())
      .def(
          "add",
          [](ReplayBuffer& self, py::handle obs, py::handle action, py::handle reward, py::handle next_obs,
             py::handle terminated, py::handle truncated) {
            Transitions t;
            convert(t, self, obs, action, reward, next_obs, terminated, truncated, py::none(), false);
            self.extend(t.view);  // one row: cheaper to keep the GIL than to drop and retake it
          },
          py::arg("obs"), py::arg("action"), py::arg("reward"), py::arg("next_obs"), py::arg("terminated"),
          py::arg("truncated"))
      .def(
          "extend",
          [](ReplayBuffer& self, py::handle obs, py::handle action, py::handle reward, py::handle next_obs,
             py::handle terminated, py::handle truncated, py::handle env_ids) {
            Transitions t;
            convert(t, self, obs, action, reward, next_obs, terminated, truncated, env_ids, true);
            py::gil_scoped_release release;
            self.extend(t.view);
          },
          py::arg("obs"), py::arg("action"), py::arg("reward"), py::arg("next_obs"), py::arg("terminated"),
          py::arg("truncated"), py::kw_only(), py::arg("env_ids") = py::none())
      .def(
          "_sample_rows",
          [](ReplayBuffer& self, py::handle batch_size_arg) {
            const std::int64_t batch_size = as_count(batch_size_arg, "batch_size");
            if (batch_size <= 0)
              throw py::value_error("batch_size must be a positive integer, got " + std::to_string(batch_size));
            py::array_t<float> rows({batch_size, self.layout().width()});
            float* out = rows.mutable_data();
            {
              py::gil_scoped_release release;
              self.sample(batch_size, 0.0, out, nullptr, nullptr);
            }
            return rows;
          },
          py::arg("batch_size"))
      .def(
          "_sample_prioritized",
          [](ReplayBuffer& self, py::handle batch_size_arg, double beta) {
            const std::int64_t batch_size = as_count(batch_size_arg, "batch_size");
            if (batch_size <= 0)
              throw py::value_error("batch_size must be a positive integer, got " + std::to_string(batch_size));
            if (!self.config().prioritized) throw py::value_error("this ReplayBuffer is not prioritized");
            py::array_t<float> rows({batch_size, self.layout().width()});
            py::array_t<float> weights({batch_size, std::int64_t{1}});
            py::array_t<std::int64_t> ids(batch_size);
            float* r = rows.mutable_data();
            float* w = weights.mutable_data();
            std::int64_t* i = ids.mutable_data();
            {
              py::gil_scoped_release release;
              self.sample(batch_size, beta, r, w, i);
            }
            return py::make_tuple(rows, weights, ids);
          },
          py::arg("batch_size"), py::arg("beta"))
      .def(
          "_update_priorities",
          [](ReplayBuffer& self, py::handle indices, py::handle priorities) {
            auto ids = as_ids(indices, "indices");
            auto p = as_array<double>(priorities, "priorities");
            if (ids.ndim() != 1)
              throw py::value_error("indices has shape " + shape_str(shape_of(ids)) + ", expected (N,)");
            expect_shape(p, Shape{ids.shape(0)}, "priorities");
            const std::int64_t* id = ids.data();
            const double* pr = p.data();
            py::gil_scoped_release release;
            self.update_priorities(ids.shape(0), id, pr);
          },
          py::arg("indices"), py::arg("priorities"))
      .def(
          "_get_rows",
          [](const ReplayBuffer& self, py::handle indices) {
            auto ids = as_ids(indices, "indices");
            if (ids.ndim() != 1)
              throw py::value_error("indices has shape " + shape_str(shape_of(ids)) + ", expected (N,)");
            py::array_t<float> rows({ids.shape(0), self.layout().width()});
            float* out = rows.mutable_data();
            const std::int64_t* id = ids.data();
            {
              py::gil_scoped_release release;
              self.get(ids.shape(0), id, out);
            }
            return rows;
          },
          py::arg("indices"))
      .def(
          "save",
          [](const ReplayBuffer& self, const std::string& path) {
            py::gil_scoped_release release;
            self.save(path);
          },
          py::arg("path"), "Write the whole state atomically (temp file + rename).")
      .def(
          "_load_from",
          [](ReplayBuffer& self, const std::string& path) {
            py::gil_scoped_release release;
            self.load(path);
          },
          py::arg("path"))
      .def(
          "end_episode",
          [](ReplayBuffer& self, std::int64_t env_id) {
            py::gil_scoped_release release;
            self.end_episode(env_id);
          },
          py::arg("env_id") = 0,
          "Close env_id's open n-step returns as a truncation would (done = 0, shorter returns): for an "
          "episode that ended without a transition saying so, e.g. an environment restarted by its owner.")
      .def("reset_max_priority", &ReplayBuffer::reset_max_priority,
           "Lower the priority new transitions get to the largest one stored now (LAP, as TD7 does it "
           "at every target update).",
           py::call_guard<py::gil_scoped_release>())
      .def("clear", &ReplayBuffer::clear, "Forget every transition, open n-step returns included.")
      .def("__len__", [](const ReplayBuffer& self) { return self.size(); })
      .def("__repr__", &ReplayBuffer::describe)
      .def_property_readonly("capacity", &ReplayBuffer::capacity)
      .def_property_readonly("obs_shape",
                             [](const ReplayBuffer& s) { return py::tuple(py::cast(s.config().obs_shape)); })
      .def_property_readonly("action_shape",
                             [](const ReplayBuffer& s) { return py::tuple(py::cast(s.config().action_shape)); })
      .def_property_readonly("prioritized", [](const ReplayBuffer& s) { return s.config().prioritized; })
      .def_property_readonly("alpha", [](const ReplayBuffer& s) { return s.config().alpha; })
      .def_property_readonly("n_step", [](const ReplayBuffer& s) { return s.config().n_step; })
      .def_property_readonly("gamma", [](const ReplayBuffer& s) { return s.config().gamma; })
      .def_property_readonly("nbytes", &ReplayBuffer::storage_bytes)
      .def_property_readonly("pending", &ReplayBuffer::pending,
                             "Transitions stored per environment whose n-step return is still open.")
      .def_property_readonly("total_added", &ReplayBuffer::total_added,
                             "Transitions ever stored; sample ids count from 0 in this order.")
      .def_property_readonly("_row_layout", [](const ReplayBuffer& s) {
        const auto& L = s.layout();
        return py::make_tuple(L.obs_dim, L.act_dim, L.width());
      });
}

// =====================================================================================================
// PolicyRuntime (csrc/policy_runtime.hpp). pydpg.Policy (pydpg/deploy/runtime.py) is the documented facade;
// this section converts arrays, checks shapes and dtypes with messages that name them, and releases
// the GIL around act().
// =====================================================================================================
namespace {

using pydpg::PolicyRuntime;

py::dict latency_dict(const pydpg::LatencyStats& s) {
  py::dict d;
  d["count"] = s.count;
  d["window"] = s.window;
  d["mean_us"] = s.mean_us;
  d["p50_us"] = s.p50_us;
  d["p90_us"] = s.p90_us;
  d["p99_us"] = s.p99_us;
  d["p999_us"] = s.p999_us;
  d["max_us"] = s.max_us;
  return d;
}

py::dict guard_dict(const pydpg::GuardStats& g) {
  py::dict d;
  d["nonfinite_obs_rows"] = g.nonfinite_obs_rows;
  d["nonfinite_action_rows"] = g.nonfinite_action_rows;
  d["held_rows"] = g.held_rows;
  d["safe_rows"] = g.safe_rows;
  d["raised"] = g.raised;
  return d;
}

// obs as float32 C-contiguous [B, obs_dim] (or [obs_dim] for one observation). Float32 C-contiguous
// input is read in place; other float dtypes (Gymnasium returns float64) are converted with one
// copy. Integer, bool and object data and non-contiguous arrays are refused: the first is almost
// always a bug, the second a silent per-call copy in what should be a real-time path.
py::array_t<float> policy_obs(py::handle h, std::int64_t obs_dim) {
  if (h.is_none()) throw py::type_error("obs must be a float array, got None");
  py::array raw = py::array::ensure(h);
  if (!raw)
    throw py::type_error("obs must be a NumPy array or CPU torch tensor of floats, got " + type_name(h) + " (" +
                         take_python_error() + ")");
  if (raw.dtype().kind() != 'f')
    throw py::type_error("obs must hold floating-point numbers (float32 preferred), got dtype " +
                         std::string(py::str(raw.dtype())));
  if (!(raw.flags() & py::array::c_style))
    throw py::value_error("obs must be C-contiguous; got an array with strides " +
                          std::string(py::str(py::cast(Shape(raw.strides(), raw.strides() + raw.ndim())))) +
                          " (pass np.ascontiguousarray(obs))");
  if (raw.ndim() == 0 || raw.ndim() > 2 || raw.shape(raw.ndim() - 1) != obs_dim)
    throw py::value_error("obs has shape " + shape_str(shape_of(raw)) + ", expected (" + std::to_string(obs_dim) +
                          ",) or (B, " + std::to_string(obs_dim) + ")");
  return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(raw);
}

void bind_policy_runtime(py::module_& m) {
  register_error<pydpg::PolicyFormatError>(m, "PolicyFormatError", PyExc_ValueError);
  register_error<pydpg::NonFiniteError>(m, "NonFiniteError", PyExc_ValueError);
  register_error<pydpg::PolicyFileError>(m, "PolicyFileError", PyExc_OSError);
  map_error<pydpg::PolicyArgumentError>(PyExc_ValueError);
  m.attr("POLICY_FORMAT_VERSION") = PolicyRuntime::kFormatVersion;

  py::class_<PolicyRuntime>(m, "PolicyRuntime")
      .def(py::init([](const std::string& path, std::int64_t max_batch, int num_threads, int warmup_calls,
                       const std::string& on_nonfinite, std::optional<std::vector<float>> safe_action,
                       std::int64_t latency_window, const std::string& backend, bool batch_invariant,
                       const std::string& mlp_kernels) {
             pydpg::PolicyOptions o;
             o.max_batch = max_batch;
             o.num_threads = num_threads;
             o.warmup_calls = warmup_calls;
             o.on_nonfinite = pydpg::parse_nonfinite_policy(on_nonfinite);
             if (safe_action) o.safe_action = std::move(*safe_action);
             o.latency_window = latency_window;
             o.backend = backend;
             o.batch_invariant = batch_invariant;
             o.mlp_kernels = mlp_kernels;
             py::gil_scoped_release release;
             return std::make_unique<PolicyRuntime>(path, std::move(o));
           }),
           py::arg("path"), py::kw_only(), py::arg("max_batch") = 1, py::arg("num_threads") = 1,
           py::arg("warmup_calls") = 64, py::arg("on_nonfinite") = "raise", py::arg("safe_action") = py::none(),
           py::arg("latency_window") = 1 << 16, py::arg("backend") = "auto", py::arg("batch_invariant") = false,
           py::arg("mlp_kernels") = "auto")
      .def(
          "act",
          [](PolicyRuntime& self, py::handle obs_arg, py::handle out_arg) {
            auto obs = policy_obs(obs_arg, self.obs_dim());
            const bool single = obs.ndim() == 1;
            const std::int64_t batch = single ? 1 : obs.shape(0);
            if (batch < 1 || batch > self.options().max_batch)
              throw py::value_error("obs has batch size " + std::to_string(batch) +
                                    ", expected 1 to max_batch=" + std::to_string(self.options().max_batch) +
                                    " (load the policy with a larger max_batch)");
            Shape out_shape = single ? Shape{self.act_dim()} : Shape{batch, self.act_dim()};
            py::array_t<float> out;
            if (out_arg.is_none()) {
              out = py::array_t<float>(out_shape);
            } else {
              using Out = py::array_t<float, py::array::c_style>;
              if (!Out::check_(out_arg) || !py::reinterpret_borrow<py::array>(out_arg).writeable())
                throw py::type_error("out must be a writeable C-contiguous float32 NumPy array");
              out = py::reinterpret_borrow<py::array_t<float>>(out_arg);
              expect_shape(out, out_shape, "out");
            }
            const float* in = obs.data();
            float* dst = out.mutable_data();
            {
              py::gil_scoped_release release;
              self.act(in, batch, dst);
            }
            return out;
          },
          py::arg("obs"), py::arg("out") = py::none())
      .def("latency", [](const PolicyRuntime& s) { return latency_dict(s.latency()); })
      .def("reset_latency", &PolicyRuntime::reset_latency)
      .def("guard_stats", [](const PolicyRuntime& s) { return guard_dict(s.guard_stats()); })
      .def("reset_guard_stats", &PolicyRuntime::reset_guard_stats)
      .def("extra_file", [](const PolicyRuntime& s, const std::string& name) { return py::bytes(s.extra_file(name)); })
      .def_property_readonly("metadata_json", [](const PolicyRuntime& s) { return s.metadata().json; })
      .def_property_readonly("obs_dim", &PolicyRuntime::obs_dim)
      .def_property_readonly("act_dim", &PolicyRuntime::act_dim)
      .def_property_readonly("max_batch", [](const PolicyRuntime& s) { return s.options().max_batch; })
      .def_property_readonly("num_threads", [](const PolicyRuntime& s) { return s.options().num_threads; })
      .def_property_readonly("on_nonfinite",
                             [](const PolicyRuntime& s) { return pydpg::to_string(s.options().on_nonfinite); })
      .def_property_readonly("backend", &PolicyRuntime::backend)
      .def_property_readonly("kernels", &PolicyRuntime::kernels)
      .def_property_readonly("batch_invariant",
                             [](const PolicyRuntime& self) { return self.options().batch_invariant; })
      .def_property_readonly("path", &PolicyRuntime::path)
      .def_property_readonly("action_low", [](const PolicyRuntime& s) { return s.metadata().action_low; })
      .def_property_readonly("action_high", [](const PolicyRuntime& s) { return s.metadata().action_high; });

  // pydpg.rounding wraps this (export's parity check and the tests): tensors by the names the plan
  // gives, float32 arrays as a PolicyModule's state_dict holds them.
  m.def(
      "rounding_bound",
      [](const std::string& metadata_json, const py::dict& parameters, const py::dict& buffers, bool normalize,
         double obs_clip, py::handle obs, double unit_roundoff, double constants, bool float32_output) {
        pydpg::NamedTensors named;
        std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> keep;
        for (auto [from, into] :
             {std::make_pair(&parameters, &named.parameters), std::make_pair(&buffers, &named.buffers)})
          for (auto item : *from) {
            const std::string name = py::str(item.first);
            keep.push_back(as_array<float>(item.second, name.c_str()));
            const auto& a = keep.back();
            (*into)[name] = at::from_blob(const_cast<float*>(a.data()), Shape(a.shape(), a.shape() + a.ndim()));
          }
        const pydpg::MlpNetwork net = pydpg::plan_from_tensors(metadata_json, named, normalize, obs_clip);
        const std::int64_t D = net.encoder.empty() ? net.layers.front().in : net.state.in;
        auto x = policy_obs(obs, D);
        const std::int64_t n = x.ndim() == 1 ? 1 : x.shape(0), A = net.layers.back().out;
        py::array_t<double> centre({n, A}), bound({n, A});
        pydpg::Arithmetic arith{unit_roundoff, constants, float32_output};
        {
          py::gil_scoped_release release;
          pydpg::rounding_bound(net, x.data(), n, arith, centre.mutable_data(), bound.mutable_data());
        }
        return py::make_tuple(centre, bound);
      },
      py::arg("metadata_json"), py::arg("parameters"), py::arg("buffers"), py::arg("normalize"), py::arg("obs_clip"),
      py::arg("obs"), py::arg("unit_roundoff") = 0x1p-24, py::arg("constants") = 0.0, py::arg("float32_output") = true);
}

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
      .def_property_readonly("input_names", &ObservationBuilder::input_names)
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
          [](const ObservationBuilder& b, std::uintptr_t data_address) {
            py::array_t<float> out(b.size());
            b.build(reinterpret_cast<const mjData*>(data_address), out.mutable_data());
            return out;
          },
          py::arg("data_address"));
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

pydpg::AdamState adam_state(const py::dict& d, const std::string& name) {
  for (const char* key : {"grad", "exp_avg", "exp_avg_sq", "step", "beta1", "beta2", "eps", "weight_decay"})
    if (!d.contains(key)) throw py::value_error(name + " has no '" + key + "'");
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

void bind_mlp_update(py::module_& m) {
  using pydpg::MlpUpdate;
  py::class_<MlpUpdate>(m, "MlpUpdate")
      .def(py::init([](py::handle actor, py::handle actor_target, py::sequence critics, py::sequence critic_targets,
                       py::dict actor_opt, py::dict critic_opt, double action_bound, bool portable) {
             std::vector<pydpg::MlpParams> cs, cts;
             for (std::size_t k = 0; k < critics.size(); ++k)
               cs.push_back(mlp_params(critics[k], "critics[" + std::to_string(k) + "]"));
             for (std::size_t k = 0; k < critic_targets.size(); ++k)
               cts.push_back(mlp_params(critic_targets[k], "critic_targets[" + std::to_string(k) + "]"));
             return std::make_unique<MlpUpdate>(mlp_params(actor, "actor"), mlp_params(actor_target, "actor_target"),
                                                std::move(cs), std::move(cts), adam_state(actor_opt, "actor_opt"),
                                                adam_state(critic_opt, "critic_opt"), action_bound, portable);
           }),
           py::arg("actor"), py::arg("actor_target"), py::arg("critics"), py::arg("critic_targets"),
           py::arg("actor_opt"), py::arg("critic_opt"), py::arg("action_bound") = 1.0, py::arg("portable") = false)
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
            const bool with_actor = !actor_lr.is_none();
            const double alr = with_actor ? actor_lr.cast<double>() : 0.0;
            pydpg::CriticStepStats s;
            double actor_loss = std::numeric_limits<double>::quiet_NaN();
            {
              py::gil_scoped_release release;
              s = u.critic_step(b, critic_lr, td);
              if (with_actor) {
                actor_loss = u.actor_step(b.obs, alr);
                u.soft_update(tau);
              }
            }
            return py::make_tuple(s.loss, s.q_mean, actor_loss);  // with the GIL again
          },
          py::arg("obs"), py::arg("action"), py::arg("reward"), py::arg("next_obs"), py::arg("done"),
          py::arg("discount"), py::arg("weights"), py::arg("noise"), py::arg("critic_lr"), py::arg("actor_lr"),
          py::arg("tau"), py::arg("td_errors"),
          "One critic step; with actor_lr (not None) also the actor step and the Polyak update. Returns "
          "(critic_loss, q_mean, actor_loss), actor_loss NaN without the actor step.")
      .def_property_readonly("kernels", &MlpUpdate::kernels);
}

}  // namespace
