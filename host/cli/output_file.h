// Files the `tessera` command writes (e.g. --logits-out): whole or not at all, write errors
// reported, nothing torn left behind by an error, SIGINT or SIGTERM.
#pragma once

#include <cstdio>
#include <string>

namespace tessera::cli {

// Writes `path` through a temporary file beside it ("<path>.tmp-<pid>") that commit() flushes,
// fsyncs, closes and renames over `path`. Destroyed without commit() (an exception), or when the
// process gets SIGINT/SIGTERM, the temporary file is removed and `path` is left as it was. A path
// that exists and is not a regular file (/dev/full, a FIFO, /dev/stdout) is written directly: there
// is nothing to tear there, but every write, flush and close error is still reported.
// Not thread-safe; at most a few alive at once (the signal handler's table is fixed-size).
class OutputFile {
 public:
  // `what` names the file in errors (e.g. "--logits-out"). Throws std::runtime_error when it
  // cannot be created.
  OutputFile(std::string path, std::string what);
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  // Throws std::runtime_error naming the file and the system error.
  void write(const void* data, size_t bytes);
  // Makes the file whole at `path`; throws on any flush, sync, close or rename error.
  void commit();

 private:
  [[noreturn]] void fail(const std::string& op, int err);
  std::string path_, what_, temp_;  // temp_ empty: writing `path_` directly
  FILE* file_ = nullptr;
  int slot_ = -1;  // index in the signal handler's table of temporary files
};

// Throws std::runtime_error when stdout has had a write error (a full disk, a closed pipe):
// output that did not arrive must not end with exit code 0.
void check_stdout();

}  // namespace tessera::cli
