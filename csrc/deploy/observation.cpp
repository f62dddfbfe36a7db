#include "pydpg/observation.hpp"

#include <algorithm>
#include <cfloat>
#include <cctype>
#include <cmath>
#include <cstring>
#include <set>

#include "json_access.hpp"
#include "spec_reading.hpp"

namespace pydpg {

namespace {

// What a MuJoCo name in a term refers to, for each field.
enum class Kind { JointPos, JointDof, Actuator, ActuatorAct, Body, Site, Sensor };

struct Field {
  const char* name;
  Kind kind;
  int width;  // entries per object for Body/Site fields; unused otherwise
};

// The mjData arrays a controller may read. Order matters only for field_data() below.
const Field kFields[] = {
    {"qpos", Kind::JointPos, 0},
    {"qvel", Kind::JointDof, 0},
    {"qacc", Kind::JointDof, 0},
    {"act", Kind::ActuatorAct, 0},
    {"ctrl", Kind::Actuator, 0},
    {"qfrc_actuator", Kind::JointDof, 0},
    {"qfrc_constraint", Kind::JointDof, 0},
    {"cfrc_ext", Kind::Body, 6},
    {"cinert", Kind::Body, 10},
    {"cvel", Kind::Body, 6},
    {"xpos", Kind::Body, 3},
    {"xquat", Kind::Body, 4},
    {"site_xpos", Kind::Site, 3},
    {"sensordata", Kind::Sensor, 0},
};
constexpr int kNumFields = sizeof(kFields) / sizeof(kFields[0]);

const mjtNum* field_data(const mjData* d, int f) {
  switch (f) {
    case 0:
      return d->qpos;
    case 1:
      return d->qvel;
    case 2:
      return d->qacc;
    case 3:
      return d->act;
    case 4:
      return d->ctrl;
    case 5:
      return d->qfrc_actuator;
    case 6:
      return d->qfrc_constraint;
    case 7:
      return d->cfrc_ext;
    case 8:
      return d->cinert;
    case 9:
      return d->cvel;
    case 10:
      return d->xpos;
    case 11:
      return d->xquat;
    case 12:
      return d->site_xpos;
    case 13:
      return d->sensordata;
  }
  return nullptr;
}

int field_size(const mjModel* m, int f) {
  const Field& F = kFields[f];
  switch (F.kind) {
    case Kind::JointPos:
      return static_cast<int>(m->nq);
    case Kind::JointDof:
      return static_cast<int>(m->nv);
    case Kind::ActuatorAct:
      return static_cast<int>(m->na);
    case Kind::Actuator:
      return static_cast<int>(m->nu);
    case Kind::Body:
      return F.width * static_cast<int>(m->nbody);
    case Kind::Site:
      return F.width * static_cast<int>(m->nsite);
    case Kind::Sensor:
      return static_cast<int>(m->nsensordata);
  }
  return 0;
}

int find_field(const std::string& name, const std::string& where) {
  for (int f = 0; f < kNumFields; ++f)
    if (name == kFields[f].name) return f;
  std::string known;
  for (const Field& F : kFields) known += std::string(known.empty() ? "" : ", ") + F.name;
  throw ObservationError(where + ": unknown field '" + name + "' (known: " + known + ")");
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::JointPos:
    case Kind::JointDof:
      return "joint";
    case Kind::Actuator:
    case Kind::ActuatorAct:
      return "actuator";
    case Kind::Body:
      return "body";
    case Kind::Site:
      return "site";
    case Kind::Sensor:
      return "sensor";
  }
  return "?";
}

mjtObj object_type(Kind k) {
  switch (k) {
    case Kind::JointPos:
    case Kind::JointDof:
      return mjOBJ_JOINT;
    case Kind::Actuator:
    case Kind::ActuatorAct:
      return mjOBJ_ACTUATOR;
    case Kind::Body:
      return mjOBJ_BODY;
    case Kind::Site:
      return mjOBJ_SITE;
    case Kind::Sensor:
      return mjOBJ_SENSOR;
  }
  return mjOBJ_UNKNOWN;
}

int object_count(const mjModel* m, Kind k) {
  switch (k) {
    case Kind::JointPos:
    case Kind::JointDof:
      return static_cast<int>(m->njnt);
    case Kind::Actuator:
    case Kind::ActuatorAct:
      return static_cast<int>(m->nu);
    case Kind::Body:
      return static_cast<int>(m->nbody);
    case Kind::Site:
      return static_cast<int>(m->nsite);
    case Kind::Sensor:
      return static_cast<int>(m->nsensor);
  }
  return 0;
}

std::string known_names(const mjModel* m, Kind k, const std::string& wanted) {
  const std::string kind = kind_name(k);
  return spec::known_names(m, object_type(k), object_count(m, k), kind, kind == "body" ? "body names" : kind + "s",
                           wanted);
}

// The [address, address + count) entries of object `id` in field f.
void object_range(const mjModel* m, int f, int id, int* adr, int* count) {
  const Field& F = kFields[f];
  switch (F.kind) {
    case Kind::JointPos:
    case Kind::JointDof: {
      const int type = m->jnt_type[id];
      const bool pos = F.kind == Kind::JointPos;
      *adr = pos ? m->jnt_qposadr[id] : m->jnt_dofadr[id];
      *count = type == mjJNT_FREE ? (pos ? 7 : 6) : type == mjJNT_BALL ? (pos ? 4 : 3) : 1;
      return;
    }
    case Kind::Actuator:
      *adr = id;
      *count = 1;
      return;
    case Kind::ActuatorAct:
      *adr = m->actuator_actadr[id];
      *count = m->actuator_actnum[id];
      return;
    case Kind::Body:
    case Kind::Site:
      *adr = F.width * id;
      *count = F.width;
      return;
    case Kind::Sensor:
      *adr = m->sensor_adr[id];
      *count = m->sensor_dim[id];
      return;
  }
}

std::vector<std::string> name_list(const Json& j, const std::string& where) {
  std::vector<std::string> names;
  if (j.is_string()) {
    names.push_back(spec::checked_name<ObservationError>(j, where));
  } else if (j.is_array()) {
    for (const Json& n : j) names.push_back(spec::checked_name<ObservationError>(n, where + ".names[]"));
    if (names.empty()) throw ObservationError(where + ": 'names' is empty");
  } else {
    throw ObservationError(where + ": 'names' must be a name or a list of names");
  }
  return names;
}

void check_keys(const Json& j, const std::set<std::string>& allowed, const std::string& where) {
  spec::check_keys<ObservationError>(j, allowed, where);
}

// Source indices of one selection {field, names?, start?, stop?}; `label` describes it.
std::vector<int> select(const mjModel* m, const Json& j, const std::string& where, int* field, std::string* label) {
  *field = find_field(json::string(json::member(j, "field"), where + ".field"), where);
  const Field& F = kFields[*field];
  std::vector<int> idx;
  *label = F.name;
  const Json& names = json::member(j, "names");
  if (!names.is_null()) {
    std::string joined;
    for (const std::string& name : name_list(names, where)) {
      const int id = mj_name2id(m, object_type(F.kind), name.c_str());
      if (id < 0)
        throw ObservationError(where + ": the model has no " + kind_name(F.kind) + " named '" + name + "' (field " +
                               F.name + "; " + known_names(m, F.kind, name) + ")");
      int adr = 0, count = 0;
      object_range(m, *field, id, &adr, &count);
      if (adr < 0 || count <= 0)
        throw ObservationError(where + ": " + kind_name(F.kind) + " '" + name + "' has no entries in " + F.name);
      if (static_cast<std::int64_t>(adr) + count > field_size(m, *field))
        throw ObservationError(where + ": the model places " + kind_name(F.kind) + " '" + name + "' at " + F.name +
                               "[" + std::to_string(adr) + ":" + std::to_string(adr + count) + "], past its " +
                               std::to_string(field_size(m, *field)) + " entries");
      for (int k = 0; k < count; ++k) idx.push_back(adr + k);
      joined += (joined.empty() ? "" : ",") + name;
    }
    *label += "(" + joined + ")";
  } else {
    const int n = field_size(m, *field);
    for (int k = 0; k < n; ++k) idx.push_back(k);
  }
  const int n = static_cast<int>(idx.size());
  const Json& js = json::member(j, "start");
  const Json& je = json::member(j, "stop");
  const std::int64_t start = js.is_null() ? 0 : json::integer(js, where + ".start");
  const std::int64_t stop = je.is_null() ? n : json::integer(je, where + ".stop");
  if (start < 0 || stop > n || start >= stop)
    throw ObservationError(where + ": slice [" + std::to_string(start) + ":" + std::to_string(stop) + "] of " + *label +
                           " is out of range: it has " + std::to_string(n) + " entries");
  if (!js.is_null() || !je.is_null()) *label += "[" + std::to_string(start) + ":" + std::to_string(stop) + "]";
  return std::vector<int>(idx.begin() + start, idx.begin() + stop);
}

// A clip or termination bound: a number, or null for "unbounded" (strict JSON has no Infinity). A
// lower bound may be -infinity (pydpg 0.2 wrote Infinity words) and reads as unbounded; a lower
// bound of +infinity, or an upper one of -infinity, is no bound but a contradiction (every value
// fails it) and is refused, as NaN is (json::number).
enum class Side { Lower, Upper };
double bound(const Json& j, Side side, const std::string& what) {
  const double unbounded = side == Side::Lower ? -HUGE_VAL : HUGE_VAL;
  if (j.is_null()) return unbounded;
  const double x = json::number(j, what);
  if (std::fabs(x) < DBL_MAX) return x;
  if ((x < 0) == (side == Side::Lower)) return unbounded;
  throw ObservationError(what + " is " + (x > 0 ? "+" : "-") +
                         "infinity: every value fails it (use null for "
                         "no bound)");
}

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

// pydpg <= 0.2 stored the termination as task.health: {terminate_when_unhealthy, finite_obs,
// conditions: [{field: qpos|qvel|state|qfrc_constraint|cfrc_ext, start, stop, min, max, strict}]}.
// Rewritten to termination conditions over spec terms; "state" (qpos ++ qvel) becomes one condition
// on each part, which needs the model's nq.
Json termination_from_health(const Json& health, const Json& terms, const mjModel* m) {
  Json out = Json::array();
  if (!health.is_object() || !json::member(health, "terminate_when_unhealthy").is_boolean() ||
      !json::member(health, "terminate_when_unhealthy").get<bool>())
    return out;
  const Json& finite_obs = json::member(health, "finite_obs");
  if (finite_obs.is_boolean() && finite_obs.get<bool>())
    for (const Json& t : terms)
      if (json::member(t, "input").is_null()) {
        Json c = t;
        c["finite"] = true;
        out.push_back(c);
      }
  for (const Json& c : json::items(json::member(health, "conditions"), "task.health.conditions")) {
    const std::string& field = json::string(json::member(c, "field"), "task.health.conditions[].field");
    auto condition = [&](const std::string& f, const Json& start, const Json& stop) {
      Json k = {{"field", f},
                {"start", start},
                {"stop", stop},
                {"min", json::member(c, "min")},
                {"max", json::member(c, "max")},
                {"strict", json::member(c, "strict").is_boolean() ? json::member(c, "strict").get<bool>() : true}};
      out.push_back(k);
    };
    if (field != "state") {
      condition(field, json::member(c, "start"), json::member(c, "stop"));
      continue;
    }
    if (m == nullptr) throw ObservationError("task.health reads 'state': converting it needs the model");
    const std::int64_t nq = m->nq, nv = m->nv;
    const Json& js = json::member(c, "start");
    const Json& je = json::member(c, "stop");
    const std::int64_t a = js.is_null() ? 0 : json::integer(js, "start");
    const std::int64_t b = je.is_null() ? nq + nv : json::integer(je, "stop");
    if (a < std::min(b, nq)) condition("qpos", a, std::min(b, nq));
    if (std::max(a, nq) < b) condition("qvel", std::max(a, nq) - nq, b - nq);
  }
  return out;
}

// The policy's observation spec (metadata "observation", pydpg >= 0.2). Files exported by pydpg 0.1
// carry the layout as task.observation slices {field, start, stop, clip, transform} instead: the
// same terms under older key names, rewritten here so one evaluator serves both.
Json spec_from(const Json& meta, const mjModel* m) {
  Json spec;
  const Json& task = json::member(meta, "task");
  if (!json::member(meta, "observation").is_null()) {
    spec = json::member(meta, "observation");
    if (!spec.is_object()) throw ObservationError("metadata 'observation' must be an object {\"version\", \"terms\"}");
  } else {
    const Json& slices = json::member(task, "observation");
    if (!slices.is_array())
      throw ObservationError(
          "the policy carries no observation spec (metadata 'observation'): export it with an env "
          "or an observation spec (pydpg.observation) so the loop can build its observations");
    Json terms = Json::array();
    for (const Json& s : slices) {
      const Json& start = json::member(s, "start");
      const Json& stop = json::member(s, "stop");
      if (!start.is_null() && !stop.is_null() && json::integer(start, "start") == json::integer(stop, "stop"))
        continue;  // 0.1 allowed empty slices; they contribute nothing
      const Json& field = json::member(s, "field");
      if (field.is_string() && field.get<std::string>() == "state")
        throw ObservationError(
            "this policy's 0.1 observation layout reads 'state' (qpos ++ qvel), which the "
            "observation spec states as two terms: export the policy again with this pydpg");
      Json t = {{"field", field}};
      if (!start.is_null()) t["start"] = start;
      if (!stop.is_null()) t["stop"] = stop;
      if (!json::member(s, "clip").is_null()) t["clip"] = json::member(s, "clip");
      const Json& fn = json::member(s, "transform");
      if (fn.is_string() && fn.get<std::string>() != "none") t["fn"] = fn;
      terms.push_back(t);
    }
    spec = {{"version", 1}, {"terms", terms}};
  }
  if (json::member(spec, "termination").is_null() && !json::member(task, "health").is_null()) {
    Json conditions = termination_from_health(json::member(task, "health"), json::member(spec, "terms"), m);
    if (!conditions.empty()) spec["termination"] = conditions;
  }
  return spec;
}

Json parse_spec(const std::string& spec_json) {
  try {
    return json::parse(spec_json);
  } catch (const JsonError& e) {
    throw ObservationError(std::string("observation spec is not valid JSON: ") + e.what());
  }
}

// The spec's version and top-level keys, checked the same way for the builder and the termination.
void check_spec(const Json& spec) {
  if (!spec.is_object()) throw ObservationError("observation spec must be an object {\"version\", \"terms\"}");
  check_keys(spec, {"version", "terms", "termination"}, "observation spec");
  if (json::member(spec, "version").is_null())
    throw ObservationError("the observation spec has no 'version' (this pydpg reads version " +
                           std::to_string(ObservationBuilder::kSpecVersion) +
                           ": add \"version\": " + std::to_string(ObservationBuilder::kSpecVersion) + ")");
  const std::int64_t version = json::integer(json::member(spec, "version"), "observation spec version");
  if (version != ObservationBuilder::kSpecVersion)
    throw ObservationError("observation spec version " + std::to_string(version) + "; this pydpg reads version " +
                           std::to_string(ObservationBuilder::kSpecVersion) +
                           (version > ObservationBuilder::kSpecVersion ? " (upgrade pydpg)" : ""));
}

const std::set<std::string> kTermKeys = {"field", "names", "start", "stop", "minus", "scale", "offset", "fn", "clip"};
// A term's history length: rl_sar and IsaacLab policies use a few to ~50 steps; more than this is
// refused rather than allocated.
constexpr std::int64_t kMaxHistory = 1024;

int history_of(const Json& j, const std::string& where) {
  const Json& h = json::member(j, "history");
  if (h.is_null()) return 1;
  const std::int64_t k = json::integer(h, where + ".history");
  if (k < 1 || k > kMaxHistory)
    throw ObservationError(where + ": history must be a whole number of control steps in [1, " +
                           std::to_string(kMaxHistory) + "], got " + std::to_string(k));
  return static_cast<int>(k);
}
// A robot's observation has tens to hundreds of terms; a spec with more than this is refused by name
// before any work is done per term.
constexpr std::size_t kMaxTerms = 1 << 16;

void check_count(const Json& list, const std::string& what) {
  if (list.is_array() && list.size() > kMaxTerms)
    throw ObservationError("observation spec: " + what + " has " + std::to_string(list.size()) +
                           " entries; pydpg reads at most " + std::to_string(kMaxTerms));
}

}  // namespace

