#include "archive.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

#include "pydpg/policy_runtime.hpp"

namespace pydpg {

namespace {

// torch::jit::load does not check the CRC-32 that every zip entry carries, so a flipped bit in a
// weight tensor would load as a silently different policy. Before handing the bytes to libtorch we
// walk the zip's central directory and verify every stored (uncompressed) entry: the tensors, the
// pickles and the metadata. Deflated entries (TorchScript source) are left to libtorch, whose parser
// rejects damaged code.
std::uint32_t crc32(const unsigned char* p, std::size_t n) {
  static const auto table = [] {
    std::vector<std::uint32_t> t(256);
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

struct Reader {
  const std::string& b;
  std::uint64_t le(std::uint64_t at, int bytes) const {
    if (at + bytes > b.size()) throw PolicyFormatError("zip structure points past the end of the file");
    std::uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
    return v;
  }
};

void verify_archive(const std::string& bytes, const std::string& path) {
  const Reader r{bytes};
  const std::string where = "policy file '" + path + "' is truncated or corrupt: ";
  try {
    if (bytes.size() < 22) throw PolicyFormatError("too short for a zip archive");
    std::int64_t eocd = -1;
    const std::int64_t lowest = std::max<std::int64_t>(0, static_cast<std::int64_t>(bytes.size()) - 22 - 65535);
    for (std::int64_t i = static_cast<std::int64_t>(bytes.size()) - 22; i >= lowest; --i)
      if (r.le(i, 4) == 0x06054b50u) {
        eocd = i;
        break;
      }
    if (eocd < 0) throw PolicyFormatError("no zip end-of-central-directory record");
    std::uint64_t entries = r.le(eocd + 10, 2), cd_offset = r.le(eocd + 16, 4);
    if (entries == 0xFFFF || cd_offset == 0xFFFFFFFFu) {
      if (eocd < 20 || r.le(eocd - 20, 4) != 0x07064b50u) throw PolicyFormatError("missing zip64 locator");
      const std::uint64_t z = r.le(eocd - 20 + 8, 8);
      if (r.le(z, 4) != 0x06064b50u) throw PolicyFormatError("bad zip64 end-of-central-directory record");
      entries = r.le(z + 32, 8);
      cd_offset = r.le(z + 48, 8);
    }
    if (entries == 0 || entries > bytes.size() / 46) throw PolicyFormatError("implausible zip entry count");
    std::uint64_t at = cd_offset;
    for (std::uint64_t e = 0; e < entries; ++e) {
      if (r.le(at, 4) != 0x02014b50u) throw PolicyFormatError("damaged zip central directory");
      const std::uint64_t method = r.le(at + 10, 2), crc = r.le(at + 16, 4), name_len = r.le(at + 28, 2),
                          extra_len = r.le(at + 30, 2), comment_len = r.le(at + 32, 2);
      std::uint64_t csize = r.le(at + 20, 4), usize = r.le(at + 24, 4), local = r.le(at + 42, 4);
      if (at + 46 + name_len > bytes.size()) throw PolicyFormatError("damaged zip central directory");
      const std::string name = bytes.substr(at + 46, name_len);
      // zip64 extra field: 64-bit values for whichever of the three fields hold 0xFFFFFFFF.
      for (std::uint64_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
        const std::uint64_t id = r.le(x, 2), len = r.le(x + 2, 2);
        if (id == 1) {
          std::uint64_t f = x + 4;
          if (usize == 0xFFFFFFFFu) usize = r.le(f, 8), f += 8;
          if (csize == 0xFFFFFFFFu) csize = r.le(f, 8), f += 8;
          if (local == 0xFFFFFFFFu) local = r.le(f, 8);
        }
        x += 4 + len;
      }
      if (r.le(local, 4) != 0x04034b50u) throw PolicyFormatError("entry '" + name + "' has no local header");
      const std::uint64_t data = local + 30 + r.le(local + 26, 2) + r.le(local + 28, 2);
      if (data + csize > bytes.size()) throw PolicyFormatError("entry '" + name + "' extends past the end of the file");
      if (method == 0) {
        if (csize != usize) throw PolicyFormatError("entry '" + name + "' has inconsistent sizes");
        const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + data;
        if (crc32(p, csize) != crc) throw PolicyFormatError("entry '" + name + "' fails its CRC-32 check");
      }
      at += 46 + name_len + extra_len + comment_len;
    }
  } catch (const PolicyFormatError& e) {
    throw PolicyFormatError(where + e.what());
  }
}

// libtorch builds each tensor from its pickled size/stride/offset and a storage read from its own
// zip entry, without checking that the storage is large enough: an emptied or cut entry yields a
// tensor that reads past its buffer (found by tests/test_policy_fuzz.py as a segfault). Check every
// tensor the module holds before anything reads one.
void check_tensor_storage(const torch::jit::Module& module, const std::string& path) {
  for (const auto& a : module.named_attributes(/*recurse=*/true)) {
    if (!a.value.isTensor()) continue;
    const at::Tensor& t = a.value.toTensor();
    if (!t.defined() || t.numel() == 0) continue;
    std::int64_t last = t.storage_offset();
    bool ok = last >= 0;
    for (std::int64_t d = 0; d < t.dim(); ++d) {
      if (t.stride(d) < 0) ok = false;
      last += (t.size(d) - 1) * t.stride(d);
    }
    // An emptied entry leaves a storage that claims its bytes but has no data pointer.
    if (!t.has_storage() || t.storage().data_ptr().get() == nullptr) ok = false;
    const std::uint64_t need = static_cast<std::uint64_t>(last + 1) * t.element_size();
    if (!ok || t.storage().nbytes() < need)
      throw PolicyFormatError("policy file '" + path + "' is truncated or corrupt: tensor '" + a.name + "' needs " +
                              std::to_string(need) + " bytes, its storage holds " +
                              std::to_string(ok ? t.storage().nbytes() : 0));
  }
}

}  // namespace

std::string first_line(const std::string& message) {
  const auto nl = message.find('\n');
  return nl == std::string::npos ? message : message.substr(0, nl);
}

PolicyArchive load_policy_archive(const std::string& path, const std::vector<std::string>& extra_files) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0)
    throw PolicyFileError("cannot open policy file '" + path + "': " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw PolicyFileError("policy file '" + path + "' is a directory");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw PolicyFileError("cannot open policy file '" + path + "': " + std::strerror(errno));
  if (st.st_size == 0) throw PolicyFormatError("policy file '" + path + "' is empty");
  std::string bytes(static_cast<std::size_t>(st.st_size), '\0');
  f.read(&bytes[0], st.st_size);
  if (f.gcount() != st.st_size) throw PolicyFileError("cannot read policy file '" + path + "'");
  f.close();
  if (bytes.compare(0, 4, "PK\x03\x04") != 0)
    throw PolicyFormatError("policy file '" + path +
                            "' is not a TorchScript archive (no zip header); export it with `pydpg export`");
  verify_archive(bytes, path);

  // Load from the bytes just verified, not the path again: the file may change in between.
  PolicyArchive archive;
  torch::jit::ExtraFilesMap files;
  for (const auto& name : extra_files) files[name] = "";
  try {
    std::istringstream in(bytes);
    archive.module = torch::jit::load(in, torch::kCPU, files);
  } catch (const std::exception& e) {
    throw PolicyFormatError("policy file '" + path +
                            "' is truncated, corrupt or not TorchScript: " + first_line(e.what()));
  }
  for (auto& kv : files) archive.extras[kv.first] = kv.second;
  check_tensor_storage(archive.module, path);
  return archive;
}

}  // namespace pydpg
