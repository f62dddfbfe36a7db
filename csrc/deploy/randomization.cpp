#include "pydpg/randomization.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "json_access.hpp"
#include "random.hpp"
#include "spec_reading.hpp"

namespace pydpg {

namespace {

using Error = RandomizationError;
constexpr double kPi = 3.14159265358979323846;

enum class Kind { Body, Geom, Joint, Actuator };

// The model arrays a spec may vary: the kind of object a row belongs to, whether its values must stay
// >= 0, whether a joint's rows are its dofs, the columns per row, and where the array is.
struct Field {
  const char* name;
  Kind kind;
  bool nonneg, dofs;
  int cols;
  mjtNum* (*array)(mjModel*);
};

const Field kFields[] = {
    {"body_mass", Kind::Body, true, false, 1, [](mjModel* m) { return m->body_mass; }},
    {"body_inertia", Kind::Body, true, false, 3, [](mjModel* m) { return m->body_inertia; }},
    {"body_ipos", Kind::Body, false, false, 3, [](mjModel* m) { return m->body_ipos; }},
    {"geom_friction", Kind::Geom, true, false, 3, [](mjModel* m) { return m->geom_friction; }},
    {"dof_damping", Kind::Joint, true, true, 1, [](mjModel* m) { return m->dof_damping; }},
    {"dof_armature", Kind::Joint, true, true, 1, [](mjModel* m) { return m->dof_armature; }},
    {"dof_frictionloss", Kind::Joint, true, true, 1, [](mjModel* m) { return m->dof_frictionloss; }},
    {"jnt_stiffness", Kind::Joint, true, false, 1, [](mjModel* m) { return m->jnt_stiffness; }},
    {"actuator_gainprm", Kind::Actuator, false, false, mjNGAIN, [](mjModel* m) { return m->actuator_gainprm; }},
    {"actuator_biasprm", Kind::Actuator, false, false, mjNBIAS, [](mjModel* m) { return m->actuator_biasprm; }},
    {"actuator_gear", Kind::Actuator, false, false, 6, [](mjModel* m) { return m->actuator_gear; }},
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Body:
      return "body";
    case Kind::Geom:
      return "geom";
    case Kind::Joint:
      return "joint";
    case Kind::Actuator:
      return "actuator";
  }
  return "?";
}

mjtObj object_type(Kind k) {
  switch (k) {
    case Kind::Body:
      return mjOBJ_BODY;
    case Kind::Geom:
      return mjOBJ_GEOM;
    case Kind::Joint:
      return mjOBJ_JOINT;
    case Kind::Actuator:
      return mjOBJ_ACTUATOR;
  }
  return mjOBJ_UNKNOWN;
}

int object_count(const mjModel* m, Kind k) {
  switch (k) {
    case Kind::Body:
      return static_cast<int>(m->nbody);
    case Kind::Geom:
      return static_cast<int>(m->ngeom);
    case Kind::Joint:
      return static_cast<int>(m->njnt);
    case Kind::Actuator:
      return static_cast<int>(m->nu);
  }
  return 0;
}

// Every key, by where it stands ("" the top, "model[]" an entry, ...): the one list the reader
// accepts (pydpg.contract.randomization.KEYS documents each, and a test keeps them equal).
const std::vector<std::pair<std::string, std::vector<std::string>>> kKeys = {
    {"", {"version", "model", "observation", "action", "push"}},
    {"model[]", {"field", "names", "indices", "scale", "offset", "shared"}},
    {"observation", {"noise"}},
    {"action", {"noise", "delay"}},
    {"push[]", {"body", "interval", "force", "duration"}},
};

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

const Json& table(const Json& j, const std::string& level, const std::string& where) {
  if (!j.is_object()) throw Error(where + " must be a table (an object)");
  const auto& keys = std::find_if(kKeys.begin(), kKeys.end(), [&](const auto& k) { return k.first == level; })->second;
  for (const auto& kv : j.items())
    if (std::find(keys.begin(), keys.end(), kv.key()) == keys.end()) {
      std::vector<std::string> sorted = keys;
      std::sort(sorted.begin(), sorted.end());
      std::string known;
      for (const auto& k : sorted) known += (known.empty() ? "" : ", ") + k;
      throw Error(where + ": unknown key '" + kv.key() + "'" + spec::did_you_mean(kv.key(), keys) +
                  " (known: " + known + ")");
    }
  return j;
}

double finite(const Json& j, const std::string& where) {
  if (j.is_boolean()) throw Error(where + " must be a number, got " + j.dump());
  return json::finite_number(j, where);
}

// [low, high] with low <= high; `low_min` bounds low; `whole`: both whole numbers.
std::pair<double, double> range(const Json& j, const std::string& where, const double* low_min = nullptr,
                                bool whole = false) {
  if (!j.is_array() || j.size() != 2) throw Error(where + " must be [low, high], got " + j.dump());
  const double lo = finite(j[0], where + "[0]"), hi = finite(j[1], where + "[1]");
  if (lo > hi) throw Error(where + ": low " + fmt(lo) + " > high " + fmt(hi));
  if (low_min != nullptr && lo < *low_min) throw Error(where + ": low " + fmt(lo) + " is below " + fmt(*low_min));
  if (whole && (lo != std::floor(lo) || hi != std::floor(hi)))
    throw Error(where + " must be whole numbers, got " + j.dump());
  return {lo, hi};
}

const Field* find_field(const Json& j, const std::string& where) {
  const std::string name = j.is_string() ? j.get<std::string>() : j.dump();
  for (const Field& f : kFields)
    if (name == f.name) return &f;
  std::vector<std::string> names;
  std::string known;
  for (const Field& f : kFields) {
    names.emplace_back(f.name);
    known += (known.empty() ? "" : ", ") + std::string(f.name);
  }
  throw Error(where + ": unknown field '" + name + "'" + spec::did_you_mean(name, names) + " (known: " + known + ")");
}

// The spec checked where it stands, with every default written out (the canonical form).
Json canonical(const Json& spec) {
  table(spec, "", "randomization spec");
  const Json& version = json::member(spec, "version");
  if (version.is_null())
    throw Error("the randomization spec has no 'version' (this pydpg reads version " +
                std::to_string(DomainRandomization::kSpecVersion) + ")");
  if (!version.is_number() || version.is_boolean() || version.get<double>() != DomainRandomization::kSpecVersion)
    throw Error("randomization spec version " + version.dump() + "; this pydpg reads version " +
                std::to_string(DomainRandomization::kSpecVersion));
  Json out = {{"version", DomainRandomization::kSpecVersion}, {"model", Json::array()}, {"push", Json::array()}};
  const Json& model = json::member(spec, "model");
  if (!model.is_null() && !model.is_array())
    throw Error("randomization spec model must be a list of entries ([[randomization.model]])");
  const double zero = 0.0, one = 1.0;
  for (std::size_t i = 0; !model.is_null() && i < model.size(); ++i) {
    const std::string where = "randomization spec model[" + std::to_string(i) + "]";
    const Json& e = table(model[i], "model[]", where);
    const Field* f = find_field(json::member(e, "field"), where);
    const bool scale = !json::member(e, "scale").is_null(), offset = !json::member(e, "offset").is_null();
    if (scale == offset) throw Error(where + ": give 'scale' or 'offset' (one of the two)");
    const char* kind = scale ? "scale" : "offset";
    const auto r = range(json::member(e, kind), where + "." + kind, scale ? &zero : nullptr);
    Json entry = {{"field", f->name}, {kind, {r.first, r.second}}, {"shared", false}};
    const Json& shared = json::member(e, "shared");
    if (!shared.is_null()) {
      if (!shared.is_boolean()) throw Error(where + ".shared must be true or false");
      entry["shared"] = shared.get<bool>();
    }
    const Json& names = json::member(e, "names");
    const Json& indices = json::member(e, "indices");
    if (!names.is_null()) {
      if (!indices.is_null()) throw Error(where + ": give 'names' or 'indices', not both");
      Json list = Json::array();
      if (names.is_string()) {
        list.push_back(spec::checked_name<Error>(names, where + ".names"));
      } else if (names.is_array() && !names.empty()) {
        for (const Json& n : names) {
          if (!n.is_string()) throw Error(where + ".names must be a name or a non-empty list of names");
          list.push_back(spec::checked_name<Error>(n, where + ".names[]"));
        }
      } else {
        throw Error(where + ".names must be a name or a non-empty list of names");
      }
      entry["names"] = list;
    }
    if (!indices.is_null()) {
      bool ok = indices.is_array() && !indices.empty();
      for (std::size_t k = 0; ok && k < indices.size(); ++k)
        ok = indices[k].is_number_integer() && indices[k].get<std::int64_t>() >= 0 &&
             indices[k].get<std::int64_t>() < (1LL << 31);
      if (!ok) throw Error(where + ".indices must be a non-empty list of whole numbers >= 0");
      entry["indices"] = indices;
    }
    out["model"].push_back(entry);
  }
  const Json& obs = json::member(spec, "observation");
  if (!obs.is_null()) {
    table(obs, "observation", "randomization spec observation");
    const std::string where = "randomization spec observation.noise";
    const Json& noise = json::member(obs, "noise");
    if (noise.is_array()) {
      Json list = Json::array();
      for (std::size_t k = 0; k < noise.size(); ++k) {
        const double v = finite(noise[k], where + "[" + std::to_string(k) + "]");
        if (v < 0) throw Error(where + ": a negative std");
        list.push_back(v);
      }
      out["observation"] = {{"noise", list}};
    } else {
      const double v = noise.is_null() ? 0.0 : finite(noise, where);
      if (v < 0) throw Error(where + " must be >= 0, got " + fmt(v));
      out["observation"] = {{"noise", v}};
    }
  }
  const Json& act = json::member(spec, "action");
  if (!act.is_null()) {
    table(act, "action", "randomization spec action");
    const Json& noise = json::member(act, "noise");
    const double v = noise.is_null() ? 0.0 : finite(noise, "randomization spec action.noise");
    if (v < 0) throw Error("randomization spec action.noise must be >= 0, got " + fmt(v));
    const Json& delay = json::member(act, "delay");
    const auto d = delay.is_null() ? std::pair<double, double>{0, 0}
                                   : range(delay, "randomization spec action.delay", &zero, true);
    if (d.second > DomainRandomization::kMaxDelay)
      throw Error("randomization spec action.delay: " + fmt(d.second) + " control steps is past the most, " +
                  std::to_string(DomainRandomization::kMaxDelay));
    out["action"] = {{"noise", v}, {"delay", {static_cast<int>(d.first), static_cast<int>(d.second)}}};
  }
  const Json& push = json::member(spec, "push");
  if (!push.is_null() && !push.is_array())
    throw Error("randomization spec push must be a list of entries ([[randomization.push]])");
  for (std::size_t i = 0; !push.is_null() && i < push.size(); ++i) {
    const std::string where = "randomization spec push[" + std::to_string(i) + "]";
    const Json& p = table(push[i], "push[]", where);
    const Json& body = json::member(p, "body");
    if (!body.is_string()) throw Error(where + ".body must be a body's name");
    const std::string& name = spec::checked_name<Error>(body, where + ".body");
    const Json& interval = json::member(p, "interval");
    if (interval.is_null()) throw Error(where + ".interval is required: [low, high] control steps between pushes");
    const auto iv = range(interval, where + ".interval", &one, true);
    if (iv.second > 1e9) throw Error(where + ".interval: " + fmt(iv.second) + " control steps is past the most, 1e9");
    const Json& force = json::member(p, "force");
    if (force.is_null()) throw Error(where + ".force is required: [low, high] N");
    const auto fr = range(force, where + ".force", &zero);
    const Json& duration = json::member(p, "duration");
    std::int64_t dur = 1;
    if (!duration.is_null()) {
      if (!duration.is_number_integer() || duration.get<std::int64_t>() < 1 || duration.get<std::int64_t>() > 1000000)
        throw Error(where + ".duration must be a whole number of control steps >= 1");
      dur = duration.get<std::int64_t>();
    }
    out["push"].push_back({{"body", name},
                           {"interval", {static_cast<long>(iv.first), static_cast<long>(iv.second)}},
                           {"force", {fr.first, fr.second}},
                           {"duration", dur}});
  }
  return out;
}

Json parse(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const JsonError& e) {
    throw Error(std::string("randomization spec is not valid JSON: ") + e.what());
  }
}