std::string ObservationBuilder::spec_from_policy_metadata(const std::string& metadata_json, const mjModel* model) {
  try {
    return spec_from(json::parse(metadata_json), model).dump();
  } catch (const JsonError& e) {
    throw ObservationError(std::string("policy metadata: ") + e.what());
  }
}

ObservationBuilder::ObservationBuilder(const std::string& spec_json, const mjModel* model) : model_(model) {
  if (model == nullptr) throw ObservationError("observation spec: no model to bind to");
  const Json spec = parse_spec(spec_json);
  try {
    check_spec(spec);
    const Json& items = json::member(spec, "terms");
    if (!items.is_array() || items.empty())
      throw ObservationError("observation spec: 'terms' must be a non-empty list");
    check_count(items, "'terms'");
    for (std::size_t t = 0; t < items.size(); ++t) {
      const Json& j = items[t];
      const std::string where = "observation term " + std::to_string(t);
      if (!j.is_object()) throw ObservationError(where + ": must be an object");
      Part p;
      Term term;
      term.offset = size_;
      if (!json::member(j, "input").is_null()) {
        check_keys(j, {"input", "size", "history"}, where);
        const std::string& name = json::string(json::member(j, "input"), where + ".input");
        const std::int64_t n = json::integer(json::member(j, "size"), where + ".size");
        if (n < 1 || n > (1 << 20))
          throw ObservationError(where + ": input '" + name + "' needs a size in [1, 2^20], got " + std::to_string(n));
        if (std::find(input_names_.begin(), input_names_.end(), name) != input_names_.end())
          throw ObservationError(where + ": input '" + name + "' is declared twice");
        p.input = static_cast<int>(input_names_.size());
        input_names_.push_back(name);
        inputs_.emplace_back(static_cast<std::size_t>(n), 0.0f);
        input_set_.push_back(0);
        term.label = "input " + name;
        term.input = name;
        term.size = static_cast<int>(n);
      } else {
        std::set<std::string> keys = kTermKeys;
        keys.insert("history");
        check_keys(j, keys, where);
        p.src = select(model, j, where, &p.field, &term.label);
        const Json& mj = json::member(j, "minus");
        if (!mj.is_null()) {
          if (!mj.is_object())
            throw ObservationError(where + ".minus: must be a selection {field, names, start, stop}");
          check_keys(mj, {"field", "names", "start", "stop"}, where + ".minus");
          std::string minus_label;
          p.minus = select(model, mj, where + ".minus", &p.minus_field, &minus_label);
          if (p.minus.size() != p.src.size())
            throw ObservationError(where + ": " + term.label + " has " + std::to_string(p.src.size()) +
                                   " entries but " + minus_label + " (minus) has " + std::to_string(p.minus.size()));
          term.label += " - " + minus_label;
        }
        // null is the default (1, 0); anything else must be a finite number, never read as the default.
        const Json& scale = json::member(j, "scale");
        const Json& offset = json::member(j, "offset");
        p.scale = scale.is_null() ? 1.0 : json::finite_number(scale, where + ".scale");
        p.offset = offset.is_null() ? 0.0 : json::finite_number(offset, where + ".offset");
        const Json& fn_j = json::member(j, "fn");
        if (!fn_j.is_null()) {
          const std::string& fn = json::string(fn_j, where + ".fn");
          if (fn == "sin")
            p.fn = Fn::Sin;
          else if (fn == "cos")
            p.fn = Fn::Cos;
          else
            throw ObservationError(where + ": unknown fn '" + fn + "' (known: sin, cos)");
          term.label = fn + "(" + term.label + ")";
        }
        const Json& clip = json::member(j, "clip");
        if (!clip.is_null()) {
          if (!clip.is_array() || clip.size() != 2)
            throw ObservationError(where + ": clip must be [low, high] (null for an unbounded side)");
          p.lo = bound(clip[0], Side::Lower, where + ".clip[0]");
          p.hi = bound(clip[1], Side::Upper, where + ".clip[1]");
          if (!(p.lo <= p.hi)) throw ObservationError(where + ": clip must be [low, high] with low <= high");
          p.clip = true;
          term.label = "clip(" + term.label + ")";
        }
        term.size = static_cast<int>(p.src.size());
      }
      p.width = term.size;
      p.history = history_of(j, where);
      if (static_cast<std::int64_t>(size_) + static_cast<std::int64_t>(p.history) * p.width > (1 << 24))
        throw ObservationError(where + ": the observation would exceed 2^24 values");
      p.base_offset = term.base_offset = base_size_;
      base_size_ += p.width;
      term.history = p.history;
      term.size = p.history * p.width;
      if (p.history > 1) {
        term.label = "history(" + term.label + ", " + std::to_string(p.history) + ")";
        p.ring = history_.size();
        history_.resize(history_.size() + static_cast<std::size_t>(p.history) * p.width, 0.0);
        has_history_ = true;
      }
      size_ += term.size;
      terms_.push_back(term);
      parts_.push_back(std::move(p));
    }
  } catch (const JsonError& e) {
    throw ObservationError(e.what());
  }
  current_.assign(static_cast<std::size_t>(base_size_), 0.0);
}

