#include "metadata.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "json_access.hpp"

namespace pydpg {

namespace {

std::vector<float> to_floats(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

}  // namespace

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

PolicyMetadata parse_metadata(const std::string& text, const std::string& path) {
  constexpr int kFormatVersion = PolicyRuntime::kFormatVersion;
  PolicyMetadata meta;
  meta.json = text;
  try {
    const Json j = json::parse(text);
    if (!j.is_object()) throw JsonError("the metadata is not a JSON object");
    const Json& format = json::member(j, "format");
    if (format.is_null() || json::string(format, "format") != "pydpg-policy")
      throw JsonError("field 'format' is not \"pydpg-policy\"");
    const std::int64_t version = json::integer(json::member(j, "format_version"), "format_version");
    if (version != kFormatVersion)
      throw PolicyFormatError("policy file '" + path + "' has format version " + std::to_string(version) +
                              "; this runtime reads version " + std::to_string(kFormatVersion) +
                              (version > kFormatVersion ? " (upgrade pydpg)" : " (export the policy again)"));
    meta.format_version = static_cast<int>(version);
    // Optional descriptions: absent or of another type, they read as empty.
    auto text_or_empty = [&](const char* key) {
      const Json& v = json::member(j, key);
      return v.is_string() ? v.get<std::string>() : std::string();
    };
    meta.pydpg_version = text_or_empty("pydpg_version");
    meta.torch_version = text_or_empty("torch_version");
    meta.env_id = text_or_empty("env_id");
    meta.obs_dim = json::integer(json::member(j, "obs_dim"), "obs_dim");
    meta.act_dim = json::integer(json::member(j, "act_dim"), "act_dim");
    if (meta.obs_dim < 1 || meta.obs_dim > kMaxDim) throw JsonError("obs_dim out of range");
    if (meta.act_dim < 1 || meta.act_dim > kMaxDim) throw JsonError("act_dim out of range");
    meta.action_low = to_floats(json::numbers(json::member(j, "action_low"), "action_low"));
    meta.action_high = to_floats(json::numbers(json::member(j, "action_high"), "action_high"));
    if (static_cast<std::int64_t>(meta.action_low.size()) != meta.act_dim ||
        static_cast<std::int64_t>(meta.action_high.size()) != meta.act_dim)
      throw JsonError("action_low/action_high must have act_dim entries");
    for (std::int64_t i = 0; i < meta.act_dim; ++i)
      if (!std::isfinite(meta.action_low[i]) || !std::isfinite(meta.action_high[i]) ||
          !(meta.action_low[i] < meta.action_high[i]))
        throw JsonError("action bounds [" + fmt(meta.action_low[i]) + ", " + fmt(meta.action_high[i]) + "] of action " +
                        std::to_string(i) + " are not finite with low < high");
    const Json& n = json::member(j, "normalization");
    if (!n.is_null()) {
      const auto m = json::numbers(json::member(n, "mean"), "normalization.mean");
      const auto v = json::numbers(json::member(n, "var"), "normalization.var");
      const double eps = json::number(json::member(n, "eps"), "normalization.eps");
      const Json& clip_field = json::member(n, "clip");
      const double clip = clip_field.is_null() ? 0.0 : json::number(clip_field, "normalization.clip");
      if (static_cast<std::int64_t>(m.size()) != meta.obs_dim || static_cast<std::int64_t>(v.size()) != meta.obs_dim)
        throw JsonError("normalization.mean/var must have obs_dim entries");
      // Finite in float32, where they are used: json::parse reads Python's Infinity as DBL_MAX, which
      // only the conversion turns back into the inf these checks refuse.
      if (!(eps >= 0) || !(clip >= 0) || !std::isfinite(static_cast<float>(clip)))
        throw JsonError("normalization eps/clip must be >= 0");
      meta.normalized = true;
      meta.obs_clip = static_cast<float>(clip);
      for (std::int64_t i = 0; i < meta.obs_dim; ++i) {
        const float mean = static_cast<float>(m[i]), stdev = static_cast<float>(std::sqrt(v[i] + eps));
        if (!std::isfinite(mean) || !std::isfinite(v[i]) || !(v[i] + eps > 0) || !std::isfinite(stdev))
          throw JsonError("normalization statistics of observation " + std::to_string(i) + " are not finite/positive");
        meta.obs_mean.push_back(mean);
        meta.obs_std.push_back(stdev);
      }
    }
    const Json& task = json::member(j, "task");
    if (!task.is_null()) {
      // The training env's timing. Bounded so that no product of it (episodes x steps, a reserve())
      // can overflow: a million physics steps per action, a billion actions per episode.
      TaskTiming& t = meta.task;
      const std::int64_t skip = json::integer(json::member(task, "frame_skip"), "task.frame_skip");
      if (skip < 1 || skip > 1000000)
        throw JsonError("task.frame_skip must be in [1, 1000000], got " + std::to_string(skip));
      t.frame_skip = static_cast<int>(skip);
      t.timestep = json::number(json::member(task, "timestep"), "task.timestep");
      if (!(t.timestep > 0) || !std::isfinite(t.timestep) || t.timestep > 3600)
        throw JsonError("task.timestep must be a finite number of seconds in (0, 3600], got " + fmt(t.timestep));
      t.control_period = t.timestep * t.frame_skip;
      t.control_hz = 1.0 / t.control_period;
      const Json& limit = json::member(task, "max_episode_steps");
      t.max_episode_steps = limit.is_null() ? 1000 : json::integer(limit, "task.max_episode_steps");
      if (t.max_episode_steps < 1 || t.max_episode_steps > 1000000000)
        throw JsonError("task.max_episode_steps must be in [1, 1e9], got " + std::to_string(t.max_episode_steps));
      meta.has_task = true;
    }
    const Json& steps = json::member(j, "training_steps");
    if (steps.is_number()) meta.training_steps = json::integer(steps, "training_steps");
    const Json& eval_return = json::member(j, "eval_return");
    if (eval_return.is_number()) {
      meta.eval_return = json::number(eval_return, "eval_return");
      meta.has_eval_return = true;
    }
  } catch (const JsonError& e) {
    throw PolicyFormatError("policy file '" + path + "' has invalid pydpg metadata: " + e.what());
  }
  return meta;
}

int physics_steps_per_action(double timestep, double hz) {
  if (!(timestep > 0) || !std::isfinite(timestep) || !(hz > 0) || !std::isfinite(hz))
    throw PolicyArgumentError("physics_steps_per_action: timestep and hz must be finite and > 0, got timestep " +
                              fmt(timestep) + ", hz " + fmt(hz));
  const double steps = std::round(1.0 / (hz * timestep));
  if (!(steps <= 1000000))
    throw PolicyArgumentError("a control rate of " + fmt(hz) + " Hz with a " + fmt(timestep) + " s physics step is " +
                              fmt(steps) + " physics steps per action (at most 1000000)");
  return std::max(1, static_cast<int>(steps));
}

}  // namespace pydpg
