// CPU backend: manifold-constrained hyper-connections (spec §2.3), the old engine's loops on tensors.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "kernels/cpu/cpu_internal.h"

namespace dsv4 {
namespace cpu {

namespace {

void check_params(const HcParams& p, int rows, int n_scale, const char* what) {
  check_dtype(p.fn, DType::F32, what);
  check_numel(p.fn, int64_t(rows) * p.hc * p.D, what);
  check_numel(p.base, rows, what);
  DSV4_CHECK(p.scale.numel() >= n_scale, "{}: {} scales (need {})", what, p.scale.numel(), n_scale);
  DSV4_CHECK(p.hc > 0 && p.hc <= 16, "{}: hc {} (at most 16)", what, p.hc);
}

}  // namespace

void CpuBackend::hc_pre(const Tensor& X, const HcParams& p, const Tensor& y, const Tensor& post,
                        const Tensor& comb, bool bf16_out) {
  auto s = op();
  const int hc = p.hc;
  const int64_t flat = int64_t(hc) * p.D;
  const int rows = (2 + hc) * hc;
  check_params(p, rows, 3, "hc_pre params");
  check_dtype(X, DType::F32, "hc_pre X");
  const int64_t M = X.numel() / flat;
  check_numel(X, M * flat, "hc_pre X");
  check_numel(y, M * p.D, "hc_pre y");
  check_numel(post, M * hc, "hc_pre post");
  check_numel(comb, M * hc * hc, "hc_pre comb");
  const float *Xp = ptr<float>(X), *fn = ptr<float>(p.fn), *base = ptr<float>(p.base), *sc = ptr<float>(p.scale);
  float *yp = ptr<float>(y), *postp = ptr<float>(post), *combp = ptr<float>(comb);
  parallel_for(M, 1, [&](int64_t b, int64_t e) {
    std::vector<float> mix(static_cast<size_t>(rows));
    for (int64_t m = b; m < e; ++m) {
      const float* xf = Xp + m * flat;
      float rs = 1.f / std::sqrt(dot(xf, xf, flat) / float(flat) + p.norm_eps);
      for (int r = 0; r < rows; ++r) mix[size_t(r)] = dot(fn + r * flat, xf, flat) * rs;
      float pre[16];
      for (int h = 0; h < hc; ++h) {
        pre[h] = sigmoid(mix[size_t(h)] * sc[0] + base[h]) + p.hc_eps;
        postp[m * hc + h] = 2.f * sigmoid(mix[size_t(hc + h)] * sc[1] + base[hc + h]);
      }
      float* C = combp + m * hc * hc;
      for (int j = 0; j < hc; ++j) {  // row softmax, + eps
        float mx = -INFINITY;
        for (int k = 0; k < hc; ++k) {
          C[j * hc + k] = mix[size_t(2 * hc + j * hc + k)] * sc[2] + base[2 * hc + j * hc + k];
          mx = std::max(mx, C[j * hc + k]);
        }
        float sum = 0;
        for (int k = 0; k < hc; ++k) sum += (C[j * hc + k] = std::exp(C[j * hc + k] - mx));
        for (int k = 0; k < hc; ++k) C[j * hc + k] = C[j * hc + k] / sum + p.hc_eps;
      }
      auto col_norm = [&] {
        for (int k = 0; k < hc; ++k) {
          float sum = 0;
          for (int j = 0; j < hc; ++j) sum += C[j * hc + k];
          for (int j = 0; j < hc; ++j) C[j * hc + k] /= (sum + p.hc_eps);
        }
      };
      col_norm();
      for (int it = 1; it < p.sinkhorn_iters; ++it) {
        for (int j = 0; j < hc; ++j) {
          float sum = 0;
          for (int k = 0; k < hc; ++k) sum += C[j * hc + k];
          for (int k = 0; k < hc; ++k) C[j * hc + k] /= (sum + p.hc_eps);
        }
        col_norm();
      }
      float* ym = yp + m * p.D;
      for (int64_t d = 0; d < p.D; ++d) {
        float acc = 0;
        for (int h = 0; h < hc; ++h) acc += pre[h] * xf[h * p.D + d];
        ym[d] = acc;
      }
    }
  });
  if (bf16_out) round_bf16_pass(yp, M * p.D);
}

void CpuBackend::hc_post(const Tensor& y, const Tensor& X, const Tensor& post, const Tensor& comb, int hc,
                         const Tensor& Xout, bool bf16_out) {
  auto s = op();
  check_dtype(y, DType::F32, "hc_post y");
  const int64_t M = post.numel() / hc, D = y.numel() / std::max<int64_t>(M, 1);
  check_numel(post, M * hc, "hc_post post");
  check_numel(y, M * D, "hc_post y");
  check_numel(X, M * hc * D, "hc_post X");
  check_numel(comb, M * hc * hc, "hc_post comb");
  check_numel(Xout, M * hc * D, "hc_post Xout");
  DSV4_CHECK(!(X.buf == Xout.buf && X.offset == Xout.offset), "hc_post: Xout must not be X");
  const float *yp = ptr<float>(y), *Xp = ptr<float>(X), *pp = ptr<float>(post), *cp = ptr<float>(comb);
  float* op_ = ptr<float>(Xout);
  parallel_for(M, 4, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const float* C = cp + m * hc * hc;
      for (int k = 0; k < hc; ++k) {
        float* o = op_ + (m * hc + k) * D;
        const float pk = pp[m * hc + k];
        const float* ym = yp + m * D;
        for (int64_t d = 0; d < D; ++d) o[d] = pk * ym[d];
        for (int j = 0; j < hc; ++j) {
          const float c = C[j * hc + k];
          const float* xj = Xp + (m * hc + j) * D;
          for (int64_t d = 0; d < D; ++d) o[d] += c * xj[d];
        }
      }
    }
  });
  if (bf16_out) round_bf16_pass(op_, M * hc * D);
}

void CpuBackend::hc_head(const Tensor& X, const HcParams& p, const Tensor& y) {
  auto s = op();
  const int hc = p.hc;
  const int64_t flat = int64_t(hc) * p.D;
  check_params(p, hc, 1, "hc_head params");
  check_dtype(X, DType::F32, "hc_head X");
  const int64_t M = X.numel() / flat;
  check_numel(X, M * flat, "hc_head X");
  check_numel(y, M * p.D, "hc_head y");
  const float *Xp = ptr<float>(X), *fn = ptr<float>(p.fn), *base = ptr<float>(p.base), *sc = ptr<float>(p.scale);
  float* yp = ptr<float>(y);
  parallel_for(M, 1, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const float* xf = Xp + m * flat;
      float rs = 1.f / std::sqrt(dot(xf, xf, flat) / float(flat) + p.norm_eps);
      float pre[16];
      for (int h = 0; h < hc; ++h) pre[h] = sigmoid(dot(fn + h * flat, xf, flat) * rs * sc[0] + base[h]) + p.hc_eps;
      float* ym = yp + m * p.D;
      for (int64_t d = 0; d < p.D; ++d) {
        float acc = 0;
        for (int h = 0; h < hc; ++h) acc += pre[h] * xf[h * p.D + d];
        ym[d] = acc;
      }
    }
  });
}

}  // namespace cpu
}  // namespace dsv4
