// Guard mode (DSV4_GUARD_BACKEND_MEMORY=1): backend memory is reachable only inside backend calls.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend_test_util.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

using namespace dsv4;
using namespace dsv4::test;

namespace {

std::unique_ptr<Backend> guarded_cpu_backend() {
  setenv("DSV4_GUARD_BACKEND_MEMORY", "1", 1);
  auto be = make_cpu_backend();
  unsetenv("DSV4_GUARD_BACKEND_MEMORY");
  return be;
}

float host_read(const Buffer& b) { return *reinterpret_cast<volatile float*>(b.base()); }

class GuardTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

}  // namespace

TEST_F(GuardTest, OffByDefault) {
  auto be = make_cpu_backend();
  EXPECT_FALSE(cpu_backend_guarded(*be));
  Dev d = dev_upload(*be, std::vector<float>{2.5f}, DType::F32, {1});
  EXPECT_EQ(host_read(*d.buf), 2.5f);  // plain host memory without the guard
}

TEST_F(GuardTest, AllocatedBufferCrashesOutsideACallAndWorksInside) {
  auto be = guarded_cpu_backend();
  ASSERT_TRUE(cpu_backend_guarded(*be));
  Dev d = dev_upload(*be, std::vector<float>{1.5f, -2.f}, DType::F32, {2});
  EXPECT_DEATH(host_read(*d.buf), "");
  float seen = 0;
  cpu_backend_with_access(*be, [&] { seen = host_read(*d.buf); });
  EXPECT_EQ(seen, 1.5f);
  EXPECT_DEATH(host_read(*d.buf), "");  // locked again after the call
  // Ops and downloads still reach the memory (every entry point opens the guard).
  be->scale(d, 2.f);
  EXPECT_EQ(dev_download<float>(*be, d), (std::vector<float>{3.f, -4.f}));
  EXPECT_DEATH(host_read(*d.buf), "");
}

TEST_F(GuardTest, ImportedReadOnlyMemoryGetsItsProtectionBack) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  void* m = mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(m, MAP_FAILED);
  float* host = static_cast<float*>(m);
  for (int i = 0; i < 8; ++i) host[i] = float(i);
  ASSERT_EQ(mprotect(m, 2 * page, PROT_READ), 0);  // like the checkpoint mapping
  {
    auto be = guarded_cpu_backend();
    // An import that does not start on a page boundary: the guard covers its whole pages.
    auto buf = be->import_host(host + 2, 4 * sizeof(float), BufferUsage::Weights);
    Tensor t(buf.get(), 0, DType::F32, {4, 1});
    EXPECT_DEATH((void)*reinterpret_cast<volatile float*>(host + 2), "");
    EXPECT_DEATH((void)*reinterpret_cast<volatile float*>(host), "");  // same page
    float seen = -1;
    cpu_backend_with_access(*be, [&] { seen = host_read(*buf); });
    EXPECT_EQ(seen, 2.f);
    // An op reads the imported rows (unlocked to PROT_READ, which is all it needs).
    Dev rows = dev_upload(*be, std::vector<int32_t>{3, 0}, DType::I32, {2});
    Dev out = dev_alloc(*be, DType::F32, {2, 1});
    be->gather_rows(t, rows, out);
    EXPECT_EQ(dev_download<float>(*be, out), (std::vector<float>{5.f, 2.f}));
    // Unlocked means the original protection, not read-write.
    EXPECT_DEATH(cpu_backend_with_access(*be, [&] { *reinterpret_cast<volatile float*>(host + 2) = 1.f; }), "");
  }
  // The buffer is gone: the mapping is readable again and still read-only.
  EXPECT_EQ(host[3], 3.f);
  EXPECT_DEATH(*reinterpret_cast<volatile float*>(host + 3) = 0.f, "");
  munmap(m, 2 * page);
}

TEST_F(GuardTest, BufferMayOutliveItsBackend) {
  auto be = guarded_cpu_backend();
  Dev d = dev_upload(*be, std::vector<float>{4.f}, DType::F32, {1});
  be.reset();  // the buffer becomes plain memory, unguarded
  EXPECT_EQ(host_read(*d.buf), 4.f);
}