int ObservationBuilder::input_size(const std::string& name) const {
  for (std::size_t i = 0; i < input_names_.size(); ++i)
    if (input_names_[i] == name) return static_cast<int>(inputs_[i].size());
  throw ObservationError("the observation spec has no input named '" + name + "'");
}

void ObservationBuilder::set_input(const std::string& name, const float* values, int n) {
  for (std::size_t i = 0; i < input_names_.size(); ++i) {
    if (input_names_[i] != name) continue;
    if (n != static_cast<int>(inputs_[i].size()))
      throw ObservationError("input '" + name + "' has " + std::to_string(inputs_[i].size()) + " entries, got " +
                             std::to_string(n));
    for (int k = 0; k < n; ++k)
      if (!std::isfinite(values[k]))
        throw ObservationError("input '" + name + "'[" + std::to_string(k) + "] is not finite");
    std::memcpy(inputs_[i].data(), values, sizeof(float) * n);
    input_set_[i] = 1;
    return;
  }
  throw ObservationError("the observation spec has no input named '" + name + "'");
}

template <typename T>
void ObservationBuilder::evaluate(const mjData* data, T* current) const {
  for (std::size_t i = 0; i < input_set_.size(); ++i)
    if (!input_set_[i]) throw ObservationError("input '" + input_names_[i] + "' was not set before build()");
  for (const Part& p : parts_) {
    T* out = current + p.base_offset;
    if (p.input >= 0) {
      const auto& v = inputs_[p.input];
      std::copy(v.begin(), v.end(), out);
      continue;
    }
    const mjtNum* base = field_data(data, p.field);
    const mjtNum* minus = p.minus_field >= 0 ? field_data(data, p.minus_field) : nullptr;
    const std::size_t n = p.src.size();
    for (std::size_t k = 0; k < n; ++k) {
      // In float64, as Gymnasium assembles its observations; rounded to T (float32) once.
      double v = base[p.src[k]];
      if (minus) v -= minus[p.minus[k]];
      v = v * p.scale + p.offset;
      if (p.fn == Fn::Sin)
        v = std::sin(v);
      else if (p.fn == Fn::Cos)
        v = std::cos(v);
      if (p.clip) v = std::min(std::max(v, p.lo), p.hi);
      out[k] = static_cast<T>(v);
    }
  }
}