Json checked(const std::string& text) {
  const Json spec = parse(text);
  try {
    return canonical(spec);
  } catch (const JsonError& e) {
    throw Error(e.what());
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------ state
struct DomainRandomization::Impl {
  struct Entry {
    std::string where;
    mjtNum* array = nullptr;
    int cols = 1;
    std::vector<std::vector<int>> rows;  // per object, the rows it owns
    std::vector<double> nominal;         // the whole array, as bound
    bool scale = true, shared = false;
    double lo = 0, hi = 0;
  };
  struct Push {
    int body = -1;
    long interval_lo = 1, interval_hi = 1, duration = 1;
    double force_lo = 0, force_hi = 0;
  };

  std::string spec;
  mjModel* model = nullptr;
  int obs_size = 0, act_size = 0;
  std::vector<Entry> entries;
  std::vector<double> obs_noise;  // one std per entry (all 0: none)
  bool any_obs_noise = false;
  double act_noise = 0;
  int delay_lo = 0, delay_hi = 0;
  std::vector<double> low, high;
  std::vector<Push> pushes;

  Xoshiro256 rng{0};
  int delay = 0;
  std::vector<double> queue;  // kMaxDelay slots of act_size; `delay` of them in use
  int head = 0;               // the oldest slot in use
  long t = 0;
  std::vector<long> next_push, push_until;
  std::vector<double> force;

  double uniform() { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  long integer(long lo, long hi) {  // uniform on [lo, hi]
    const long k = lo + static_cast<long>(std::floor(uniform() * static_cast<double>(hi - lo + 1)));
    return std::min(k, hi);
  }
  double normal() {  // Box-Muller; one draw of the pair, so a stream's position is a count of calls
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }

  void restore_nominal() {
    for (Entry& e : entries) std::copy(e.nominal.begin(), e.nominal.end(), e.array);
  }

  template <typename T>
  void observe(T* obs) {
    if (!any_obs_noise) return;
    for (int i = 0; i < obs_size; ++i) obs[i] = static_cast<T>(obs[i] + normal() * obs_noise[i]);
  }
};

std::string DomainRandomization::canonical_spec(const std::string& spec_json) { return checked(spec_json).dump(); }

std::vector<std::pair<std::string, std::string>> DomainRandomization::spec_keys() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [where, keys] : kKeys)
    for (const auto& k : keys) out.emplace_back(k, where);
  return out;
}

std::vector<DomainRandomization::FieldInfo> DomainRandomization::fields() {
  std::vector<FieldInfo> out;
  for (const Field& f : kFields) out.push_back({f.name, kind_name(f.kind), f.nonneg});
  return out;
}

std::string DomainRandomization::spec_from_policy_metadata(const std::string& metadata_json) {
  const Json meta = parse(metadata_json);
  const Json& spec = json::member(meta, "randomization");
  return spec.is_null() ? std::string() : spec.dump();
}

DomainRandomization::DomainRandomization(const std::string& spec_json, mjModel* model, int obs_size, int act_size,
                                         const double* act_low, const double* act_high)
    : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  if (model == nullptr) throw Error("randomization: no model to bind to");
  if (obs_size < 1 || act_size < 1 || obs_size > (1 << 24) || act_size > (1 << 20))
    throw Error("randomization: sizes must be >= 1 (observations " + std::to_string(obs_size) + ", actions " +
                std::to_string(act_size) + ")");
  const Json spec = checked(spec_json);
  s.spec = spec.dump();
  s.model = model;
  s.obs_size = obs_size;
  s.act_size = act_size;
  s.low.assign(act_low, act_low + act_size);
  s.high.assign(act_high, act_high + act_size);
  for (int i = 0; i < act_size; ++i)
    if (!(std::isfinite(s.low[i]) && std::isfinite(s.high[i]) && s.low[i] < s.high[i]))
      throw Error("randomization: action bound " + std::to_string(i) + " must be finite with low < high");

  const Json& model_entries = spec["model"];
  for (std::size_t i = 0; i < model_entries.size(); ++i) {
    const Json& j = model_entries[i];
    const Field* f = find_field(j["field"], "");
    Impl::Entry e;
    e.where = "randomization spec model[" + std::to_string(i) + "] (" + f->name + ")";
    e.array = f->array(model);
    e.cols = f->cols;
    e.scale = j.contains("scale");
    const Json& r = j[e.scale ? "scale" : "offset"];
    e.lo = r[0].get<double>();
    e.hi = r[1].get<double>();
    e.shared = j["shared"].get<bool>();
    const int count = object_count(model, f->kind);
    std::vector<int> ids;
    if (j.contains("indices")) {
      for (const Json& k : j["indices"]) {
        const std::int64_t id = k.get<std::int64_t>();
        if (id >= count)
          throw Error(e.where + ": index " + std::to_string(id) + " is past the model's " + std::to_string(count) +
                      " " + kind_name(f->kind) + " objects");
        ids.push_back(static_cast<int>(id));
      }
    } else if (j.contains("names")) {
      for (const Json& n : j["names"]) {
        const std::string& name = n.get_ref<const std::string&>();
        const int id = mj_name2id(model, object_type(f->kind), name.c_str());
        if (id < 0)
          throw Error(e.where + ": the model has no " + kind_name(f->kind) + " named '" + name + "' (" +
                      spec::known_names(model, object_type(f->kind), count, kind_name(f->kind),
                                        f->kind == Kind::Body ? "body names" : std::string(kind_name(f->kind)) + "s",
                                        name) +
                      ")");
        ids.push_back(id);
      }
    } else {
      for (int id = f->kind == Kind::Body ? 1 : 0; id < count; ++id) ids.push_back(id);  // the world has no mass
    }
    int rows_total = f->dofs ? static_cast<int>(model->nv) : count;
    for (int id : ids) {
      std::vector<int> rows;
      if (f->dofs) {
        const int type = model->jnt_type[id];
        const int n = type == mjJNT_FREE ? 6 : type == mjJNT_BALL ? 3 : 1;
        for (int k = 0; k < n; ++k) rows.push_back(model->jnt_dofadr[id] + k);
      } else {
        rows.push_back(id);
      }
      e.rows.push_back(rows);
    }
    e.nominal.assign(e.array, e.array + static_cast<std::size_t>(rows_total) * e.cols);
    if (f->nonneg)  // the range's ends must keep every value >= 0
      for (const auto& rows : e.rows)
        for (int row : rows)
          for (int c = 0; c < e.cols; ++c)
            for (double end : {e.lo, e.hi}) {
              const double nominal = e.nominal[static_cast<std::size_t>(row) * e.cols + c];
              const double v = e.scale ? nominal * end : nominal + end;
              if (v < 0)
                throw Error(e.where + ": " + (e.scale ? "scale " : "offset ") + fmt(end) + " makes a value negative (" +
                            fmt(v) + ")");
            }
    s.entries.push_back(std::move(e));
  }

  s.obs_noise.assign(static_cast<std::size_t>(obs_size), 0.0);
  if (spec.contains("observation")) {
    const Json& noise = spec["observation"]["noise"];
    if (noise.is_array()) {
      if (static_cast<int>(noise.size()) != obs_size)
        throw Error("randomization spec observation.noise lists " + std::to_string(noise.size()) +
                    " stds, observations have " + std::to_string(obs_size));
      for (int i = 0; i < obs_size; ++i) s.obs_noise[i] = noise[i].get<double>();
    } else {
      std::fill(s.obs_noise.begin(), s.obs_noise.end(), noise.get<double>());
    }
  }
  s.any_obs_noise = std::any_of(s.obs_noise.begin(), s.obs_noise.end(), [](double v) { return v != 0; });
  if (spec.contains("action")) {
    s.act_noise = spec["action"]["noise"].get<double>();
    s.delay_lo = spec["action"]["delay"][0].get<int>();
    s.delay_hi = spec["action"]["delay"][1].get<int>();
  }
  const Json& pushes = spec["push"];
  for (std::size_t i = 0; i < pushes.size(); ++i) {
    const Json& j = pushes[i];
    Impl::Push p;
    const std::string& name = j["body"].get_ref<const std::string&>();
    p.body = mj_name2id(model, mjOBJ_BODY, name.c_str());
    if (p.body < 0)
      throw Error("randomization spec push[" + std::to_string(i) + "]: the model has no body named '" + name + "' (" +
                  spec::known_names(model, mjOBJ_BODY, static_cast<int>(model->nbody), "body", "body names", name) +
                  ")");
    p.interval_lo = j["interval"][0].get<long>();
    p.interval_hi = j["interval"][1].get<long>();
    p.force_lo = j["force"][0].get<double>();
    p.force_hi = j["force"][1].get<double>();
    p.duration = j["duration"].get<long>();
    s.pushes.push_back(p);
  }
  s.queue.assign(static_cast<std::size_t>(kMaxDelay) * act_size, 0.0);
  s.next_push.assign(s.pushes.size(), 0);
  s.push_until.assign(s.pushes.size(), 0);
  s.force.assign(3 * s.pushes.size(), 0.0);
}

