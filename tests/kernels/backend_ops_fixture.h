// The backend conformance fixture: one instance per available backend (cpu, cpu with guard mode, cuda when
// make_cuda_backend returns one), host data in and out through upload/download only, and comparisons against
// tests/kernels/reference_ops.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "backend_test_util.h"
#include "kernels/backend.h"
#include "reference_ops.h"

namespace dsv4::test {

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override;

  // Relative tolerance of op `op` on this backend (see the table in backend_ops_fixture.cpp).
  double tol(const std::string& op) const;
  bool is_cuda() const { return GetParam() == "cuda"; }

  template <typename T>
  Tensor up(const std::vector<T>& v, DType dt, std::initializer_list<int64_t> shape) {
    keep_.push_back(dev_upload(*be, v, dt, shape));
    return keep_.back().t;
  }
  Tensor zeros(DType dt, std::initializer_list<int64_t> shape) {
    keep_.push_back(dev_alloc(*be, dt, shape));
    return keep_.back().t;
  }
  template <typename T>
  std::vector<T> down(const Tensor& t) {
    return dev_download<T>(*be, t);
  }
  LinearWeight upload_weight(const ref::Weight& w);
  // The arena as a backend tensor, and its view.
  KvLayerView upload_arena(const ref::Arena& a);
  std::vector<uint8_t> download_arena(const KvLayerView& v) { return down<uint8_t>(v.arena); }
  BatchMeta upload_meta(const ref::Batch& b);
  EntryList upload_entries(const std::vector<ref::Entry>& e);
  SnapshotList upload_snaps(const std::vector<std::pair<int, int>>& s);

  // Elementwise |got - ref| <= tol * max(|ref|, rms(ref)). Ops that round internally (bf16 outputs, FP8
  // activations) may see a different rounding of a value whose pre-rounding sums differ in the last bit: up to
  // `flip_frac` of the elements may instead be within `flip_tol`.
  void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol, const std::string& what,
                    double flip_frac = 0, double flip_tol = 0);
  // linear() of x [M, groups * w.in] by w under all four act_fp8 x out_bf16 options, against the reference.
  void check_linear_every_option(const std::vector<float>& x, int64_t M, const ref::Weight& w, int groups,
                                 const std::string& what);

  std::unique_ptr<Backend> be;

 private:
  std::vector<Dev> keep_;
};

// Random weights of every format (no NaN codes; E8M0 scales near 1).
ref::Weight random_weight(Rng& r, WeightFormat fmt, int64_t out, int64_t in, bool f32_scale = false);
// An arena for one layer of `ratio` with every region filled with encoded random vectors (or random fp32
// records). integer_keys: indexer keys are small integers (exact dot products in any summation order).
ref::Arena random_arena(Rng& r, int ratio, int block_tokens, int window, KvCodec main, KvCodec index, bool with_tail,
                        int n_blocks, int n_slots, bool integer_keys = false);
KvCodec main_codec(KvDtype t, int dim, int rope);
KvCodec index_codec(KvDtype t, int dim);

}  // namespace dsv4::test
