// What the readers of the policy file's contracts (observation, termination, action) share: naming a
// MuJoCo object safely, the "closest first" list of the model's names for a typo, and the refusal of
// unknown keys. Private to csrc/deploy; each throws the reader's own error type.
#pragma once

#include <mujoco/mujoco.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "json_access.hpp"

namespace pydpg::spec {

// Edit distance (insert, delete, substitute), case-insensitive: how near a typo is to a real name.
inline std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      const bool same =
          std::tolower(static_cast<unsigned char>(a[i - 1])) == std::tolower(static_cast<unsigned char>(b[j - 1]));
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (same ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// "the model's sensors, closest first: a, b, c" (at most 12; unnamed objects are left out).
// `plural` is how the kind reads in that sentence ("sensors", "body names").
inline std::string known_names(const mjModel* m, mjtObj type, int count, const std::string& kind,
                               const std::string& plural, const std::string& wanted) {
  std::vector<std::pair<std::size_t, std::string>> found;
  for (int id = 0; id < count; ++id) {
    const char* n = mj_id2name(m, type, id);
    if (n != nullptr && *n != '\0') found.emplace_back(edit_distance(wanted, n), n);
  }
  if (found.empty()) return "the model names no " + kind;
  std::stable_sort(found.begin(), found.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::string out = "the model's " + plural + ", closest first: ";
  const std::size_t shown = std::min<std::size_t>(found.size(), 12);
  for (std::size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + found[i].second;
  if (found.size() > shown) out += ", ... (" + std::to_string(found.size() - shown) + " more)";
  return out;
}

// A name to look up with mj_name2id, which reads a C string: "hinge\0junk" would bind to "hinge".
template <typename Error>
const std::string& checked_name(const Json& j, const std::string& where) {
  const std::string& n = json::string(j, where);
  if (n.find('\0') != std::string::npos || n.empty())
    throw Error(where + ": the name '" + n.substr(0, n.find('\0')) + "...' " +
                (n.empty() ? "is empty" : "holds a NUL character") + ": refused, never cut short");
  return n;
}

// " (did you mean 'model'?)" when some of `choices` is near `wanted` (the nearest, at most three),
// else "": the suggestion Python's refusals make (pydpg.common.names.did_you_mean).
inline std::string did_you_mean(const std::string& wanted, const std::vector<std::string>& choices) {
  std::vector<std::pair<std::size_t, std::string>> near;
  for (const std::string& c : choices) {
    const std::size_t d = edit_distance(wanted, c);
    if (2 * d <= std::max(wanted.size(), c.size())) near.emplace_back(d, c);
  }
  if (near.empty()) return "";
  std::stable_sort(near.begin(), near.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  std::string out = " (did you mean ";
  for (std::size_t i = 0; i < std::min<std::size_t>(near.size(), 3); ++i)
    out += (i ? " or '" : "'") + near[i].second + "'";
  return out + "?)";
}

template <typename Error>
void check_keys(const Json& j, const std::set<std::string>& allowed, const std::string& where) {
  for (const auto& kv : j.items())
    if (!allowed.count(kv.key())) {
      std::string list;
      for (const auto& a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
      throw Error(where + ": unknown key '" + kv.key() + "' (known: " + list + ")");
    }
}

}  // namespace pydpg::spec
