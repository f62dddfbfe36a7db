// A few lines of test scaffolding shared by the C++ test drivers in tests/cpp. The drivers run
// under AddressSanitizer/UBSan and ThreadSanitizer (tests/cpp/sanitize.sh), so they stay plain
// C++17 with no test framework to build or instrument.
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace pydpg_test {

// Atomic: the stress tests check from several threads at once.
inline std::atomic<int> checks{0};
inline std::atomic<int> failures{0};

inline void fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
  ++failures;
}

// Prints the closing line every runner understands and returns the process exit code.
inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failed\n", name, checks.load(), failures.load());
  return failures == 0 ? 0 : 1;
}

}  // namespace pydpg_test

#define CHECK(cond)                                           \
  do {                                                        \
    ++pydpg_test::checks;                                     \
    if (!(cond)) pydpg_test::fail(__FILE__, __LINE__, #cond); \
  } while (0)

// The statement must throw exactly `type` (or a subclass).
#define CHECK_THROWS(type, stmt)                                                                     \
  do {                                                                                               \
    ++pydpg_test::checks;                                                                            \
    bool caught_ = false;                                                                            \
    try {                                                                                            \
      stmt;                                                                                          \
    } catch (const type&) {                                                                          \
      caught_ = true;                                                                                \
    } catch (const std::exception& e_) {                                                             \
      pydpg_test::fail(__FILE__, __LINE__, std::string(#stmt " threw another error: ") + e_.what()); \
      caught_ = true;                                                                                \
    }                                                                                                \
    if (!caught_) pydpg_test::fail(__FILE__, __LINE__, #stmt " did not throw " #type);               \
  } while (0)
