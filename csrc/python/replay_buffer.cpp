// pydpg.ReplayBuffer (pydpg/core/replay.py) is the documented facade of this binding: arguments
// converted in place where they can be, the GIL released around real work.
#include <optional>

#include "convert.hpp"
#include "replay_buffer.hpp"

namespace pydpg::python {

using pydpg::ReplayBuffer;

namespace {

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

void bind_replay_buffer(py::module_& m) {
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

}  // namespace pydpg::python
