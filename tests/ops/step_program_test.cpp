// StepProgram on every OpenCL device: ops record instead of enqueueing while a Recording is active,
// a recorded program gives the same results as enqueueing afresh, again for new buffer contents,
// host calls and host-sync points run where they were recorded, and misuse is an error.
#include "host/ops/device/step_program.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "host/ops/device/elementwise.h"

namespace tessera::ops {
namespace {

const DeviceRegistry& registry() {
  static DeviceRegistry r = DeviceRegistry::discover();
  return r;
}

std::vector<float> read(const Device& d, cl_mem m, size_t n) {
  std::vector<float> v(n);
  d.read(m, 0, v.data(), n * 4);
  return v;
}

void write(const Device& d, cl_mem m, const std::vector<float>& v) {
  d.write(m, 0, v.data(), v.size() * 4);
}

TEST(StepProgram, RecordsInsteadOfEnqueueingAndReplaysForNewContents) {
  if (registry().devices().empty()) GTEST_SKIP() << "no OpenCL device";
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    const Device& d = *dev;
    const size_t n = 1000;
    ElementwiseOps ew(d);
    ClMem a = d.alloc(n * 4), b = d.alloc(n * 4), c = d.alloc(n * 4), e = d.alloc(n * 4);
    auto fill = [&](float base) {
      std::vector<float> va(n), vb(n);
      for (size_t i = 0; i < n; ++i) {
        va[i] = base + float(i);
        vb[i] = 2.0f * float(i) - base;
      }
      write(d, a.get(), va);
      write(d, b.get(), vb);
      write(d, c.get(), std::vector<float>(n, -1.0f));
      write(d, e.get(), std::vector<float>(n, -1.0f));
      return std::pair{va, vb};
    };

    // c = a + b; host call; e = c (copy); host sync that reads c; e = e + a.
    StepProgram program;
    std::vector<std::vector<float>> seen_at_sync;
    int calls = 0;
    {
      const Device* devices[] = {&d};
      Recording recording(program, devices);
      ASSERT_EQ(recording_for(d), &program);
      ew.add(a.get(), 0, b.get(), 0, c.get(), 0, n);
      host_call(d, "count", [&] { ++calls; });
      copy_buffer(d, c.get(), 0, e.get(), 0, n * 4);
      host_sync(d, "read c", [&] { seen_at_sync.push_back(read(d, c.get(), n)); });
      ew.add(e.get(), 0, a.get(), 0, e.get(), 0, n);
    }
    EXPECT_EQ(recording_for(d), nullptr);
    d.finish();
    // Nothing ran while recording.
    EXPECT_EQ(calls, 0);
    EXPECT_TRUE(seen_at_sync.empty());

    const auto& r = program.records();
    ASSERT_EQ(r.size(), 5u);
    EXPECT_EQ(r[0].kind, StepProgram::Kind::kLaunch);
    EXPECT_EQ(r[1].kind, StepProgram::Kind::kHostCall);
    EXPECT_EQ(r[2].kind, StepProgram::Kind::kCopy);
    EXPECT_EQ(r[3].kind, StepProgram::Kind::kHostSync);
    EXPECT_EQ(r[4].kind, StepProgram::Kind::kLaunch);
    EXPECT_EQ(program.launches(), 2u);
    EXPECT_EQ(program.launches_on(d), 2u);
    EXPECT_EQ(program.host_syncs(), 1u);
    EXPECT_EQ(program.segments(), 2u);
    // Each launch owns its kernel object (arguments set once, never shared).
    ASSERT_TRUE(r[0].kernel && r[4].kernel);
    EXPECT_NE(r[0].kernel.get(), r[4].kernel.get());

    for (float base : {1.0f, 7.5f, -3.0f}) {
      SCOPED_TRACE(base);
      const auto [va, vb] = fill(base);
      // Another launch of the same op between runs sets the op's shared kernel's arguments to
      // other buffers; the recorded launches keep theirs.
      ClMem junk = d.alloc(n * 4);
      ew.add(b.get(), 0, b.get(), 0, junk.get(), 0, n);
      const int calls_before = calls;
      program.run();
      const auto got_c = read(d, c.get(), n), got_e = read(d, e.get(), n);
      EXPECT_EQ(calls, calls_before + 1);
      ASSERT_FALSE(seen_at_sync.empty());
      for (size_t i = 0; i < n; ++i) {
        const float sum = va[i] + vb[i];
        ASSERT_EQ(got_c[i], sum) << i;
        ASSERT_EQ(seen_at_sync.back()[i], sum) << i;  // the sync saw the first segment's result
        ASSERT_EQ(got_e[i], sum + va[i]) << i;
      }
    }
    EXPECT_EQ(seen_at_sync.size(), 3u);
  }
}

TEST(StepProgram, CountOnlyCountsAndCannotRun) {
  if (registry().devices().empty()) GTEST_SKIP() << "no OpenCL device";
  const Device& d = *registry().devices().front();
  ElementwiseOps ew(d);
  ClMem a = d.alloc(64 * 4);
  std::vector<float> before(64, 3.0f);
  write(d, a.get(), before);
  StepProgram program(StepProgram::Mode::kCountOnly);
  {
    const Device* devices[] = {&d};
    Recording recording(program, devices);
    for (int i = 0; i < 3; ++i) ew.add(a.get(), 0, a.get(), 0, a.get(), 0, 64);
  }
  EXPECT_EQ(program.launches(), 3u);
  EXPECT_FALSE(program.records()[0].kernel);  // nothing created
  EXPECT_THROW(program.run(), std::logic_error);
  EXPECT_EQ(read(d, a.get(), 64), before);  // nothing ran
}

TEST(StepProgram, MisuseIsAnError) {
  if (registry().devices().empty()) GTEST_SKIP() << "no OpenCL device";
  const Device& d = *registry().devices().front();
  ElementwiseOps ew(d);
  ClMem a = d.alloc(64 * 4);
  StepProgram program, other;
  const Device* devices[] = {&d};
  Recording recording(program, devices);
  // One device records into one program at a time.
  EXPECT_THROW(Recording(other, devices), std::logic_error);
  // Recorded launches follow queue order; events cannot be asked for.
  cl_event done = nullptr;
  EXPECT_THROW(ew.add(a.get(), 0, a.get(), 0, a.get(), 0, 64, {{}, &done}), std::logic_error);
  EXPECT_EQ(done, nullptr);
}

}  // namespace
}  // namespace tessera::ops
