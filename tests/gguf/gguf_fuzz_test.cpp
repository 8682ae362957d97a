// Mutation fuzzing of the GGUF reader: thousands of damaged variants of a valid file (truncations,
// huge length/count/offset fields at every position, random byte and bit damage). Each must load or
// throw GgufError — never crash, hang, throw anything else, or allocate absurd memory.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <new>
#include <random>

#include "host/gguf/gguf.h"
#include "tests/gguf/gguf_fixture.h"

// The largest single allocation this process made: a length field trusted without a check would
// show up here even when the memory is reserved but never touched (so never resident).
static std::atomic<size_t> g_largest_allocation{0};

void* operator new(size_t n) {
  size_t seen = g_largest_allocation.load(std::memory_order_relaxed);
  while (n > seen && !g_largest_allocation.compare_exchange_weak(seen, n)) {
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, size_t) noexcept {
  std::free(p);
}

namespace tessera::gguf {
namespace {

struct Counts {
  size_t loaded = 0;
  size_t rejected = 0;
};

// Walks everything a loaded file exposes, so out-of-range pointers or sizes show up (under ASan as
// reports, otherwise as failed expectations).
size_t touch_value(const Value& v) {
  size_t n = 1;
  if (v.type == ValueType::ARRAY)
    for (const Value& e : v.as_array()) n += touch_value(e);
  if (v.type == ValueType::STRING) n += v.as_string().size();
  return n;
}

void try_load(std::vector<uint8_t> bytes, Counts& counts) {
  const size_t size = bytes.size();
  try {
    const GgufFile f = GgufFile::from_memory(std::move(bytes), "fuzz.gguf");
    size_t seen = 0;
    for (const auto& [k, v] : f.metadata()) seen += touch_value(v) + k.size();
    uint64_t checksum = 0;
    for (const auto& t : f.tensors()) {
      const uint64_t n = t.n_bytes();
      ASSERT_LE(f.data_offset() + t.offset + n, size);
      ASSERT_GE(t.data, f.bytes());
      if (n > 0) checksum += t.data[0] + t.data[n - 1];
    }
    ASSERT_GE(seen + checksum, 0u);
    ++counts.loaded;
  } catch (const GgufError& e) {
    ASSERT_EQ(std::string(e.what()).rfind("fuzz.gguf: ", 0), 0u) << e.what();
    ++counts.rejected;
  }
}

std::vector<uint8_t> seed_file() {
  return testing::make_fixture_writer().to_bytes();
}

// CTest runs each case in its own process, so each case checks its own peak memory.
void expect_small_peak_memory() {
  EXPECT_LT(g_largest_allocation.load(), size_t{4} << 20) << "largest single allocation in bytes";
#if !defined(__SANITIZE_ADDRESS__)  // ASan's shadow memory makes the resident size meaningless
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  EXPECT_LT(ru.ru_maxrss, 256L * 1024) << "peak resident KiB";
#endif
}

TEST(GgufFuzz, TruncationAtEveryOffset) {
  const auto full = seed_file();
  Counts c;
  for (size_t n = 0; n <= full.size(); ++n)
    try_load(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)), c);
  EXPECT_GE(c.rejected, full.size() - 64);  // only cuts inside the final padding may load
  EXPECT_GE(c.loaded, 1u);
  expect_small_peak_memory();
}

TEST(GgufFuzz, HugeFieldsAtEveryOffset) {
  const auto full = seed_file();
  const GgufFile ok = GgufFile::from_memory(full, "seed");
  const size_t header_end =
      ok.data_offset();  // lengths, counts, types and offsets all live before it
  const uint64_t wide[] = {~0ull,      1ull << 63,  (1ull << 63) - 1, 1ull << 32,
                           1ull << 40, full.size(), full.size() + 1,  0};
  const uint32_t narrow[] = {~0u, 0u, 5u, 9u, 13u, 99u, 1u << 31};
  Counts c;
  for (size_t at = 0; at + 8 <= header_end; ++at) {
    for (uint64_t x : wide) {
      auto b = full;
      testing::poke(b, at, x);
      try_load(std::move(b), c);
    }
    for (uint32_t x : narrow) {
      auto b = full;
      testing::poke(b, at, x);
      try_load(std::move(b), c);
    }
  }
  EXPECT_GT(c.rejected, 1000u);
  EXPECT_GT(c.loaded, 100u);  // e.g. changed metadata values still load
  expect_small_peak_memory();
}

TEST(GgufFuzz, RandomDamage) {
  const auto full = seed_file();
  std::mt19937_64 rng(20261126);
  Counts c;
  const auto start = std::chrono::steady_clock::now();
  for (int iter = 0; iter < 30000; ++iter) {
    auto b = full;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t at = rng() % b.size();
      switch (rng() % 6) {
        case 0:
          b[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;  // bit flip
        case 1:
          b[at] = static_cast<uint8_t>(rng());
          break;  // random byte
        case 2:
          b[at] = 0xff;
          break;
        case 3:
          if (at + 8 <= b.size()) testing::poke<uint64_t>(b, at, rng() >> (rng() % 64));
          break;
        case 4:
          b.resize(at + 1);
          break;  // truncate
        case 5:
          b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), static_cast<uint8_t>(rng()));
          break;
      }
    }
    try_load(std::move(b), c);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 30.0);
  EXPECT_GT(c.rejected, 10000u);
  EXPECT_GT(c.loaded, 100u);
  expect_small_peak_memory();
}

}  // namespace
}  // namespace tessera::gguf
