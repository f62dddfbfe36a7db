#include "pydpg/action.hpp"

#include <algorithm>
#include <cmath>

#include "json_access.hpp"
#include "spec_reading.hpp"

namespace pydpg {

namespace {

std::string actuator_names(const mjModel* m, const std::string& wanted) {
  return spec::known_names(m, mjOBJ_ACTUATOR, static_cast<int>(m->nu), "actuator", "actuators", wanted);
}

std::string joint_names(const mjModel* m, const std::string& wanted) {
  return spec::known_names(m, mjOBJ_JOINT, static_cast<int>(m->njnt), "joint", "joints", wanted);
}

// A finite number read by name, or `fallback` where the key is absent; JsonError becomes ActionError.
double read(const Json& j, const char* key, const std::string& where, double fallback, bool* given = nullptr) {
  const Json& v = json::member(j, key);
  if (given) *given = !v.is_null();
  if (v.is_null()) return fallback;
  try {
    return json::finite_number(v, where + "." + key);
  } catch (const JsonError& e) {
    throw ActionError(e.what());
  }
}

}  // namespace

ActionMap::ActionMap(const std::string& spec_json, const mjModel* model) : model_(model) {
  if (model == nullptr) throw ActionError("ActionMap: no model");
  try {
    bind(spec_json);
  } catch (const JsonError& e) {  // a field of the wrong type, named by json_access
    throw ActionError(e.what());
  }
}

void ActionMap::bind(const std::string& spec_json) {
  const mjModel* model = model_;
  Json spec;
  try {
    spec = json::parse(spec_json);
  } catch (const JsonError& e) {
    throw ActionError(std::string("action spec: ") + e.what());
  }
  if (!spec.is_object()) throw ActionError("action spec must be an object {\"version\", \"actuators\", ...}");
  spec::check_keys<ActionError>(spec, {"version", "actuators", "max_delta", "safe_action"}, "action spec");
  if (json::member(spec, "version").is_null())
    throw ActionError("the action spec has no 'version' (this pydpg reads version " + std::to_string(kSpecVersion) +
                      ": add \"version\": " + std::to_string(kSpecVersion) + ")");
  std::int64_t version = 0;
  try {
    version = json::integer(json::member(spec, "version"), "action spec version");
  } catch (const JsonError& e) {
    throw ActionError(e.what());
  }
  if (version != kSpecVersion)
    throw ActionError("action spec version " + std::to_string(version) + "; this pydpg reads version " +
                      std::to_string(kSpecVersion) + (version > kSpecVersion ? " (upgrade pydpg)" : ""));

  const Json& list = json::member(spec, "actuators");
  if (!list.is_array() || list.empty())
    throw ActionError("action spec: 'actuators' must be a non-empty list, one entry per policy output");
  if (list.size() > static_cast<std::size_t>(model->nu))
    throw ActionError("action spec: " + std::to_string(list.size()) + " entries, but the model has " +
                      std::to_string(model->nu) + " actuators");
  std::vector<char> used(static_cast<std::size_t>(model->nu), 0);
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Json& j = list[i];
    const std::string where = "action spec actuators[" + std::to_string(i) + "]";
    if (!j.is_object()) throw ActionError(where + " must be an object {\"actuator\", ...}");
    spec::check_keys<ActionError>(j, {"actuator", "joint", "scale", "offset", "pd"}, where);
    Entry e;
    const Json& name_j = json::member(j, "actuator");
    const Json& joint_j = json::member(j, "joint");
    if (name_j.is_null() == joint_j.is_null())
      throw ActionError(where + ": give 'actuator' (its name) or 'joint' (the joint it drives), one of the two");
    int driven = -1;  // the joint the actuator drives, if it drives one
    if (!name_j.is_null()) {
      const std::string& name = spec::checked_name<ActionError>(name_j, where + ".actuator");
      e.label = "actuator " + name;
      e.actuator = mj_name2id(model, mjOBJ_ACTUATOR, name.c_str());
      if (e.actuator < 0)
        throw ActionError(where + ": the model has no actuator named '" + name + "' (" + actuator_names(model, name) +
                          ")");
      if (model->actuator_trntype[e.actuator] == mjTRN_JOINT) driven = model->actuator_trnid[2 * e.actuator];
    } else {
      // Gymnasium's own models leave actuators unnamed: the joint's name finds them as surely.
      const std::string& joint = spec::checked_name<ActionError>(joint_j, where + ".joint");
      driven = mj_name2id(model, mjOBJ_JOINT, joint.c_str());
      if (driven < 0)
        throw ActionError(where + ": the model has no joint named '" + joint + "' (" + joint_names(model, joint) + ")");
      for (int u = 0; u < model->nu; ++u)
        if (model->actuator_trntype[u] == mjTRN_JOINT && model->actuator_trnid[2 * u] == driven) {
          if (e.actuator >= 0)
            throw ActionError(where + ": more than one actuator drives joint '" + joint + "': name the actuator");
          e.actuator = u;
        }
      if (e.actuator < 0) throw ActionError(where + ": no actuator drives joint '" + joint + "'");
      e.label = "actuator of " + joint;
    }
    const std::string name = e.label;
    if (used[static_cast<std::size_t>(e.actuator)]) throw ActionError(where + ": " + name + " is listed twice");
    used[static_cast<std::size_t>(e.actuator)] = 1;

    const Json& pd = json::member(j, "pd");
    bool has_scale = false, has_offset = false;
    e.scale = read(j, "scale", where, 1.0, &has_scale);
    e.offset = read(j, "offset", where, 0.0, &has_offset);
    if (!pd.is_null()) {
      const std::string pw = where + ".pd";
      if (!pd.is_object()) throw ActionError(pw + " must be an object {\"joint\", \"kp\", \"kd\", \"torque_limit\"}");
      spec::check_keys<ActionError>(pd, {"joint", "kp", "kd", "torque_limit"}, pw);
      const Json& jn = json::member(pd, "joint");
      int jid = driven;
      if (!jn.is_null()) {
        const std::string& jname = spec::checked_name<ActionError>(jn, pw + ".joint");
        jid = mj_name2id(model, mjOBJ_JOINT, jname.c_str());
        if (jid < 0)
          throw ActionError(pw + ": the model has no joint named '" + jname + "' (" + joint_names(model, jname) + ")");
      } else if (jid < 0) {
        throw ActionError(pw + ": no 'joint', and the actuator drives no joint to default to");
      }
      const char* jn_c = mj_id2name(model, mjOBJ_JOINT, jid);
      const std::string joint = jn_c ? jn_c : "#" + std::to_string(jid);
      const int type = model->jnt_type[jid];
      if (type != mjJNT_HINGE && type != mjJNT_SLIDE)
        throw ActionError(pw + ": joint '" + joint + "' is not a hinge or slide joint (PD needs one position)");
      e.qpos = model->jnt_qposadr[jid];
      e.dof = model->jnt_dofadr[jid];
      bool given = false;
      e.kp = read(pd, "kp", pw, 0.0, &given);
      if (!given || !(e.kp > 0)) throw ActionError(pw + ".kp must be a positive number");
      e.kd = read(pd, "kd", pw, 0.0);
      if (e.kd < 0) throw ActionError(pw + ".kd must be >= 0, got " + std::to_string(e.kd));
      e.torque_limit = read(pd, "torque_limit", pw, 0.0, &given);
      if (given && !(e.torque_limit > 0)) throw ActionError(pw + ".torque_limit must be > 0 (leave it out for none)");
      if (!has_scale) throw ActionError(where + ": a PD entry needs 'scale' (radians or metres per unit of action)");
      if (!has_offset) e.offset = model->qpos0[e.qpos];  // the model's default pose
      e.pd = true;
      e.label = name + " (PD on joint " + joint + ")";
      has_pd_ = true;
    } else if (!has_scale || !has_offset) {
      if (!model->actuator_ctrllimited[e.actuator])
        throw ActionError(where + ": " + name +
                          " has no ctrlrange to map [-1, 1] onto: give both 'scale' and 'offset'");
      const double lo = model->actuator_ctrlrange[2 * e.actuator], hi = model->actuator_ctrlrange[2 * e.actuator + 1];
      if (!has_scale) e.scale = (hi - lo) / 2;
      if (!has_offset) e.offset = (hi + lo) / 2;
    }
    if (!(e.scale != 0)) throw ActionError(where + ".scale must not be 0");
    entries_.push_back(e);
  }

