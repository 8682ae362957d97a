// OutputFile: temporary file + fsync + rename, and a SIGINT/SIGTERM handler that removes the
// temporary files still open before the signal ends the process as it would have.
#include "host/cli/output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>

namespace tessera::cli {
namespace {

// Temporary paths the handler removes; a slot is in use while its first byte is not 0. Written
// only outside the handler, read only by it (volatile: a signal may arrive between any two stores).
constexpr int kSlots = 8;
constexpr size_t kPathMax = 4096;
volatile char g_temp_paths[kSlots][kPathMax];

void remove_temps_and_reraise(int sig) {
  for (int i = 0; i < kSlots; ++i) {
    if (g_temp_paths[i][0] == 0) continue;
    char path[kPathMax];
    for (size_t j = 0; j < kPathMax; ++j) path[j] = g_temp_paths[i][j];
    path[kPathMax - 1] = 0;
    ::unlink(path);  // async-signal-safe
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int claim_slot(const std::string& path) {
  if (path.size() + 1 > kPathMax) return -1;
  static bool installed = false;
  if (!installed) {
    struct sigaction sa {};
    sa.sa_handler = &remove_temps_and_reraise;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    installed = true;
  }
  for (int i = 0; i < kSlots; ++i) {
    if (g_temp_paths[i][0] != 0) continue;
    for (size_t j = 1; j <= path.size(); ++j) g_temp_paths[i][j] = path.c_str()[j];
    g_temp_paths[i][0] = path[0];  // last: the slot becomes visible whole
    return i;
  }
  return -1;
}

void release_slot(int slot) {
  if (slot >= 0) g_temp_paths[slot][0] = 0;
}

}  // namespace

OutputFile::OutputFile(std::string path, std::string what)
    : path_(std::move(path)), what_(std::move(what)) {
  struct stat st {};
  const bool special = ::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
  if (special && S_ISDIR(st.st_mode))
    throw std::runtime_error(what_ + ": '" + path_ + "' is a directory");
  if (!special) {
    temp_ = path_ + ".tmp-" + std::to_string(::getpid());
    slot_ = claim_slot(temp_);
    if (slot_ < 0) throw std::runtime_error(what_ + ": path '" + path_ + "' is too long");
  }
  // A FIFO with no reader would block here: O_NONBLOCK makes that an error (ENXIO) instead.
  const int fd = special ? ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)
                         : ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) {
    const int err = errno;
    release_slot(slot_);
    throw std::runtime_error(what_ + ": cannot open '" + path_ +
                             "' for writing: " + std::strerror(err));
  }
  if (special) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  file_ = ::fdopen(fd, "wb");
  if (!file_) {
    const int err = errno;
    ::close(fd);
    if (!temp_.empty()) ::unlink(temp_.c_str());
    release_slot(slot_);
    throw std::runtime_error(what_ + ": cannot open '" + path_ + "': " + std::strerror(err));
  }
}

OutputFile::~OutputFile() {
  if (file_) std::fclose(file_);
  if (!temp_.empty() && slot_ >= 0) ::unlink(temp_.c_str());  // not committed
  release_slot(slot_);
}

void OutputFile::fail(const std::string& op, int err) {
  throw std::runtime_error(what_ + ": " + op + " '" + path_ + "' failed: " + std::strerror(err));
}

void OutputFile::write(const void* data, size_t bytes) {
  if (!file_) throw std::runtime_error(what_ + ": write after commit");
  if (bytes && std::fwrite(data, 1, bytes, file_) != bytes) fail("writing", errno);
}

void OutputFile::commit() {
  if (!file_) return;
  FILE* f = file_;
  file_ = nullptr;
  if (std::fflush(f) != 0 || std::ferror(f)) {
    const int err = errno;
    std::fclose(f);
    fail("writing", err);
  }
  // Devices and pipes cannot be synced (EINVAL): only a regular file's data must reach the disk.
  if (::fsync(fileno(f)) != 0 && !(temp_.empty() && (errno == EINVAL || errno == EROFS))) {
    const int err = errno;
    std::fclose(f);
    fail("syncing", err);
  }
  if (std::fclose(f) != 0) fail("closing", errno);
  if (!temp_.empty()) {
    if (std::rename(temp_.c_str(), path_.c_str()) != 0)
      fail("renaming the temporary file to", errno);
    release_slot(slot_);
    slot_ = -1;
  }
}

void check_stdout() {
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    const int err = errno;
    throw std::runtime_error(std::string("writing to stdout failed: ") +
                             (err ? std::strerror(err) : "I/O error"));
  }
}

}  // namespace tessera::cli
