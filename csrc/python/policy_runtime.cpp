#include <limits>

#include "bindings.hpp"
#include "convert.hpp"
#include "pydpg/policy_runtime.hpp"
#include "rounding_bound.hpp"

namespace pydpg::python {

// =====================================================================================================
// PolicyRuntime (include/pydpg/policy_runtime.hpp). pydpg.Policy (pydpg/deploy/runtime.py) is the documented facade;
// this section converts arrays, checks shapes and dtypes with messages that name them, and releases
// the GIL around act().
// =====================================================================================================
using pydpg::PolicyRuntime;

namespace {

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

}  // namespace

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

}  // namespace pydpg::python