  bool given = false;
  max_delta_ = read(spec, "max_delta", "action spec", 0.0, &given);
  if (given && !(max_delta_ > 0)) throw ActionError("action spec max_delta must be > 0 (leave it out for none)");
  const Json& safe = json::member(spec, "safe_action");
  if (!safe.is_null()) {
    const std::string& s = spec::checked_name<ActionError>(safe, "action spec safe_action");
    if (s == "default")
      safe_ = Safe::Default;
    else if (s == "hold")
      safe_ = Safe::Hold;
    else if (s == "zero")
      safe_ = Safe::Zero;
    else
      throw ActionError("action spec safe_action '" + s + "': known are default, hold, zero");
  }
  action_.assign(entries_.size(), 0.0);
  command_.assign(entries_.size(), 0.0);
  reset();
}

std::string ActionMap::spec_from_policy_metadata(const std::string& metadata_json) {
  Json meta;
  try {
    meta = json::parse(metadata_json);
  } catch (const JsonError& e) {
    throw ActionError(std::string("policy metadata: ") + e.what());
  }
  const Json& spec = json::member(meta, "action");
  return spec.is_null() ? std::string() : spec.dump();
}

void ActionMap::reset() {
  std::fill(action_.begin(), action_.end(), 0.0);
  zero_ = false;
  set_commands();
}

