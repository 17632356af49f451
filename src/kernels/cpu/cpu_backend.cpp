// CPU implementation of the Backend: OpenMP across rows/outputs, loops written for auto-vectorization.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "kernels/backend.h"
#include "kernels/quant.h"

namespace dsv4 {

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  void linear(const float* x, int64_t M, const LinearWeight& w, float* y, LinearOpts o) override {
    const int64_t K = w.in, N = w.out;
    std::vector<float> xq;
    if (o.act_fp8 && w.quantized()) {
      xq.assign(x, x + M * K);
      for (int64_t m = 0; m < M; ++m) fp8_roundtrip(xq.data() + m * K, K, 128);
      x = xq.data();
    }
    // Each task de-quantizes a few weight rows once and reuses them for all M input rows.
    constexpr int64_t R = 4;
    parallel_for((N + R - 1) / R, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, K * std::max<int64_t>(M, 1) / 256)),
                 [&](int64_t b, int64_t e) {
                   std::vector<float> wrow(size_t(R * K));
                   for (int64_t t = b; t < e; ++t) {
                     int64_t n0 = t * R, nr = std::min(R, N - n0);
                     for (int64_t r = 0; r < nr; ++r) w.dequant_row(n0 + r, wrow.data() + r * K);
                     for (int64_t m = 0; m < M; ++m) {
                       const float* xm = x + m * K;
                       for (int64_t r = 0; r < nr; ++r) y[m * N + n0 + r] = dot(xm, wrow.data() + r * K, K);
                     }
                   }
                 });
    if (o.out_bf16) round_bf16(y, M * N);
  }

  void rms_norm(const float* x, int64_t M, int64_t D, const float* w, float eps, float* y) override {
    parallel_for(M, 16, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const float* xm = x + m * D;
        float* ym = y + m * D;
        float ss = dot(xm, xm, D);
        float r = 1.f / std::sqrt(ss / float(D) + eps);
        if (w)
          for (int64_t i = 0; i < D; ++i) ym[i] = xm[i] * r * w[i];
        else
          for (int64_t i = 0; i < D; ++i) ym[i] = xm[i] * r;
      }
    });
  }

  void rope(float* x, int64_t M, int64_t H, int64_t hd, const int64_t* pos, const RopeTable& t,
            bool inverse) override {
    const int64_t half = int64_t(t.freqs.size()), off = hd - 2 * half;
    parallel_for(M, 8, [&](int64_t b, int64_t e) {
      std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
      for (int64_t m = b; m < e; ++m) {
        for (int64_t i = 0; i < half; ++i) {
          double ang = double(pos[m]) * t.freqs[size_t(i)];
          c[size_t(i)] = float(std::cos(ang));
          s[size_t(i)] = float(inverse ? -std::sin(ang) : std::sin(ang));
        }
        for (int64_t h = 0; h < H; ++h) {
          float* v = x + (m * H + h) * hd + off;
          for (int64_t i = 0; i < half; ++i) {
            float re = v[2 * i], im = v[2 * i + 1];
            v[2 * i] = re * c[size_t(i)] - im * s[size_t(i)];
            v[2 * i + 1] = re * s[size_t(i)] + im * c[size_t(i)];
          }
        }
      }
    });
  }

  void hc_pre(const float* X, int64_t M, const HcParams& p, float* y, float* post, float* comb) override {
    const int hc = p.hc;
    const int64_t flat = int64_t(hc) * p.D;
    const int rows = (2 + hc) * hc;
    parallel_for(M, 1, [&](int64_t b, int64_t e) {
      std::vector<float> mix(static_cast<size_t>(rows));
      for (int64_t m = b; m < e; ++m) {
        const float* xf = X + m * flat;
        float rs = 1.f / std::sqrt(dot(xf, xf, flat) / float(flat) + p.norm_eps);
        for (int r = 0; r < rows; ++r) mix[size_t(r)] = dot(p.fn + r * flat, xf, flat) * rs;
        float pre[16];
        for (int h = 0; h < hc; ++h) {
          pre[h] = sigmoid(mix[size_t(h)] * p.scale[0] + p.base[h]) + p.hc_eps;
          post[m * hc + h] = 2.f * sigmoid(mix[size_t(hc + h)] * p.scale[1] + p.base[hc + h]);
        }
        float* C = comb + m * hc * hc;
        for (int j = 0; j < hc; ++j) {  // row softmax, + eps
          float mx = -INFINITY;
          for (int k = 0; k < hc; ++k) {
            C[j * hc + k] = mix[size_t(2 * hc + j * hc + k)] * p.scale[2] + p.base[2 * hc + j * hc + k];
            mx = std::max(mx, C[j * hc + k]);
          }
          float s = 0;
          for (int k = 0; k < hc; ++k) s += (C[j * hc + k] = std::exp(C[j * hc + k] - mx));
          for (int k = 0; k < hc; ++k) C[j * hc + k] = C[j * hc + k] / s + p.hc_eps;
        }
        auto col_norm = [&] {
          for (int k = 0; k < hc; ++k) {
            float s = 0;
            for (int j = 0; j < hc; ++j) s += C[j * hc + k];
            for (int j = 0; j < hc; ++j) C[j * hc + k] /= (s + p.hc_eps);
          }
        };
        col_norm();
        for (int it = 1; it < p.sinkhorn_iters; ++it) {
          for (int j = 0; j < hc; ++j) {
            float s = 0;
            for (int k = 0; k < hc; ++k) s += C[j * hc + k];
            for (int k = 0; k < hc; ++k) C[j * hc + k] /= (s + p.hc_eps);
          }
          col_norm();
        }
        float* ym = y + m * p.D;
        for (int64_t d = 0; d < p.D; ++d) {
          float acc = 0;
          for (int h = 0; h < hc; ++h) acc += pre[h] * xf[h * p.D + d];
          ym[d] = acc;
        }
      }
    });
  }

  void hc_post(const float* y, const float* X, const float* post, const float* comb, int64_t M, int hc, int64_t D,
               float* Xout) override {
    parallel_for(M, 4, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const float* C = comb + m * hc * hc;
        for (int k = 0; k < hc; ++k) {
          float* o = Xout + (m * hc + k) * D;
          const float pk = post[m * hc + k];
          const float* ym = y + m * D;
          for (int64_t d = 0; d < D; ++d) o[d] = pk * ym[d];
          for (int j = 0; j < hc; ++j) {
            const float c = C[j * hc + k];
            const float* xj = X + (m * hc + j) * D;
            for (int64_t d = 0; d < D; ++d) o[d] += c * xj[d];
          }
        }
      }
    });
  }

  void hc_head(const float* X, int64_t M, const HcParams& p, float* y) override {
    const int hc = p.hc;
    const int64_t flat = int64_t(hc) * p.D;
    parallel_for(M, 1, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const float* xf = X + m * flat;
        float rs = 1.f / std::sqrt(dot(xf, xf, flat) / float(flat) + p.norm_eps);
        float pre[16];
        for (int h = 0; h < hc; ++h) pre[h] = sigmoid(dot(p.fn + h * flat, xf, flat) * rs * p.scale[0] + p.base[h]) + p.hc_eps;
        float* ym = y + m * p.D;
        for (int64_t d = 0; d < p.D; ++d) {
          float acc = 0;
          for (int h = 0; h < hc; ++h) acc += pre[h] * xf[h * p.D + d];
          ym[d] = acc;
        }
      }
    });
  }

  void attention(const AttentionArgs& a) override {
    const int64_t hd = a.hd;
    parallel_for(a.M * a.H, 1, [&](int64_t b, int64_t e) {
      std::vector<float> s;
      for (int64_t mh = b; mh < e; ++mh) {
        const int64_t m = mh / a.H, h = mh % a.H;
        const auto& keys = (*a.keys)[size_t(m)];
        const float* q = a.q + mh * hd;
        float* o = a.out + mh * hd;
        const size_t n = keys.size();
        s.resize(n);
        float mx = a.sink[h];
        for (size_t j = 0; j < n; ++j) {
          s[j] = dot(q, keys[j], hd) * a.scale;
          mx = std::max(mx, s[j]);
        }
        float den = std::exp(a.sink[h] - mx);
        for (size_t j = 0; j < n; ++j) den += (s[j] = std::exp(s[j] - mx));
        const float inv = 1.f / den;
        std::fill(o, o + hd, 0.f);
        for (size_t j = 0; j < n; ++j) {
          float pj = s[j] * inv;
          if (a.probs_bf16) pj = dsv4::round_bf16(pj);
          const float* k = keys[j];
#pragma omp simd
          for (int64_t d = 0; d < hd; ++d) o[d] += pj * k[d];
        }
      }
    });
  }

  void index_scores(const float* q, const float* w, int64_t heads, int64_t dim, const float* keys, int64_t n_keys,
                    float* scores, bool bf16) override {
    parallel_for(n_keys, 64, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        const float* k = keys + j * dim;
        float acc = 0;
        for (int64_t h = 0; h < heads; ++h) {
          float d = dot(q + h * dim, k, dim);
          if (bf16) d = dsv4::round_bf16(d);
          acc += w[h] * std::max(d, 0.f);
        }
        scores[j] = bf16 ? dsv4::round_bf16(acc) : acc;
      }
    });
  }

  int64_t compress(const CompressArgs& a) override {
    const int r = a.ratio, w = a.coff * a.d, d = a.d;
    const int base_slot = a.coff == 2 ? r : 0;
    int64_t n_out = 0;
    for (int64_t t = 0; t < a.T; ++t) {
      const int64_t p = a.start + t;
      const int i = int(p % r);
      float* kv = a.state_kv + (base_slot + i) * w;
      float* sc = a.state_score + (base_slot + i) * w;
      for (int c = 0; c < w; ++c) {
        kv[c] = a.u[t * w + c];
        sc[c] = a.g[t * w + c] + a.ape[i * w + c];
      }
      if ((p + 1) % r) continue;
      // Pool: per channel softmax over the window's slots (overlap: A-halves of the previous window's
      // slots + B-halves of the current window's slots).
      float* o = a.out + n_out * d;
      parallel_for(d, 64, [&](int64_t cb, int64_t ce) {
        for (int64_t ch = cb; ch < ce; ++ch) {
          float mx = -INFINITY;
          const int nslots = a.coff * r;
          auto at = [&](int s, const float* buf) {
            int64_t col = a.coff == 2 ? (s < r ? ch : d + ch) : ch;
            return buf[s * w + col];
          };
          for (int s = 0; s < nslots; ++s) mx = std::max(mx, at(s, a.state_score));
          float den = 0, acc = 0;
          for (int s = 0; s < nslots; ++s) {
            float e = std::exp(at(s, a.state_score) - mx);
            den += e;
            acc += e * at(s, a.state_kv);
          }
          o[ch] = acc / den;
        }
      });
      ++n_out;
      if (a.coff == 2) {  // the current window becomes the previous one
        std::memcpy(a.state_kv, a.state_kv + r * w, sizeof(float) * size_t(r * w));
        std::memcpy(a.state_score, a.state_score + r * w, sizeof(float) * size_t(r * w));
      }
    }
    return n_out;
  }

  void route(const RouteArgs& a) override {
    parallel_for(a.M, 16, [&](int64_t b, int64_t e) {
      std::vector<float> score(size_t(a.E)), biased(size_t(a.E));
      for (int64_t m = b; m < e; ++m) {
        const float* lg = a.logits + m * a.E;
        if (a.score_func == 2) {
          float mx = *std::max_element(lg, lg + a.E), s = 0;
          for (int j = 0; j < a.E; ++j) s += (score[size_t(j)] = std::exp(lg[j] - mx));
          for (int j = 0; j < a.E; ++j) score[size_t(j)] /= s;
        } else {
          for (int j = 0; j < a.E; ++j) {
            float x = lg[j];
            score[size_t(j)] = a.score_func == 1 ? sigmoid(x)
                                                 : std::sqrt(x > 20.f ? x : std::log1p(std::exp(x)));
          }
        }
        int32_t* ex = a.experts + m * a.k;
        if (a.tid2eid) {
          for (int j = 0; j < a.k; ++j) ex[j] = a.tid2eid[int64_t(a.tokens[m]) * a.k + j];
        } else {
          for (int j = 0; j < a.E; ++j) biased[size_t(j)] = score[size_t(j)] + (a.bias ? a.bias[j] : 0.f);
          topk(biased.data(), a.E, a.k, ex);
        }
        float* wt = a.weights + m * a.k;
        float sum = 0;
        for (int j = 0; j < a.k; ++j) sum += (wt[j] = score[size_t(ex[j])]);
        for (int j = 0; j < a.k; ++j) wt[j] = (a.normalize && a.score_func != 2 ? wt[j] / sum : wt[j]) * a.route_scale;
      }
    });
  }

  void topk(const float* scores, int64_t n, int64_t k, int32_t* out) override {
    k = std::min(k, n);
    thread_local std::vector<int32_t> idx;
    idx.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = int32_t(i);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t x, int32_t y) {
      return scores[x] > scores[y] || (scores[x] == scores[y] && x < y);
    });
    std::copy(idx.begin(), idx.begin() + k, out);
  }

  void swiglu(const float* gate, const float* up, int64_t M, int64_t N, float limit, const float* weight,
              float* h) override {
    parallel_for(M, 16, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        const float wm = weight ? weight[m] : 1.f;
        for (int64_t i = 0; i < N; ++i) {
          float g = gate[m * N + i], u = up[m * N + i];
          if (limit > 0) {
            u = std::clamp(u, -limit, limit);
            g = std::min(g, limit);
          }
          h[m * N + i] = g / (1.f + std::exp(-g)) * u * wm;
        }
      }
    });
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace dsv4