template <typename T>
void ObservationBuilder::emit(const double* current, T* obs) {
  T* out = obs;
  for (Part& p : parts_) {
    const double* now = current + p.base_offset;
    const std::size_t n = static_cast<std::size_t>(p.width);
    if (p.history == 1) {
      for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<T>(now[k]);
      out += n;
      continue;
    }
    double* ring = history_.data() + p.ring;
    const int h = p.history;
    if (!primed_) {
      for (int s = 0; s < h; ++s) std::copy(now, now + n, ring + s * n);
      p.head = 0;
    } else {  // the oldest slot takes the current value and the next slot becomes the oldest
      std::copy(now, now + n, ring + p.head * n);
      p.head = p.head + 1 == h ? 0 : p.head + 1;
    }
    for (int s = 0; s < h; ++s) {
      const double* slot = ring + ((p.head + s) % h) * n;
      for (std::size_t k = 0; k < n; ++k) out[k] = static_cast<T>(slot[k]);
      out += n;
    }
  }
  primed_ = true;
}

template <typename T>
void ObservationBuilder::build_into(const mjData* data, T* obs) {
  if (data == nullptr || obs == nullptr) throw ObservationError("build: data and obs must not be null");
  if (!has_history_) return evaluate(data, obs);  // the base is the observation: one pass, no copy
  evaluate(data, current_.data());
  emit(current_.data(), obs);
}

