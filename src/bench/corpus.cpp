#include "bench/corpus.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "bench/message.hpp"

namespace inboxd::bench {

namespace {

bool starts_with_from(std::string_view line) {
  return line.substr(0, 5) == "From ";
}

// Reads a whole file; an error message on failure.
std::string read_file(const std::string& path, std::size_t budget, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return fmt::format("--corpus: cannot open {}: {}", path, std::strerror(errno));
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::size_t>(in.tellg());
  if (size > budget)
    return fmt::format("--corpus: {}: the corpus is larger than {} bytes", path, max_corpus_bytes);
  in.seekg(0);
  out.resize(size);
  if (!in.read(out.data(), static_cast<std::streamsize>(size)))
    return fmt::format("--corpus: cannot read {}", path);
  return {};
}

std::string add_message(std::string_view file_text, const std::string& where,
                        std::vector<corpus_message>& messages, std::size_t& total) {
  corpus_message m;
  m.text = to_crlf(file_text);
  if (m.text.size() > max_message_size)
    return fmt::format("--corpus: {}: a message above {} bytes", where, max_message_size);
  m.stuffed = dot_stuff(m.text);
  total += m.text.size() + m.stuffed.size();
  if (total > max_corpus_bytes)
    return fmt::format("--corpus: {}: the corpus is larger than {} bytes", where, max_corpus_bytes);
  messages.push_back(std::move(m));
  return {};
}

}  // namespace

std::vector<std::string> split_mboxrd(std::string_view file) {
  std::vector<std::string> out;
  std::string* current = nullptr;
  std::size_t pos = 0;
  while (pos < file.size()) {
    std::size_t lf = file.find('\n', pos);
    std::size_t end = lf == std::string_view::npos ? file.size() : lf + 1;
    std::string_view line = file.substr(pos, end - pos);
    pos = end;
    if (starts_with_from(line)) {
      out.emplace_back();
      current = &out.back();
      continue;
    }
    // Text before the first From_ line is no message.
    if (!current) continue;
    // mboxrd: a From_ line quoted once more for each '>'; one comes off.
    std::size_t quotes = line.find_first_not_of('>');
    if (quotes > 0 && quotes != std::string_view::npos && starts_with_from(line.substr(quotes)))
      line.remove_prefix(1);
    current->append(line);
  }
  // The writer ends every message with an empty line before the next From_.
  for (auto& m : out) {
    if (m.size() >= 2 && m.compare(m.size() - 2, 2, "\n\n") == 0)
      m.pop_back();
    else if (m.size() >= 4 && m.compare(m.size() - 4, 4, "\r\n\r\n") == 0)
      m.resize(m.size() - 2);
  }
  return out;
}

std::string to_crlf(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 32 + 2);
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t lf = text.find('\n', pos);
    if (lf == std::string_view::npos) {
      out.append(text.substr(pos)).append("\r\n");
      break;
    }
    std::size_t end = lf > pos && text[lf - 1] == '\r' ? lf - 1 : lf;
    out.append(text.substr(pos, end - pos)).append("\r\n");
    pos = lf + 1;
  }
  return out;
}

std::string dot_stuff(std::string_view text) {
  bool needed = !text.empty() && text[0] == '.';
  if (!needed && text.find("\n.") == std::string_view::npos) return {};
  std::string out;
  out.reserve(text.size() + 64);
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t lf = text.find('\n', pos);
    std::size_t end = lf == std::string_view::npos ? text.size() : lf + 1;
    if (text[pos] == '.') out += '.';
    out.append(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

std::string load_corpus(const std::string& path, std::vector<corpus_message>& messages) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return fmt::format("--corpus: {}: {}", path, std::strerror(errno));
  std::size_t total = 0;
  if (S_ISREG(st.st_mode)) {
    std::string file;
    if (auto error = read_file(path, max_corpus_bytes, file); !error.empty()) return error;
    std::size_t number = 0;
    for (auto& text : split_mboxrd(file)) {
      ++number;
      if (auto error =
              add_message(text, fmt::format("{} message {}", path, number), messages, total);
          !error.empty())
        return error;
    }
    if (messages.empty()) return fmt::format("--corpus: {}: no \"From \" line: not an mbox", path);
    return {};
  }
  if (!S_ISDIR(st.st_mode)) return fmt::format("--corpus: {}: neither a file nor a Maildir", path);
  bool maildir = false;
  for (const char* sub : {"cur", "new"}) {
    std::string dir = path + "/" + sub;
    DIR* d = ::opendir(dir.c_str());
    if (!d) continue;
    maildir = true;
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    ::closedir(d);
    std::sort(names.begin(), names.end());
    for (auto& name : names) {
      std::string file_path = dir + "/" + name;
      struct stat fst {};
      if (::stat(file_path.c_str(), &fst) != 0 || !S_ISREG(fst.st_mode)) continue;
      std::string text;
      if (auto error = read_file(file_path, max_corpus_bytes - total, text); !error.empty())
        return error;
      if (auto error = add_message(text, file_path, messages, total); !error.empty()) return error;
    }
  }
  if (!maildir) return fmt::format("--corpus: {}: no cur/ or new/: not a Maildir", path);
  if (messages.empty()) return fmt::format("--corpus: {}: the Maildir holds no message", path);
  return {};
}

}  // namespace inboxd::bench
