// Typed reads of nlohmann::json values for the JSON that travels inside policy files (metadata,
// observation specs). Those files come from disk and may be corrupt or hostile, and a user who gets
// "[json.exception.type_error.302] type must be number" cannot tell which field is wrong, so every
// read here names its field. nlohmann's parser is iterative and its destructor too, so deeply nested
// input ("[[[[...") cannot overflow the stack.
//
// Private to the libraries that read JSON: it is not installed, and nlohmann's headers stay out of
// pydpg's public headers.
#pragma once

#include <cassert>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

// Hidden: each library that reads JSON keeps its own copy of nlohmann's inline code and these
// helpers, exports none of it, and cannot clash with another copy (or another nlohmann version) in
// the same process. std's own declarations keep their explicit default visibility; the C library's
// do not, so the headers nlohmann reaches it through come first (<cassert>: assert's __assert_fail
// in builds without NDEBUG; <memory>: __libc_single_threaded), or a library whose first include of
// them is nlohmann's would reference those symbols as hidden and fail to link.
#include <cfloat>
#include <cmath>

#pragma GCC visibility push(hidden)
#include <nlohmann/json.hpp>

namespace pydpg {

using Json = nlohmann::json;

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace json {

// Python's json module writes float('inf') and float('nan') as the bare words Infinity and NaN,
// which strict JSON (and nlohmann) refuses. pydpg >= 0.3 writes strict JSON; files of 0.2 may hold
// such words (an observation clip to ±inf), so they are rewritten outside strings: ±Infinity to
// ±DBL_MAX (which rounds to ±inf in float32, where observations live; readers of a bound decide
// which side it may stand on), and NaN to the string kNaNWord, which number() refuses by name: a
// NaN must never read as "no value" (a NaN termination bound once read as "unbounded").
inline std::string without_python_nonfinite(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size())
        out += text[++i];
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
      out += c;
    } else if (text.compare(i, 8, "Infinity") == 0) {
      out += "1.7976931348623157e308";
      i += 7;
    } else if (text.compare(i, 3, "NaN") == 0) {
      out += "\"NaN\"";
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

// nlohmann's iterative parser needs no depth limit for the stack's sake, but nothing pydpg writes
// nests past a handful of levels: a document that does is refused by name, as pydpg's own JSON
// reader refused it, rather than surfacing later as a type error about some field. The depth is
// found by one scan of the text: nlohmann's callback parser could check it too, but its time grows
// with the square of an array's length (a 20 MB spec of a million terms took minutes).
constexpr int kMaxDepth = 64;
// Policy metadata and observation specs are kilobytes; a document past this is not pydpg's.
constexpr std::size_t kMaxBytes = std::size_t{64} << 20;

inline void check_shape(const std::string& text) {
  if (text.size() > kMaxBytes)
    throw JsonError("the JSON document is " + std::to_string(text.size() >> 20) + " MiB; pydpg reads at most " +
                    std::to_string(kMaxBytes >> 20) + " MiB");
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth)
        throw JsonError("malformed JSON: nested deeper than " + std::to_string(kMaxDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

inline Json parse(const std::string& text) {
  check_shape(text);
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    const std::string rewritten = without_python_nonfinite(text);
    if (rewritten != text) {
      try {
        return Json::parse(rewritten);
      } catch (const Json::exception&) {
      }
    }
    throw JsonError(std::string("malformed JSON: ") + e.what());
  }
}

// Member `key`, or null when `j` is not an object or lacks it (const operator[] would be undefined).
inline const Json& member(const Json& j, const std::string& key) {
  static const Json null_value;
  if (!j.is_object()) return null_value;
  const auto it = j.find(key);
  return it == j.end() ? null_value : *it;
}

inline double number(const Json& j, const std::string& what) {
  if (j.is_string() && j.get_ref<const std::string&>() == "NaN")
    throw JsonError(what + " is NaN: a NaN is refused, never read as a value or a bound");
  if (!j.is_number()) throw JsonError(what + " must be a number");
  return j.get<double>();
}

// A number that must be finite: also refuses ±Infinity (rewritten to ±DBL_MAX above) by name.
inline double finite_number(const Json& j, const std::string& what) {
  const double x = number(j, what);
  if (!(std::fabs(x) < DBL_MAX)) throw JsonError(what + " must be finite, got " + (x > 0 ? "+" : "-") + "infinity");
  return x;
}

// Integers written as 3 or 3.0 are accepted; 3.5, 1e300 and non-numbers are not.
inline std::int64_t integer(const Json& j, const std::string& what) {
  if (j.is_number_integer()) {
    if (j.is_number_unsigned() && j.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      throw JsonError(what + " must be an integer");
    return j.get<std::int64_t>();
  }
  const double x = j.is_number_float() ? j.get<double>() : NAN;
  if (!(std::fabs(x) < 9.0e15) || std::floor(x) != x) throw JsonError(what + " must be an integer");
  return static_cast<std::int64_t>(x);
}

inline const std::string& string(const Json& j, const std::string& what) {
  if (!j.is_string()) throw JsonError(what + " must be a string");
  return j.get_ref<const std::string&>();
}

inline bool boolean(const Json& j, const std::string& what) {
  if (!j.is_boolean()) throw JsonError(what + " must be true or false");
  return j.get<bool>();
}

inline std::vector<double> numbers(const Json& j, const std::string& what) {
  if (!j.is_array()) throw JsonError(what + " must be an array of numbers");
  std::vector<double> out;
  out.reserve(j.size());
  for (const Json& v : j) out.push_back(number(v, what + "[]"));
  return out;
}

// Array elements, or none when `j` is null (an optional list); anything else is an error.
inline const Json& items(const Json& j, const std::string& what) {
  static const Json empty = Json::array();
  if (j.is_null()) return empty;
  if (!j.is_array()) throw JsonError(what + " must be a list");
  return j;
}

}  // namespace json
}  // namespace pydpg
#pragma GCC visibility pop