DomainRandomization::~DomainRandomization() {
  if (impl_) impl_->restore_nominal();
}

const std::string& DomainRandomization::spec() const { return impl_->spec; }
int DomainRandomization::obs_size() const { return impl_->obs_size; }
int DomainRandomization::act_size() const { return impl_->act_size; }
int DomainRandomization::delay() const { return impl_->delay; }

void DomainRandomization::seed(std::uint64_t seed) { impl_->rng.seed(seed); }

void DomainRandomization::restore_nominal() { impl_->restore_nominal(); }

void DomainRandomization::reset() {
  Impl& s = *impl_;
  s.restore_nominal();
  for (Impl::Entry& e : s.entries) {
    const double shared = s.uniform(e.lo, e.hi);
    for (const auto& rows : e.rows) {
      const double d = e.shared ? shared : s.uniform(e.lo, e.hi);
      for (int row : rows)
        for (int c = 0; c < e.cols; ++c) {
          const std::size_t k = static_cast<std::size_t>(row) * e.cols + c;
          e.array[k] = e.scale ? e.nominal[k] * d : e.nominal[k] + d;
        }
    }
  }
  s.delay = static_cast<int>(s.integer(s.delay_lo, s.delay_hi));
  for (int slot = 0; slot < s.delay; ++slot)
    for (int i = 0; i < s.act_size; ++i) s.queue[slot * s.act_size + i] = (s.low[i] + s.high[i]) / 2;
  s.head = 0;
  s.t = 0;
  for (std::size_t p = 0; p < s.pushes.size(); ++p) {
    s.next_push[p] = s.integer(s.pushes[p].interval_lo, s.pushes[p].interval_hi);
    s.push_until[p] = 0;
  }
}