void ActionMap::restore(const double* last_action, bool sending_zero) {
  for (std::size_t i = 0; i < entries_.size(); ++i)
    if (!std::isfinite(last_action[i]) || std::fabs(last_action[i]) > 1)
      throw ActionError("ActionMap::restore: last_action[" + std::to_string(i) + "] is not in [-1, 1]");
  std::copy(last_action, last_action + entries_.size(), action_.begin());
  zero_ = sending_zero;
  set_commands();
}

void ActionMap::set_commands() {
  for (std::size_t i = 0; i < entries_.size(); ++i) command_[i] = entries_[i].offset + entries_[i].scale * action_[i];
}

template <typename T>
bool ActionMap::command_from(const T* a) {
  ++counters_.commands;
  for (std::size_t i = 0; i < entries_.size(); ++i)
    if (!std::isfinite(static_cast<double>(a[i]))) {
      --counters_.commands;  // command_safe counts it
      command_safe();
      return false;
    }
  bool clipped = false, limited = false;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    double x = static_cast<double>(a[i]);
    if (x > 1 || x < -1) {
      x = std::clamp(x, -1.0, 1.0);
      clipped = true;
    }
    if (max_delta_ > 0) {
      const double lo = action_[i] - max_delta_, hi = action_[i] + max_delta_;
      if (x < lo || x > hi) {
        x = std::clamp(x, lo, hi);
        limited = true;
      }
    }
    action_[i] = x;
  }
  counters_.action_clips += clipped;
  counters_.rate_limits += limited;
  zero_ = false;
  set_commands();
  return true;
}

bool ActionMap::command(const float* action) { return command_from(action); }
bool ActionMap::command(const double* action) { return command_from(action); }

void ActionMap::command_safe() {
  ++counters_.commands;
  ++counters_.safe_actions;
  switch (safe_) {
    case Safe::Default:
      std::fill(action_.begin(), action_.end(), 0.0);
      zero_ = false;
      break;
    case Safe::Hold:
      zero_ = false;
      break;
    case Safe::Zero:
      zero_ = true;
      break;
  }
  set_commands();
}

void ActionMap::apply(mjData* d) {
  for (int u = 0; u < model_->nu; ++u) d->ctrl[u] = 0;  // actuators the spec does not list
  bool clipped = false;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    const Entry& e = entries_[i];
    double u = 0;
    if (!zero_) {
      u = e.pd ? e.kp * (command_[i] - d->qpos[e.qpos]) - e.kd * d->qvel[e.dof] : command_[i];
      if (e.torque_limit > 0 && (u > e.torque_limit || u < -e.torque_limit)) {
        u = std::clamp(u, -e.torque_limit, e.torque_limit);
        clipped = true;
      }
      if (model_->actuator_ctrllimited[e.actuator]) {
        const double lo = model_->actuator_ctrlrange[2 * e.actuator],
                     hi = model_->actuator_ctrlrange[2 * e.actuator + 1];
        if (u < lo || u > hi) {
          u = std::clamp(u, lo, hi);
          clipped = true;
        }
      }
    }
    d->ctrl[e.actuator] = u;
  }
  counters_.ctrl_clips += clipped;
}

void ActionMap::step(mjData* d, int physics_steps) {
  for (int i = 0; i < physics_steps; ++i) {
    apply(d);
    mj_step(model_, d);
  }
  mj_rnePostConstraint(model_, d);
}

}  // namespace pydpg
