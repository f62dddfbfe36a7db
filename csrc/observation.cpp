#include "observation.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "json.hpp"

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
    {"qpos", Kind::JointPos, 0},        {"qvel", Kind::JointDof, 0},          {"qacc", Kind::JointDof, 0},
    {"act", Kind::ActuatorAct, 0},      {"ctrl", Kind::Actuator, 0},          {"qfrc_actuator", Kind::JointDof, 0},
    {"qfrc_constraint", Kind::JointDof, 0}, {"cfrc_ext", Kind::Body, 6},      {"cinert", Kind::Body, 10},
    {"cvel", Kind::Body, 6},            {"xpos", Kind::Body, 3},              {"xquat", Kind::Body, 4},
    {"site_xpos", Kind::Site, 3},       {"sensordata", Kind::Sensor, 0},
};
constexpr int kNumFields = sizeof(kFields) / sizeof(kFields[0]);

const mjtNum* field_data(const mjData* d, int f) {
  switch (f) {
    case 0: return d->qpos;
    case 1: return d->qvel;
    case 2: return d->qacc;
    case 3: return d->act;
    case 4: return d->ctrl;
    case 5: return d->qfrc_actuator;
    case 6: return d->qfrc_constraint;
    case 7: return d->cfrc_ext;
    case 8: return d->cinert;
    case 9: return d->cvel;
    case 10: return d->xpos;
    case 11: return d->xquat;
    case 12: return d->site_xpos;
    case 13: return d->sensordata;
  }
  return nullptr;
}

int field_size(const mjModel* m, int f) {
  const Field& F = kFields[f];
  switch (F.kind) {
    case Kind::JointPos: return static_cast<int>(m->nq);
    case Kind::JointDof: return static_cast<int>(m->nv);
    case Kind::ActuatorAct: return static_cast<int>(m->na);
    case Kind::Actuator: return static_cast<int>(m->nu);
    case Kind::Body: return F.width * static_cast<int>(m->nbody);
    case Kind::Site: return F.width * static_cast<int>(m->nsite);
    case Kind::Sensor: return static_cast<int>(m->nsensordata);
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
    case Kind::JointDof: return "joint";
    case Kind::Actuator:
    case Kind::ActuatorAct: return "actuator";
    case Kind::Body: return "body";
    case Kind::Site: return "site";
    case Kind::Sensor: return "sensor";
  }
  return "?";
}

mjtObj object_type(Kind k) {
  switch (k) {
    case Kind::JointPos:
    case Kind::JointDof: return mjOBJ_JOINT;
    case Kind::Actuator:
    case Kind::ActuatorAct: return mjOBJ_ACTUATOR;
    case Kind::Body: return mjOBJ_BODY;
    case Kind::Site: return mjOBJ_SITE;
    case Kind::Sensor: return mjOBJ_SENSOR;
  }
  return mjOBJ_UNKNOWN;
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
    case Kind::Actuator: *adr = id; *count = 1; return;
    case Kind::ActuatorAct: *adr = m->actuator_actadr[id]; *count = m->actuator_actnum[id]; return;
    case Kind::Body:
    case Kind::Site: *adr = F.width * id; *count = F.width; return;
    case Kind::Sensor: *adr = m->sensor_adr[id]; *count = m->sensor_dim[id]; return;
  }
}

std::vector<std::string> name_list(const Json& j, const std::string& where) {
  std::vector<std::string> names;
  if (j.is_string()) {
    names.push_back(j.string(where));
  } else if (j.is_array()) {
    for (const Json& n : j.items()) names.push_back(n.string(where + ".names[]"));
    if (names.empty()) throw ObservationError(where + ": 'names' is empty");
  } else {
    throw ObservationError(where + ": 'names' must be a name or a list of names");
  }
  return names;
}

