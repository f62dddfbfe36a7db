// A small JSON reader for the policy metadata that travels inside policy files.
//
// libtorch ships no public JSON parser, and the metadata is tiny, so the runtime parses it itself.
// Policy files come from disk and may be corrupt or hostile: every malformed input throws
// pydpg::JsonError, nesting depth is bounded (no stack overflow on "[[[[..."), and nothing is read
// past the end of the text.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pydpg {

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;
  static Json parse(const std::string& text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  bool is_bool() const { return type_ == Type::Bool; }

  bool has(const std::string& key) const { return is_object() && object_.count(key) != 0; }
  // Member `key`; a Null value when absent, so optional fields read naturally.
  const Json& operator[](const std::string& key) const;
  const std::vector<Json>& items() const { return array_; }
  const std::map<std::string, Json>& members() const { return object_; }

  // Typed accessors: `what` names the field in the error message.
  double number(const std::string& what) const;
  std::int64_t integer(const std::string& what) const;
  const std::string& string(const std::string& what) const;
  bool boolean(const std::string& what) const;
  std::vector<double> numbers(const std::string& what) const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
};

}  // namespace pydpg
