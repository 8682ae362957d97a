// The program cache: built once, then served from memory and disk; edits and corruption rebuild.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

#include "devices/device.h"
#include "devices/sha256.h"
#include "test_util.h"

namespace tessera {
namespace {

constexpr const char* kAddOne = R"(
#include "prelude.clh"
__kernel void add_one(__global float* x) { x[get_global_id(0)] += ONE; }
)";

KernelSources test_sources(const char* one = "1.0f") {
  KernelSources s = KernelSources::embedded();
  s.set("prelude.clh", std::string("#define ONE ") + one + "\n");
  s.set("add_one.cl", kAddOne);
  return s;
}

// A cache that stores every driver's binaries, so the store itself is tested on PoCL too (kAuto
// leaves PoCL to its own kernel cache: ProgramCacheTest.PoclIsLeftToItsOwnKernelCache).
std::shared_ptr<ProgramCache> storing_cache(KernelSources sources,
                                            const std::filesystem::path& dir) {
  auto cache = std::make_shared<ProgramCache>(std::move(sources), dir);
  cache->set_binary_store(BinaryStore::kAlways);
  return cache;
}

// Runs add_one on 64 floats of value 2 and returns the first result.
float run_add_one(const Device& d) {
  std::vector<float> x(64, 2.0f);
  ClMem buf = d.alloc(x.size() * sizeof(float));
  d.write(buf.get(), 0, x.data(), x.size() * sizeof(float));
  ClKernel k = d.kernel("add_one", "add_one");
  cl_mem m = buf.get();
  CL_CHECK(clSetKernelArg(k.get(), 0, sizeof(m), &m), d.id());
  size_t global = x.size();
  CL_CHECK(
      clEnqueueNDRangeKernel(d.queue(), k.get(), 1, nullptr, &global, nullptr, 0, nullptr, nullptr),
      d.id());
  d.read(buf.get(), 0, x.data(), x.size() * sizeof(float));
  return x[0];
}

TEST(KernelSourcesTest, EmbeddedHasProbesAndExpandsIncludes) {
  auto s = KernelSources::embedded();
  const auto names = s.program_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "probes"), names.end());
  const std::string text = s.resolve("probes");
  EXPECT_NE(text.find("work_group_sum"), std::string::npos);  // from common.clh
  EXPECT_EQ(text.find("#include \"common.clh\""), std::string::npos);
}

TEST(KernelSourcesTest, MissingFileIsNamed) {
  auto s = KernelSources::embedded();
  try {
    s.resolve("nonexistent");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("nonexistent.cl"), std::string::npos);
  }
  s.set("bad.cl", "#include \"missing.clh\"\n");
  EXPECT_THROW(s.resolve("bad"), std::runtime_error);
}

TEST(KernelSourcesTest, DirectoryOverride) {
  test::TempDir dir;
  std::ofstream(dir.path() / "k.cl") << "#include \"p.clh\"\n__kernel void k() {}\n";
  std::ofstream(dir.path() / "p.clh") << "// prelude\n";
  auto s = KernelSources::from_directory(dir.path());
  EXPECT_NE(s.resolve("k").find("// prelude"), std::string::npos);
  EXPECT_THROW(KernelSources::from_directory(dir.path() / "absent"), std::runtime_error);
}

TEST(ProgramCacheTest, SecondProcessStartCompilesNothing) {
  test::TempDir dir;
  {
    auto cache = storing_cache(test_sources(), dir.path());
    auto reg = DeviceRegistry::discover(cache);
    const Device& d = *reg.devices().front();
    EXPECT_FLOAT_EQ(run_add_one(d), 3.0f);
    EXPECT_FLOAT_EQ(run_add_one(d), 3.0f);
    EXPECT_EQ(cache->stats().builds, 1);
    EXPECT_EQ(cache->stats().memory_hits, 1);
    EXPECT_TRUE(std::filesystem::exists(cache->entry_path(d, "add_one", "")));
  }
  // A new cache over the same directory stands for a second process start.
  auto cache = storing_cache(test_sources(), dir.path());
  auto reg = DeviceRegistry::discover(cache);
  EXPECT_FLOAT_EQ(run_add_one(*reg.devices().front()), 3.0f);
  EXPECT_EQ(cache->stats().builds, 0);
  EXPECT_EQ(cache->stats().disk_hits, 1);
}

TEST(ProgramCacheTest, ChangedSourceOrOptionsRebuild) {
  test::TempDir dir;
  {
    auto cache = storing_cache(test_sources("1.0f"), dir.path());
    auto reg = DeviceRegistry::discover(cache);
    EXPECT_FLOAT_EQ(run_add_one(*reg.devices().front()), 3.0f);
  }
  // An edit in an included prelude changes the key.
  auto cache = storing_cache(test_sources("5.0f"), dir.path());
  auto reg = DeviceRegistry::discover(cache);
  const Device& d = *reg.devices().front();
  EXPECT_FLOAT_EQ(run_add_one(d), 7.0f);
  EXPECT_EQ(cache->stats().builds, 1);
  EXPECT_EQ(cache->stats().disk_hits, 0);
  // Different options: a different program and a different entry.
  cache->get(d, "add_one", "-DEXTRA=1");
  EXPECT_EQ(cache->stats().builds, 2);
  EXPECT_NE(cache->entry_path(d, "add_one", ""), cache->entry_path(d, "add_one", "-DEXTRA=1"));
}