void DomainRandomization::step(const double* action, double* applied, mjData* data) {
  Impl& s = *impl_;
  if (action == nullptr || applied == nullptr || data == nullptr)
    throw Error("randomization step: action, applied and data must not be null");
  const int n = s.act_size;
  for (int i = 0; i < n; ++i) {
    double a = action[i];
    if (s.act_noise != 0) {
      a += s.normal() * s.act_noise * (s.high[i] - s.low[i]) / 2;
      a = std::min(std::max(a, s.low[i]), s.high[i]);
    }
    applied[i] = a;
  }
  if (s.delay > 0) {  // the oldest waiting action goes out; this one waits in its slot
    double* slot = s.queue.data() + static_cast<std::size_t>(s.head) * n;
    for (int i = 0; i < n; ++i) std::swap(slot[i], applied[i]);
    s.head = s.head + 1 == s.delay ? 0 : s.head + 1;
  }
  ++s.t;
  for (std::size_t p = 0; p < s.pushes.size(); ++p) {
    const Impl::Push& push = s.pushes[p];
    if (s.t == s.next_push[p]) {
      const double magnitude = s.uniform(push.force_lo, push.force_hi), angle = s.uniform(-kPi, kPi);
      s.force[3 * p] = magnitude * std::cos(angle);
      s.force[3 * p + 1] = magnitude * std::sin(angle);
      s.force[3 * p + 2] = 0.0;
      s.push_until[p] = s.t + push.duration;
      s.next_push[p] = s.t + s.integer(push.interval_lo, push.interval_hi);
    }
    mjtNum* xfrc = data->xfrc_applied + 6 * push.body;
    for (int k = 0; k < 3; ++k) xfrc[k] = s.t < s.push_until[p] ? s.force[3 * p + k] : 0.0;
  }
}