void ObservationBuilder::build(const mjData* data, float* obs) { build_into(data, obs); }
void ObservationBuilder::build(const mjData* data, double* values) { build_into(data, values); }

void ObservationBuilder::build_base(const mjData* data, double* base) const {
  if (data == nullptr || base == nullptr) throw ObservationError("build_base: data and base must not be null");
  evaluate(data, base);
}

void ObservationBuilder::build_from_current(const double* current, float* obs) {
  if (current == nullptr || obs == nullptr) throw ObservationError("build_from_current: arrays must not be null");
  emit(current, obs);
}

ObservationBuilder::HistoryState ObservationBuilder::history_state() const {
  HistoryState s;
  s.primed = primed_;
  for (const Part& p : parts_)
    if (p.history > 1) s.heads.push_back(p.head);
  s.values = history_;
  return s;
}

void ObservationBuilder::load_history_state(const HistoryState& s) {
  std::size_t rings = 0;
  for (const Part& p : parts_) rings += p.history > 1 ? 1 : 0;
  if (s.heads.size() != rings || s.values.size() != history_.size())
    throw ObservationError("history state: " + std::to_string(s.heads.size()) + " rings of " +
                           std::to_string(s.values.size()) + " values, this spec keeps " + std::to_string(rings) +
                           " of " + std::to_string(history_.size()));
  std::size_t r = 0;
  for (const Part& p : parts_) {
    if (p.history == 1) continue;
    const int head = s.heads[r++];
    if (head < 0 || head >= p.history)
      throw ObservationError("history state: ring head " + std::to_string(head) + " is outside its " +
                             std::to_string(p.history) + " slots");
  }
  r = 0;
  for (Part& p : parts_)
    if (p.history > 1) p.head = s.heads[r++];
  history_ = s.values;
  primed_ = s.primed;
}