TEST(ProgramCacheTest, CorruptOrTruncatedEntriesAreRebuilt) {
  test::TempDir dir;
  std::filesystem::path entry;
  {
    auto cache = storing_cache(test_sources(), dir.path());
    auto reg = DeviceRegistry::discover(cache);
    run_add_one(*reg.devices().front());
    entry = cache->entry_path(*reg.devices().front(), "add_one", "");
  }
  ASSERT_TRUE(std::filesystem::exists(entry));
  const auto size = std::filesystem::file_size(entry);

  // `must_reject` false: the damage may be harmless to the driver (bytes it never reads); then the
  // entry may load, but the program must still compute the right result and nothing may crash.
  auto damage_and_check = [&](auto damage, bool must_reject = true) {
    damage();
    auto cache = storing_cache(test_sources(), dir.path());
    auto reg = DeviceRegistry::discover(cache);
    EXPECT_FLOAT_EQ(run_add_one(*reg.devices().front()), 3.0f);
    if (must_reject || cache->stats().disk_hits == 0) {
      EXPECT_EQ(cache->stats().disk_rejected, 1);
      EXPECT_EQ(cache->stats().builds, 1);
    }
    // The entry was rewritten whole: the next start loads it from disk. (Its size may differ from
    // the first build's: PoCL packs the kernel variants its own cache holds into program binaries.)
    auto again = storing_cache(test_sources(), dir.path());
    auto reg2 = DeviceRegistry::discover(again);
    EXPECT_FLOAT_EQ(run_add_one(*reg2.devices().front()), 3.0f);
    EXPECT_EQ(again->stats().disk_hits, 1);
    EXPECT_EQ(again->stats().builds, 0);
  };
  // Truncated in the payload.
  damage_and_check([&] { std::filesystem::resize_file(entry, size / 2); });
  // Truncated inside the header.
  damage_and_check([&] { std::filesystem::resize_file(entry, 10); });
  // A flipped byte in the payload (checksum mismatch).
  damage_and_check([&] {
    std::fstream f(entry, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(size - 7));
    char c;
    f.seekg(std::streamoff(size - 7));
    f.get(c);
    f.seekp(std::streamoff(size - 7));
    f.put(char(c ^ 0x5a));
  });
  // Payloads altered under a recomputed checksum (the header's sha256 of the payload matches):
  // the loaded binary must be caught by building it and creating its kernels, then rebuilt.
  // Header: magic[8], version u32, reserved u32, payload_bytes u64, sha256[32].
  auto rehash = [&](const std::function<void(std::string&)>& alter) {
    return [&, alter] {
      std::string bytes;
      {
        std::ifstream in(entry, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
      }
      ASSERT_GT(bytes.size(), 56u);
      std::string payload = bytes.substr(56);
      alter(payload);
      Sha256 h;
      h.update(payload.data(), payload.size());
      const auto digest = h.finish();
      const uint64_t n = payload.size();
      std::memcpy(bytes.data() + 16, &n, sizeof(n));
      std::memcpy(bytes.data() + 24, digest.data(), digest.size());
      bytes.resize(56);
      bytes += payload;
      std::ofstream(entry, std::ios::binary | std::ios::trunc) << bytes;
    };
  };
  damage_and_check(rehash([](std::string& p) { p.assign(p.size(), '\0'); }));
  damage_and_check(rehash([](std::string& p) { p.resize(p.size() / 3); }));
  damage_and_check(rehash([](std::string& p) {
                     for (size_t i = p.size() / 4; i < p.size(); i += 97) p[i] = char(p[i] ^ 0xa5);
                   }),
                   false);
  damage_and_check(rehash([](std::string& p) {
    for (size_t i = 0; i < 64 && i < p.size(); ++i) p[i] = char(p[i] ^ 0xff);
  }));
  // Garbage of the right length.
  damage_and_check([&] {
    std::ofstream f(entry, std::ios::binary | std::ios::trunc);
    f << std::string(size, 'x');
  });
}

// With the default store a PoCL program goes to PoCL's own kernel cache, not to an entry; every
// other driver gets its entry. Either way a second start computes the same.
TEST(ProgramCacheTest, PoclIsLeftToItsOwnKernelCache) {
  test::TempDir dir;
  for (int start = 0; start < 2; ++start) {
    auto cache = std::make_shared<ProgramCache>(test_sources(), dir.path());
    auto reg = DeviceRegistry::discover(cache);
    const Device& d = *reg.devices().front();
    EXPECT_FLOAT_EQ(run_add_one(d), 3.0f);
    const bool pocl = driver_caches_programs(d.info());
    EXPECT_EQ(pocl,
              d.info().platform_name.find("Portable Computing Language") != std::string::npos);
    EXPECT_EQ(cache->stores_binaries(d), !pocl);
    EXPECT_EQ(std::filesystem::exists(cache->entry_path(d, "add_one", "")), !pocl);
    EXPECT_EQ(cache->stats().disk_hits, pocl ? 0 : start);
    EXPECT_EQ(cache->stats().builds, pocl ? 1 : 1 - start);
    cache->set_binary_store(BinaryStore::kAlways);
    EXPECT_TRUE(cache->stores_binaries(d));
  }
}

TEST(ProgramCacheTest, BuildFailureCarriesTheLog) {
  test::TempDir dir;
  KernelSources s = KernelSources::embedded();
  s.set("broken.cl", "__kernel void broken(__global float* x) { x[0] = undefined_name; }\n");
  auto cache = std::make_shared<ProgramCache>(s, dir.path());
  auto reg = DeviceRegistry::discover(cache);
  const Device& d = *reg.devices().front();
  try {
    d.program("broken");
    FAIL() << "expected a build failure";
  } catch (const ClError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.code(), CL_BUILD_PROGRAM_FAILURE);
    EXPECT_NE(msg.find("broken.cl"), std::string::npos) << msg;
    EXPECT_NE(msg.find("build log"), std::string::npos) << msg;
    EXPECT_NE(msg.find("undefined_name"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace tessera