void DomainRandomization::observe(double* obs) { impl_->observe(obs); }
void DomainRandomization::observe(float* obs) { impl_->observe(obs); }

std::vector<double> DomainRandomization::drawn_values() const {
  std::vector<double> out;
  for (const Impl::Entry& e : impl_->entries)
    for (const auto& rows : e.rows)
      for (int row : rows)
        for (int c = 0; c < e.cols; ++c) out.push_back(e.array[static_cast<std::size_t>(row) * e.cols + c]);
  return out;
}

DomainRandomization::State DomainRandomization::state() const {
  const Impl& s = *impl_;
  State out;
  out.rng = s.rng.state();
  out.values = drawn_values();
  for (int k = 0; k < s.delay; ++k) {
    const double* slot = s.queue.data() + static_cast<std::size_t>((s.head + k) % s.delay) * s.act_size;
    out.queue.insert(out.queue.end(), slot, slot + s.act_size);
  }
  out.t = s.t;
  out.next_push = s.next_push;
  out.push_until = s.push_until;
  out.force = s.force;
  return out;
}

void DomainRandomization::load_state(const State& in) {
  Impl& s = *impl_;
  const std::size_t values = drawn_values().size();
  const std::size_t n = static_cast<std::size_t>(s.act_size);
  if (in.values.size() != values || in.queue.size() % n != 0 || in.queue.size() / n > kMaxDelay ||
      in.next_push.size() != s.pushes.size() || in.push_until.size() != s.pushes.size() ||
      in.force.size() != 3 * s.pushes.size())
    throw Error("randomization state does not fit this spec and model (" + std::to_string(in.values.size()) +
                " model values for " + std::to_string(values) + ", " + std::to_string(in.queue.size()) +
                " delayed values, " + std::to_string(in.next_push.size()) + " pushes for " +
                std::to_string(s.pushes.size()) + ")");
  if (in.rng == std::array<std::uint64_t, 4>{}) throw Error("randomization state: an all-zero random state");
  const int delay = static_cast<int>(in.queue.size() / n);
  if (delay < s.delay_lo || delay > s.delay_hi)
    throw Error("randomization state: a delay of " + std::to_string(delay) + " control steps, the spec draws " +
                std::to_string(s.delay_lo) + " to " + std::to_string(s.delay_hi));
  for (double v : in.values)
    if (!std::isfinite(v)) throw Error("randomization state: a model value is not finite");
  s.rng.set_state(in.rng);
  std::size_t k = 0;
  for (Impl::Entry& e : s.entries)
    for (const auto& rows : e.rows)
      for (int row : rows)
        for (int c = 0; c < e.cols; ++c) e.array[static_cast<std::size_t>(row) * e.cols + c] = in.values[k++];
  s.delay = delay;
  std::copy(in.queue.begin(), in.queue.end(), s.queue.begin());
  s.head = 0;
  s.t = in.t;
  s.next_push = in.next_push;
  s.push_until = in.push_until;
  s.force = in.force;
}

}  // namespace pydpg
