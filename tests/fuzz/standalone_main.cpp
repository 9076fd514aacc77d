// tests/fuzz/standalone_main.cpp: runs a fuzz harness over files, without libFuzzer.
//
// Usage: fuzz-<name> PATH...: every regular file of every directory given
// (recursively, in name order), and every file given, goes once through
// LLVMFuzzerTestOneInput. Arguments that start with '-' are libFuzzer flags
// and are ignored, so one command line serves both builds. Each input is
// copied into a buffer of its exact size, so that a sanitizer sees a read
// past its end. A broken invariant traps, which fails the test.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

bool run_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return false;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto copy = std::make_unique<std::uint8_t[]>(bytes.size());
  std::copy(bytes.begin(), bytes.end(), copy.get());
  std::fprintf(stderr, "running %s (%zu bytes)\n", path.c_str(), bytes.size());
  LLVMFuzzerTestOneInput(copy.get(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> files;
  int roots = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.starts_with("-")) continue;
    ++roots;
    std::error_code ec;
    if (fs::is_directory(arg, ec)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::recursive_directory_iterator(arg, ec))
        if (e.is_regular_file()) found.push_back(e.path());
      if (ec) {
        std::fprintf(stderr, "cannot list %s: %s\n", arg.c_str(), ec.message().c_str());
        return 1;
      }
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.emplace_back(arg);
    }
  }
  if (roots == 0) {
    std::fprintf(stderr, "usage: %s FILE_OR_DIRECTORY...\n", argc > 0 ? argv[0] : "fuzz");
    return 2;
  }
  for (const auto& f : files)
    if (!run_file(f)) return 1;
  std::fprintf(stderr, "%zu inputs ran, no invariant broken\n", files.size());
  // An empty corpus is a mistake in the build, not a pass.
  return files.empty() ? 1 : 0;
}