// ------------------------------------------------------------------------------------ termination
TerminationCheck::TerminationCheck(const std::string& spec_json, const mjModel* model) {
  if (model == nullptr) throw ObservationError("termination: no model to bind to");
  const Json spec = parse_spec(spec_json);
  try {
    check_spec(spec);
    Json terms = Json::array();
    const Json& list = json::items(json::member(spec, "termination"), "observation spec termination");
    check_count(list, "'termination'");
    for (std::size_t i = 0; i < list.size(); ++i) {
      const Json& c = list[i];
      const std::string where = "termination condition " + std::to_string(i);
      if (!c.is_object()) throw ObservationError(where + ": must be an object");
      if (!json::member(c, "input").is_null())
        throw ObservationError(where + ": reads an external input; conditions read mjData only");
      if (!json::member(c, "history").is_null())
        throw ObservationError(where + ": has a history; a condition reads the current step only");
      std::set<std::string> keys = kTermKeys;
      keys.insert({"min", "max", "strict", "finite"});
      check_keys(c, keys, where);
      Condition k;
      k.lo = bound(json::member(c, "min"), Side::Lower, where + ".min");
      k.hi = bound(json::member(c, "max"), Side::Upper, where + ".max");
      const Json& strict = json::member(c, "strict");
      k.strict = strict.is_null() ? true : json::boolean(strict, where + ".strict");
      const Json& finite = json::member(c, "finite");
      k.finite = !finite.is_null() && json::boolean(finite, where + ".finite");
      if (std::isnan(k.lo) || std::isnan(k.hi) || !(k.lo <= k.hi)) throw ObservationError(where + ": needs min <= max");
      if (!k.finite && k.lo == -HUGE_VAL && k.hi == HUGE_VAL)
        throw ObservationError(where + ": states no bound (min, max or finite = true)");
      Json term = c;
      for (const char* key : {"min", "max", "strict", "finite"}) term.erase(key);
      terms.push_back(term);
      conditions_.push_back(k);  // its label, offset and size come from binding the terms, below
    }
    if (!terms.empty()) {
      Json sub = {{"version", ObservationBuilder::kSpecVersion}, {"terms", terms}};
      try {
        terms_ = std::make_unique<ObservationBuilder>(sub.dump(), model);
      } catch (const ObservationError& e) {
        // "observation term i" in the sub-spec is termination condition i.
        std::string msg = e.what();
        const std::string from = "observation term ";
        if (msg.compare(0, from.size(), from) == 0) msg = "termination condition " + msg.substr(from.size());
        throw ObservationError(msg);
      }
      for (std::size_t i = 0; i < conditions_.size(); ++i) {
        Condition& k = conditions_[i];
        const auto& t = terms_->terms()[i];
        k.offset = t.offset;
        k.size = t.size;
        const std::string lo = (k.strict ? " > " : " >= ") + fmt(k.lo), hi = (k.strict ? " < " : " <= ") + fmt(k.hi);
        k.label = t.label + (k.finite ? " finite" : "");
        if (k.lo > -HUGE_VAL) k.label += (k.finite ? "," : "") + lo;
        if (k.hi < HUGE_VAL) k.label += (k.finite || k.lo > -HUGE_VAL ? "," : "") + hi;
      }
      values_.assign(static_cast<std::size_t>(terms_->size()), 0.0);
    }
  } catch (const JsonError& e) {
    throw ObservationError(e.what());
  }
}

TerminationCheck::~TerminationCheck() = default;

bool TerminationCheck::Condition::holds(const double* v) const {
  for (int e = 0; e < size; ++e) {
    // Plain comparisons, as Gymnasium's health checks make them: NaN fails every bound, and a value
    // equal to an infinite bound fails a strict one.
    const bool ok = (!finite || std::isfinite(v[e])) && (strict ? lo < v[e] && v[e] < hi : lo <= v[e] && v[e] <= hi);
    if (!ok) return false;
  }
  return true;
}

int TerminationCheck::first_failure(const mjData* data) const {
  if (!terms_) return -1;
  terms_->build(data, values_.data());
  for (std::size_t i = 0; i < conditions_.size(); ++i)
    if (!conditions_[i].holds(values_.data() + conditions_[i].offset)) return static_cast<int>(i);
  return -1;
}

void TerminationCheck::evaluate(const mjData* data, double* values, unsigned char* failed) const {
  if (!terms_) return;
  terms_->build(data, values);
  for (std::size_t i = 0; i < conditions_.size(); ++i)
    failed[i] = conditions_[i].holds(values + conditions_[i].offset) ? 0 : 1;
}

}  // namespace pydpg
