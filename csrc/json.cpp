#include "json.hpp"

#include <cstring>

namespace pydpg {

namespace {
const Json kNull;
constexpr int kMaxDepth = 64;  // metadata nests 3-4 levels; anything deeper is not ours
}  // namespace

class JsonParser {
 public:
  explicit JsonParser(const std::string& text) : s_(text) {}

  Json document() {
    Json v = value(0);
    skip_space();
    if (pos_ != s_.size()) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  const std::string& s_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& why) const {
    throw JsonError("invalid JSON metadata at byte " + std::to_string(pos_) + ": " + why);
  }

  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t'))
      ++pos_;
  }

  char peek() {
    skip_space();
    if (pos_ >= s_.size()) fail("unexpected end of text");
    return s_[pos_];
  }

  void expect_word(const char* word) {
    const std::size_t n = std::strlen(word);
    if (s_.compare(pos_, n, word) != 0) fail(std::string("expected '") + word + "'");
    pos_ += n;
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    Json v;
    const char c = peek();
    if (c == '{') {
      v.type_ = Json::Type::Object;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      while (true) {
        if (peek() != '"') fail("expected a string key");
        std::string key = string_body();
        if (peek() != ':') fail("expected ':'");
        ++pos_;
        v.object_[key] = value(depth + 1);
        const char d = peek();
        ++pos_;
        if (d == '}') break;
        if (d != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      v.type_ = Json::Type::Array;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      while (true) {
        v.array_.push_back(value(depth + 1));
        const char d = peek();
        ++pos_;
        if (d == ']') break;
        if (d != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.type_ = Json::Type::String;
      v.string_ = string_body();
    } else if (c == 't') {
      expect_word("true");
      v.type_ = Json::Type::Bool;
      v.bool_ = true;
    } else if (c == 'f') {
      expect_word("false");
      v.type_ = Json::Type::Bool;
    } else if (c == 'n') {
      expect_word("null");
    } else if (c == 'N' || c == 'I' || c == '-' || (c >= '0' && c <= '9')) {
      v.type_ = Json::Type::Number;
      v.number_ = number_body();
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    return v;
  }

  double number_body() {
    // Python's json module writes NaN/Infinity/-Infinity for non-finite floats; accept them so a
    // bad statistic surfaces as a clear validation error instead of a parse error.
    if (s_.compare(pos_, 3, "NaN") == 0) {
      pos_ += 3;
      return std::nan("");
    }
    if (s_.compare(pos_, 8, "Infinity") == 0) {
      pos_ += 8;
      return HUGE_VAL;
    }
    if (s_.compare(pos_, 9, "-Infinity") == 0) {
      pos_ += 9;
      return -HUGE_VAL;
    }
    const std::size_t start = pos_;
    while (pos_ < s_.size() && std::strchr("+-0123456789.eE", s_[pos_]) != nullptr) ++pos_;
    const std::string tok = s_.substr(start, pos_ - start);
    char* end = nullptr;
    const double d = std::strtod(tok.c_str(), &end);
    if (tok.empty() || end != tok.c_str() + tok.size()) fail("malformed number '" + tok + "'");
    return d;
  }

  void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::uint32_t hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<std::uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<std::uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<std::uint32_t>(h - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }

  std::string string_body() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            const std::uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail(std::string("unknown escape '\\") + e + "'");
      }
    }
  }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

const Json& Json::operator[](const std::string& key) const {
  if (!is_object()) return kNull;
  auto it = object_.find(key);
  return it == object_.end() ? kNull : it->second;
}

double Json::number(const std::string& what) const {
  if (!is_number()) throw JsonError(what + " must be a number");
  return number_;
}

std::int64_t Json::integer(const std::string& what) const {
  if (!is_number() || !(std::fabs(number_) < 9.0e15) || std::floor(number_) != number_)
    throw JsonError(what + " must be an integer");
  return static_cast<std::int64_t>(number_);
}

const std::string& Json::string(const std::string& what) const {
  if (!is_string()) throw JsonError(what + " must be a string");
  return string_;
}

bool Json::boolean(const std::string& what) const {
  if (!is_bool()) throw JsonError(what + " must be true or false");
  return bool_;
}

std::vector<double> Json::numbers(const std::string& what) const {
  if (!is_array()) throw JsonError(what + " must be an array of numbers");
  std::vector<double> out;
  out.reserve(array_.size());
  for (const auto& v : array_) out.push_back(v.number(what + "[]"));
  return out;
}

}  // namespace pydpg
