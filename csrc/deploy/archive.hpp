// Reading a policy file: the TorchScript zip archive, checked where libtorch does not check it.
//
// Private to pydpg_runtime (not installed): it exposes libtorch types, which policy_runtime.hpp
// keeps away from the runtime's users.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <torch/script.h>

namespace pydpg {

struct PolicyArchive {
  torch::jit::Module module;
  std::map<std::string, std::string> extras;  // every requested extra file; "" when the archive has none
};

// Reads the file at `path` once, verifies the CRC-32 of every stored zip entry, loads the module
// from those same bytes with the named extra files, and checks that each of the module's tensors
// fits its storage. Throws PolicyFileError when the file cannot be read and PolicyFormatError when
// it is not an intact TorchScript archive.
PolicyArchive load_policy_archive(const std::string& path, const std::vector<std::string>& extra_files);

// libtorch's messages carry a C++ backtrace after their first line, which is no use to the user.
std::string first_line(const std::string& message);

}  // namespace pydpg
