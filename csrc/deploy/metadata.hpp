// The pydpg metadata a policy file carries (pydpg_policy.json): parsed and checked before the
// runtime trusts any of it. Private to pydpg_runtime (not installed).
#pragma once

#include <cstdint>
#include <string>

#include "pydpg/policy_runtime.hpp"

namespace pydpg {

constexpr const char* kMetadataFile = "pydpg_policy.json";
// Bounds obs_dim and act_dim here and max_batch in the runtime: sizes beyond it come from a corrupt
// file or a typo, and would otherwise reach an allocation.
constexpr std::int64_t kMaxDim = 1 << 20;

// The metadata document `text` of the policy file at `path` (named in errors). Throws
// PolicyFormatError for malformed JSON, a missing or mistyped field, an unsupported format version,
// or values that cannot describe a policy (dimensions out of range, bounds not low < high,
// normalization statistics that are not finite and positive).
PolicyMetadata parse_metadata(const std::string& text, const std::string& path);

// A number as error messages print it (%.6g).
std::string fmt(double v);

}  // namespace pydpg