void check_keys(const Json& j, const std::set<std::string>& allowed, const std::string& where) {
  for (const auto& kv : j.members())
    if (!allowed.count(kv.first)) {
      std::string list;
      for (const auto& a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
      throw ObservationError(where + ": unknown key '" + kv.first + "' (known: " + list + ")");
    }
}

// Source indices of one selection {field, names?, start?, stop?}; `label` describes it.
std::vector<int> select(const mjModel* m, const Json& j, const std::string& where, int* field, std::string* label) {
  *field = find_field(j["field"].string(where + ".field"), where);
  const Field& F = kFields[*field];
  std::vector<int> idx;
  *label = F.name;
  if (!j["names"].is_null()) {
    std::string joined;
    for (const std::string& name : name_list(j["names"], where)) {
      const int id = mj_name2id(m, object_type(F.kind), name.c_str());
      if (id < 0)
        throw ObservationError(where + ": the model has no " + kind_name(F.kind) + " named '" + name + "' (field " +
                               F.name + ")");
      int adr = 0, count = 0;
      object_range(m, *field, id, &adr, &count);
      if (adr < 0 || count <= 0)
        throw ObservationError(where + ": " + kind_name(F.kind) + " '" + name + "' has no entries in " + F.name);
      if (static_cast<std::int64_t>(adr) + count > field_size(m, *field))
        throw ObservationError(where + ": the model places " + kind_name(F.kind) + " '" + name + "' at " + F.name + "[" +
                               std::to_string(adr) + ":" + std::to_string(adr + count) + "], past its " +
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
  const bool sliced = !j["start"].is_null() || !j["stop"].is_null();
  const std::int64_t start = j["start"].is_null() ? 0 : j["start"].integer(where + ".start");
  const std::int64_t stop = j["stop"].is_null() ? n : j["stop"].integer(where + ".stop");
  if (start < 0 || stop > n || start >= stop)
    throw ObservationError(where + ": slice [" + std::to_string(start) + ":" + std::to_string(stop) + "] of " +
                           *label + " is out of range: it has " + std::to_string(n) + " entries");
  if (sliced) *label += "[" + std::to_string(start) + ":" + std::to_string(stop) + "]";
  return std::vector<int>(idx.begin() + start, idx.begin() + stop);
}

std::string quote(const std::string& raw) {
  std::string s = "\"";
  for (char c : raw) s += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return s + "\"";
}

// Json back to text: the observation spec travels to the builder as JSON.
std::string to_text(const Json& j) {
  switch (j.type()) {
    case Json::Type::Null: return "null";
    case Json::Type::Bool: return j.boolean("") ? "true" : "false";
    case Json::Type::Number: {
      const double v = j.number("");
      // The spellings Python's json module writes, which the parser reads back (a clip to ±inf).
      if (std::isnan(v)) return "NaN";
      if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
      char b[40];
      std::snprintf(b, sizeof b, "%.17g", v);
      return b;
    }
    case Json::Type::String: return quote(j.string(""));
    case Json::Type::Array: {
      std::string s;
      for (const auto& x : j.items()) s += (s.empty() ? "" : ",") + to_text(x);
      return "[" + s + "]";
    }
    case Json::Type::Object: {
      std::string s;
      for (const auto& kv : j.members()) s += (s.empty() ? "" : ",") + quote(kv.first) + ":" + to_text(kv.second);
      return "{" + s + "}";
    }
  }
  return "null";
}

// The policy's observation spec (metadata "observation", pydpg >= 0.2) as JSON text. Files exported
// by pydpg 0.1 carry the layout as task.observation slices {field, start, stop, clip, transform}
// instead: the same terms under older key names, rewritten here so one evaluator serves both.
std::string spec_json_from(const Json& meta) {
  if (!meta["observation"].is_null()) return to_text(meta["observation"]);
  const Json& slices = meta["task"]["observation"];
  if (!slices.is_array())
    throw ObservationError("the policy carries no observation spec (metadata 'observation'): export it with an env or "
                    "an observation spec (pydpg.observation) so the loop can build its observations");
  std::string terms;
  for (const auto& s : slices.items()) {
    if (!s["start"].is_null() && !s["stop"].is_null() && s["start"].integer("start") == s["stop"].integer("stop"))
      continue;  // 0.1 allowed empty slices; they contribute nothing
    if (s["field"].is_string() && s["field"].string("") == "state")
      throw ObservationError("this policy's 0.1 observation layout reads 'state' (qpos ++ qvel), which the observation "
                             "spec states as two terms: export the policy again with this pydpg");
    std::string t = "{\"field\":" + to_text(s["field"]);
    if (!s["start"].is_null()) t += ",\"start\":" + to_text(s["start"]);
    if (!s["stop"].is_null()) t += ",\"stop\":" + to_text(s["stop"]);
    if (!s["clip"].is_null()) t += ",\"clip\":" + to_text(s["clip"]);
    if (s["transform"].is_string() && s["transform"].string("") != "none") t += ",\"fn\":" + to_text(s["transform"]);
    terms += (terms.empty() ? "" : ",") + t + "}";
  }
  return "{\"version\":1,\"terms\":[" + terms + "]}";
}

}  // namespace

std::string ObservationBuilder::spec_from_policy_metadata(const std::string& metadata_json) {
  try {
    return spec_json_from(Json::parse(metadata_json));
  } catch (const JsonError& e) {
    throw ObservationError(std::string("policy metadata: ") + e.what());
  }
}

ObservationBuilder::ObservationBuilder(const std::string& spec_json, const mjModel* model) : model_(model) {
  if (model == nullptr) throw ObservationError("observation spec: no model to bind to");
  Json spec;
  try {
    spec = Json::parse(spec_json);
  } catch (const JsonError& e) {
    throw ObservationError(std::string("observation spec is not valid JSON: ") + e.what());
  }
  try {
    if (!spec.is_object()) throw ObservationError("observation spec must be an object {\"version\", \"terms\"}");
    check_keys(spec, {"version", "terms"}, "observation spec");
    const std::int64_t version = spec["version"].integer("observation spec version");
    if (version != kSpecVersion)
      throw ObservationError("observation spec version " + std::to_string(version) + "; this pydpg reads version " +
                             std::to_string(kSpecVersion) + (version > kSpecVersion ? " (upgrade pydpg)" : ""));
    if (!spec["terms"].is_array() || spec["terms"].items().empty())
      throw ObservationError("observation spec: 'terms' must be a non-empty list");
    const auto& items = spec["terms"].items();
    for (std::size_t t = 0; t < items.size(); ++t) {
      const Json& j = items[t];
      const std::string where = "observation term " + std::to_string(t);
      if (!j.is_object()) throw ObservationError(where + ": must be an object");
      Part p;
      Term term;
      term.offset = size_;
      if (!j["input"].is_null()) {
        check_keys(j, {"input", "size"}, where);
        const std::string& name = j["input"].string(where + ".input");
        const std::int64_t n = j["size"].integer(where + ".size");
        if (n < 1 || n > (1 << 20))
          throw ObservationError(where + ": input '" + name + "' needs a size in [1, 2^20], got " + std::to_string(n));
        if (std::find(input_names_.begin(), input_names_.end(), name) != input_names_.end())
          throw ObservationError(where + ": input '" + name + "' is declared twice");
        p.input = static_cast<int>(input_names_.size());
        input_names_.push_back(name);
        inputs_.emplace_back(static_cast<std::size_t>(n), 0.0f);
        input_set_.push_back(0);
        term.label = "input " + name;
        term.size = static_cast<int>(n);
      } else {
        check_keys(j, {"field", "names", "start", "stop", "minus", "scale", "offset", "fn", "clip"}, where);
        p.src = select(model, j, where, &p.field, &term.label);
        if (!j["minus"].is_null()) {
          const Json& mj = j["minus"];
          if (!mj.is_object()) throw ObservationError(where + ".minus: must be a selection {field, names, start, stop}");
          check_keys(mj, {"field", "names", "start", "stop"}, where + ".minus");
          std::string minus_label;
          p.minus = select(model, mj, where + ".minus", &p.minus_field, &minus_label);
          if (p.minus.size() != p.src.size())
            throw ObservationError(where + ": " + term.label + " has " + std::to_string(p.src.size()) + " entries but " +
                                   minus_label + " (minus) has " + std::to_string(p.minus.size()));
          term.label += " - " + minus_label;
        }
        if (!j["scale"].is_null()) p.scale = j["scale"].number(where + ".scale");
        if (!j["offset"].is_null()) p.offset = j["offset"].number(where + ".offset");
        if (!std::isfinite(p.scale) || !std::isfinite(p.offset))
          throw ObservationError(where + ": scale and offset must be finite");
        if (!j["fn"].is_null()) {
          const std::string& fn = j["fn"].string(where + ".fn");
          if (fn == "sin") p.fn = Fn::Sin;
          else if (fn == "cos") p.fn = Fn::Cos;
          else throw ObservationError(where + ": unknown fn '" + fn + "' (known: sin, cos)");
          term.label = fn + "(" + term.label + ")";
        }
        if (!j["clip"].is_null()) {
          const auto c = j["clip"].numbers(where + ".clip");
          if (c.size() != 2 || !(c[0] <= c[1])) throw ObservationError(where + ": clip must be [low, high] with low <= high");
          p.clip = true;
          p.lo = c[0];
          p.hi = c[1];
          term.label = "clip(" + term.label + ")";
        }
        term.size = static_cast<int>(p.src.size());
      }
      if (static_cast<std::int64_t>(size_) + term.size > (1 << 24))
        throw ObservationError(where + ": the observation would exceed 2^24 values");
      size_ += term.size;
      terms_.push_back(term);
      parts_.push_back(std::move(p));
    }
  } catch (const JsonError& e) {
    throw ObservationError(e.what());
  }
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

void ObservationBuilder::build(const mjData* data, float* obs) const {
  if (data == nullptr || obs == nullptr) throw ObservationError("build: data and obs must not be null");
  for (std::size_t i = 0; i < input_set_.size(); ++i)
    if (!input_set_[i]) throw ObservationError("input '" + input_names_[i] + "' was not set before build()");
  float* out = obs;
  for (const Part& p : parts_) {
    if (p.input >= 0) {
      const auto& v = inputs_[p.input];
      std::memcpy(out, v.data(), sizeof(float) * v.size());
      out += v.size();
      continue;
    }
    const mjtNum* base = field_data(data, p.field);
    const mjtNum* minus = p.minus_field >= 0 ? field_data(data, p.minus_field) : nullptr;
    const std::size_t n = p.src.size();
    for (std::size_t k = 0; k < n; ++k) {
      // In float64, as Gymnasium assembles its observations; rounded to float32 once at the end.
      double v = base[p.src[k]];
      if (minus) v -= minus[p.minus[k]];
      v = v * p.scale + p.offset;
      if (p.fn == Fn::Sin) v = std::sin(v);
      else if (p.fn == Fn::Cos) v = std::cos(v);
      if (p.clip) v = std::min(std::max(v, p.lo), p.hi);
      out[k] = static_cast<float>(v);
    }
    out += n;
  }
}

}  // namespace pydpg
