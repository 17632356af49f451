#include "reference_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/quant.h"

namespace dsv4::ref {

namespace {

float sigm(float x) { return 1.f / (1.f + std::exp(-x)); }

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

float weight_value(const Weight& w, int64_t r, int64_t k) {
  switch (w.fmt) {
    case WeightFormat::F32: return load<float>(w.data.data() + (r * w.in + k) * 4);
    case WeightFormat::BF16: return bf16_to_f32(load<uint16_t>(w.data.data() + (r * w.in + k) * 2));
    case WeightFormat::FP8Block: {
      const int64_t si = (r / w.block) * w.scale_cols + k / w.block;
      const float s = w.scale32.empty() ? e8m0_to_f32(w.scale8[size_t(si)]) : w.scale32[size_t(si)];
      return e4m3_to_f32(w.data[size_t(r * w.in + k)]) * s;
    }
    case WeightFormat::FP4Group32: {
      const uint8_t byte = w.data[size_t(r * (w.in / 2) + k / 2)];
      const uint8_t nib = k % 2 ? byte >> 4 : byte & 15;
      return e2m1_to_f32(nib) * e8m0_to_f32(w.scale8[size_t(r * w.scale_cols + k / 32)]);
    }
  }
  return 0;
}

std::vector<float> linear(const std::vector<float>& x, int64_t M, const Weight& w, LinearOpts o, int64_t r0,
                          int64_t n) {
  if (n < 0) n = w.out;
  const int64_t G = o.groups, gout = n / G, in = w.in;
  const bool quant = w.fmt == WeightFormat::FP8Block || w.fmt == WeightFormat::FP4Group32;
  std::vector<float> y(size_t(M * n));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      std::vector<float> xs(x.begin() + m * G * in + g * in, x.begin() + m * G * in + (g + 1) * in);
      if (o.act_fp8 && quant) fp8_roundtrip(xs.data(), in, 128);
      for (int64_t j = 0; j < gout; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < in; ++k) acc += double(xs[size_t(k)]) * weight_value(w, r0 + g * gout + j, k);
        float v = float(acc);
        y[size_t(m * n + g * gout + j)] = o.out_bf16 ? dsv4::round_bf16(v) : v;
      }
    }
  return y;
}

std::vector<float> rms_norm(const std::vector<float>& x, int64_t D, const float* w, float eps) {
  std::vector<float> y(x.size());
  for (size_t r = 0; r < x.size() / size_t(D); ++r) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i) ss += double(x[r * D + i]) * x[r * D + i];
    const double inv = 1.0 / std::sqrt(ss / double(D) + eps);
    for (int64_t i = 0; i < D; ++i) y[r * D + i] = float(x[r * D + i] * inv * (w ? w[i] : 1.f));
  }
  return y;
}

void rope(std::vector<float>& x, int64_t H, int64_t hd, const std::vector<int32_t>& pos,
          const std::vector<double>& freqs, bool inverse) {
  const int64_t half = int64_t(freqs.size()), off = hd - 2 * half;
  for (size_t m = 0; m < pos.size(); ++m)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        // (re + i im) * e^{+-i p w}, exact angle in double
        const double ang = double(pos[m]) * freqs[size_t(i)], c = std::cos(ang), s = inverse ? -std::sin(ang) : std::sin(ang);
        float* v = x.data() + (int64_t(m) * H + h) * hd + off + 2 * i;
        const double re = v[0], im = v[1];
        v[0] = float(re * c - im * s);
        v[1] = float(re * s + im * c);
      }
}

void fp8_rows(std::vector<float>& x, int64_t row, int64_t prefix, int64_t block) {
  for (size_t r = 0; r < x.size() / size_t(row); ++r) fp8_roundtrip(x.data() + r * row, prefix, block);
}

void hadamard_fp4(std::vector<float>& x, int64_t dim) {
  for (size_t r = 0; r < x.size() / size_t(dim); ++r) {
    // Sylvester-order Walsh-Hadamard by definition: H[i][j] = (-1)^popcount(i & j) / sqrt(n).
    std::vector<double> y(size_t(dim), 0.0);
    for (int64_t i = 0; i < dim; ++i)
      for (int64_t j = 0; j < dim; ++j)
        y[size_t(i)] += (__builtin_popcountll(uint64_t(i & j)) % 2 ? -1.0 : 1.0) * x[r * dim + j];
    for (int64_t i = 0; i < dim; ++i) x[r * dim + i] = float(y[size_t(i)] / std::sqrt(double(dim)));
    fp4_roundtrip(x.data() + r * dim, dim, 32);
  }
}

void kv_roundtrip(std::vector<float>& x, const KvCodec& c) {
  std::vector<uint8_t> tmp(size_t(c.bytes()));
  for (size_t r = 0; r < x.size() / size_t(c.dim); ++r) {
    c.encode(x.data() + r * c.dim, tmp.data());
    c.decode(tmp.data(), x.data() + r * c.dim);
  }
}

std::vector<float> embed(const std::vector<int32_t>& tokens, const std::vector<float>& table, int64_t D, int hc) {
  std::vector<float> X;
  for (int32_t t : tokens)
    for (int h = 0; h < hc; ++h) X.insert(X.end(), table.begin() + t * D, table.begin() + (t + 1) * D);
  return X;
}

namespace {

// mix[r] = (fn[r] . z) / sqrt(mean(z^2) + eps) for the flattened streams z of row m.
std::vector<double> hc_mix(const std::vector<float>& X, int64_t m, const Hc& p, int rows) {
  const int64_t flat = int64_t(p.hc) * p.D;
  const float* z = X.data() + m * flat;
  double ss = 0;
  for (int64_t i = 0; i < flat; ++i) ss += double(z[i]) * z[i];
  const double rs = 1.0 / std::sqrt(ss / double(flat) + p.norm_eps);
  std::vector<double> mix(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    double acc = 0;
    for (int64_t i = 0; i < flat; ++i) acc += double(p.fn[size_t(r * flat + i)]) * z[i];
    mix[size_t(r)] = acc * rs;
  }
  return mix;
}

void weighted_streams(const std::vector<float>& X, int64_t m, const Hc& p, const std::vector<double>& pre,
                      std::vector<float>& y) {
  for (int64_t d = 0; d < p.D; ++d) {
    double acc = 0;
    for (int h = 0; h < p.hc; ++h) acc += pre[size_t(h)] * X[size_t((m * p.hc + h) * p.D + d)];
    y[size_t(m * p.D + d)] = float(acc);
  }
}

}  // namespace

void hc_pre(const std::vector<float>& X, int64_t M, const Hc& p, std::vector<float>& y, std::vector<float>& post,
            std::vector<float>& comb) {
  const int hc = p.hc, rows = (2 + hc) * hc;
  y.assign(size_t(M * p.D), 0.f);
  post.assign(size_t(M * hc), 0.f);
  comb.assign(size_t(M * hc * hc), 0.f);
  for (int64_t m = 0; m < M; ++m) {
    auto mix = hc_mix(X, m, p, rows);
    std::vector<double> pre(static_cast<size_t>(hc));
    for (int h = 0; h < hc; ++h) {
      pre[size_t(h)] = sigm(float(mix[size_t(h)] * p.scale[0] + p.base[size_t(h)])) + double(p.hc_eps);
      post[size_t(m * hc + h)] = 2.f * sigm(float(mix[size_t(hc + h)] * p.scale[1] + p.base[size_t(hc + h)]));
    }
    // Sinkhorn (spec §2.3 step 5): row softmax, + eps, column normalize; then (iters - 1) x (rows, columns).
    std::vector<double> C(size_t(hc * hc));
    for (int j = 0; j < hc; ++j) {
      double mx = -INFINITY, s = 0;
      for (int k = 0; k < hc; ++k) {
        C[size_t(j * hc + k)] = mix[size_t(2 * hc + j * hc + k)] * p.scale[2] + p.base[size_t(2 * hc + j * hc + k)];
        mx = std::max(mx, C[size_t(j * hc + k)]);
      }
      for (int k = 0; k < hc; ++k) s += (C[size_t(j * hc + k)] = std::exp(C[size_t(j * hc + k)] - mx));
      for (int k = 0; k < hc; ++k) C[size_t(j * hc + k)] = C[size_t(j * hc + k)] / s + p.hc_eps;
    }
    auto norm = [&](bool rows_) {
      for (int a = 0; a < hc; ++a) {
        double s = 0;
        for (int b = 0; b < hc; ++b) s += rows_ ? C[size_t(a * hc + b)] : C[size_t(b * hc + a)];
        for (int b = 0; b < hc; ++b) (rows_ ? C[size_t(a * hc + b)] : C[size_t(b * hc + a)]) /= (s + p.hc_eps);
      }
    };
    norm(false);
    for (int it = 1; it < p.iters; ++it) {
      norm(true);
      norm(false);
    }
    for (int i = 0; i < hc * hc; ++i) comb[size_t(m * hc * hc + i)] = float(C[size_t(i)]);
    weighted_streams(X, m, p, pre, y);
  }
}

std::vector<float> hc_post(const std::vector<float>& y, const std::vector<float>& X, const std::vector<float>& post,
                           const std::vector<float>& comb, int64_t M, int hc, int64_t D) {
  std::vector<float> out(size_t(M * hc * D));
  for (int64_t m = 0; m < M; ++m)
    for (int k = 0; k < hc; ++k)
      for (int64_t d = 0; d < D; ++d) {
        double acc = double(post[size_t(m * hc + k)]) * y[size_t(m * D + d)];
        for (int j = 0; j < hc; ++j) acc += double(comb[size_t((m * hc + j) * hc + k)]) * X[size_t((m * hc + j) * D + d)];
        out[size_t((m * hc + k) * D + d)] = float(acc);
      }
  return out;
}

std::vector<float> hc_head(const std::vector<float>& X, int64_t M, const Hc& p) {
  std::vector<float> y(size_t(M * p.D));
  for (int64_t m = 0; m < M; ++m) {
    auto mix = hc_mix(X, m, p, p.hc);
    std::vector<double> pre(size_t(p.hc));
    for (int h = 0; h < p.hc; ++h) pre[size_t(h)] = sigm(float(mix[size_t(h)] * p.scale[0] + p.base[size_t(h)])) + double(p.hc_eps);
    weighted_streams(X, m, p, pre, y);
  }
  return y;
}

// ---------------------------------------------------------------------------------------------------- KV

int64_t Batch::M() const {
  int64_t n = 0;
  for (const Item& it : items) n = std::max<int64_t>(n, it.row0 + it.len);
  return n;
}

std::vector<int32_t> Batch::pos() const {
  std::vector<int32_t> p(size_t(M()), 0);
  for (const Item& it : items)
    for (int t = 0; t < it.len; ++t) p[size_t(it.row0 + t)] = it.start + t;
  return p;
}

std::vector<Entry> completed_entries(const Batch& b, int ratio) {
  std::vector<Entry> out;
  for (size_t i = 0; i < b.items.size(); ++i) {
    const Item& it = b.items[i];
    for (int p = it.start; p < it.start + it.len; ++p)
      if ((p + 1) % ratio == 0) out.push_back({it.row0 + p - it.start, int(i), p / ratio, p / ratio * ratio});
  }
  return out;
}

std::vector<std::pair<int, int>> block_ends(const Batch& b, int bt) {
  std::vector<std::pair<int, int>> out;
  for (size_t i = 0; i < b.items.size(); ++i)
    for (int B = (b.items[i].start / bt + 1) * bt; B <= b.items[i].start + b.items[i].len; B += bt)
      out.push_back({int(i), B});
  return out;
}

void window_store(const std::vector<float>& kv, const Batch& b, const std::vector<std::pair<int, int>>& snaps,
                  Arena& a) {
  const KvCodec& c = a.shape.main;
  const int win = a.shape.window, bt = a.shape.block_tokens;
  const int64_t eb = c.bytes();
  for (auto [i, B] : snaps) {
    const Item& it = b.items[size_t(i)];
    for (int t = B - win; t < B; ++t) {
      uint8_t* dst = a.block(it.blocks[size_t(B / bt - 1)], a.layer.tail_off + (t - (B - win)) * eb);
      if (t >= it.start)
        c.encode(kv.data() + (it.row0 + t - it.start) * c.dim, dst);
      else
        std::memcpy(dst, a.slot(it.slot, a.layer.ring_off + (t % win) * eb), size_t(eb));
    }
  }
  for (const Item& it : b.items)
    for (int t = std::max(it.start, it.start + it.len - win); t < it.start + it.len; ++t)
      c.encode(kv.data() + (it.row0 + t - it.start) * c.dim, a.slot(it.slot, a.layer.ring_off + (t % win) * eb));
}

void store_entries(const std::vector<float>& src, const std::vector<Entry>& e, const Batch& b, Arena& a,
                   bool indexer) {
  const KvCodec& c = indexer ? a.shape.index : a.shape.main;
  const int per = a.shape.block_tokens / a.layer.ratio;
  for (size_t x = 0; x < e.size(); ++x) {
    const Item& it = b.items[size_t(e[x].item)];
    c.encode(src.data() + x * size_t(c.dim), a.block(it.blocks[size_t(e[x].index / per)],
                                                      (indexer ? a.layer.idx_off : a.layer.comp_off) +
                                                          (e[x].index % per) * c.bytes()));
  }
}

void arena_copy(Arena& a, const std::vector<int64_t>& copies) {
  for (size_t i = 0; i + 2 < copies.size(); i += 3)
    std::memcpy(a.bytes.data() + copies[i + 1], a.bytes.data() + copies[i], size_t(copies[i + 2]));
}

std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& kv, const std::vector<float>& sink,
                             const std::vector<int32_t>& selected, int64_t ksel, const Batch& b, Arena& a, int64_t H,
                             float scale, bool probs_bf16, bool bidirectional) {
  const KvCodec& c = a.shape.main;
  const int64_t hd = c.dim, win = a.shape.window, ratio = a.layer.ratio;
  const int per = ratio ? a.shape.block_tokens / int(ratio) : 1;
  std::vector<float> out(size_t(b.M() * H * hd), 0.f);
  for (const Item& it : b.items)
    for (int t0 = 0; t0 < it.len; ++t0) {
      const int64_t m = it.row0 + t0, p = it.start + t0;
      std::vector<std::vector<float>> keys;
      auto decode = [&](const uint8_t* src) {
        std::vector<float> v(static_cast<size_t>(hd));
        c.decode(src, v.data());
        keys.push_back(v);
      };
      // Bidirectional: the window ring's positions before the item, then every position of the item.
      const int64_t first = bidirectional ? std::max<int64_t>(0, it.start - win) : std::max<int64_t>(0, p - win + 1);
      const int64_t last = bidirectional ? it.start + it.len - 1 : p;
      for (int64_t t = first; t <= last; ++t) {
        if (t >= it.start)
          keys.emplace_back(kv.begin() + (it.row0 + t - it.start) * hd, kv.begin() + (it.row0 + t - it.start + 1) * hd);
        else
          decode(a.slot(it.slot, a.layer.ring_off + (t % win) * c.bytes()));
      }
      auto entry = [&](int64_t j) { decode(a.block(it.blocks[size_t(j / per)], a.layer.comp_off + (j % per) * c.bytes())); };
      if (ratio == 128)
        for (int64_t j = 0; j < (p + 1) / 128; ++j) entry(j);
      if (ratio == 4)
        for (int64_t x = 0; x < ksel; ++x)
          if (selected[size_t(m * ksel + x)] >= 0) entry(selected[size_t(m * ksel + x)]);
      for (int64_t h = 0; h < H; ++h) {
        const float* qh = q.data() + (m * H + h) * hd;
        std::vector<double> s(keys.size());
        double mx = sink[size_t(h)];
        for (size_t j = 0; j < keys.size(); ++j) {
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += double(qh[i]) * keys[j][size_t(i)];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double den = std::exp(sink[size_t(h)] - mx);
        for (double v : s) den += std::exp(v - mx);
        for (int64_t i = 0; i < hd; ++i) {
          double acc = 0;
          for (size_t j = 0; j < keys.size(); ++j) {
            float pj = float(std::exp(s[j] - mx) / den);
            if (probs_bf16) pj = dsv4::round_bf16(pj);
            acc += double(pj) * keys[j][size_t(i)];
          }
          out[size_t((m * H + h) * hd + i)] = float(acc);
        }
      }
    }
  return out;
}

std::vector<int32_t> index_topk(const std::vector<float>& q, const std::vector<float>& w, const Batch& b, Arena& a,
                                int64_t heads, int64_t dim, int64_t k, bool bf16) {
  const KvCodec& c = a.shape.index;
  const int per = a.shape.block_tokens / 4;
  std::vector<int32_t> out(size_t(b.M() * k), -1);
  for (const Item& it : b.items)
    for (int t0 = 0; t0 < it.len; ++t0) {
      const int64_t m = it.row0 + t0, n = (it.start + t0 + 1) / 4;
      std::vector<std::pair<float, int>> sc;
      for (int64_t j = 0; j < n; ++j) {
        std::vector<float> key(static_cast<size_t>(dim));
        c.decode(a.block(it.blocks[size_t(j / per)], a.layer.idx_off + (j % per) * c.bytes()), key.data());
        double acc = 0;
        for (int64_t h = 0; h < heads; ++h) {
          double d = 0;
          for (int64_t i = 0; i < dim; ++i) d += double(q[size_t((m * heads + h) * dim + i)]) * key[size_t(i)];
          float df = bf16 ? dsv4::round_bf16(float(d)) : float(d);
          acc += double(w[size_t(m * heads + h)]) * std::max(df, 0.f);
        }
        sc.push_back({bf16 ? dsv4::round_bf16(float(acc)) : float(acc), int(j)});
      }
      std::stable_sort(sc.begin(), sc.end(), [](auto& x, auto& y) { return x.first > y.first; });  // ties keep j order
      for (int64_t x = 0; x < std::min<int64_t>(k, n); ++x) out[size_t(m * k + x)] = sc[size_t(x)].second;
    }
  return out;
}

std::vector<float> compress(int ratio, int coff, int d, bool indexer, const std::vector<float>& u,
                            const std::vector<float>& g, const std::vector<float>& ape, const Batch& b,
                            const std::vector<Entry>& entries, const std::vector<std::pair<int, int>>& snaps,
                            Arena& a) {
  const int w = coff * d, ntok = coff * ratio;
  const int64_t rec_bytes = int64_t(2) * w * 4, roff = indexer ? a.layer.iring_off : a.layer.cring_off;
  // Token t's record [u | g + ape], from this step's rows or the sequence's ring.
  auto record = [&](const Item& it, int t) {
    std::vector<float> r(size_t(2 * w));
    if (t >= it.start) {
      const int row = it.row0 + t - it.start;
      for (int c = 0; c < w; ++c) {
        r[size_t(c)] = u[size_t(row * w + c)];
        r[size_t(w + c)] = g[size_t(row * w + c)] + ape[size_t((t % ratio) * w + c)];
      }
    } else {
      std::memcpy(r.data(), a.slot(it.slot, roff + (t % ntok) * rec_bytes), size_t(rec_bytes));
    }
    return r;
  };
  std::vector<float> out(entries.size() * size_t(d));
  for (size_t e = 0; e < entries.size(); ++e) {
    const Item& it = b.items[size_t(entries[e].item)];
    const int j = entries[e].index, first = (j + 1) * ratio - ntok;
    for (int ch = 0; ch < d; ++ch) {
      std::vector<std::pair<double, double>> lv;  // (logit, value) of the present tokens
      for (int q = 0; q < ntok; ++q) {
        if (first + q < 0) continue;
        auto r = record(it, first + q);
        const int col = coff == 2 && q >= ratio ? d + ch : ch;
        lv.push_back({r[size_t(w + col)], r[size_t(col)]});
      }
      double mx = -INFINITY, den = 0, acc = 0;
      for (auto& [l, v] : lv) mx = std::max(mx, l);
      for (auto& [l, v] : lv) {
        den += std::exp(l - mx);
        acc += std::exp(l - mx) * v;
      }
      out[e * size_t(d) + size_t(ch)] = float(acc / den);
    }
  }
  if (ratio == 4 && a.shape.with_tail) {
    const int bt = a.shape.block_tokens;
    for (auto [i, B] : snaps) {
      const Item& it = b.items[size_t(i)];
      for (int t = B - 4; t < B; ++t) {
        auto r = record(it, t);
        std::memcpy(a.block(it.blocks[size_t(B / bt - 1)], (indexer ? a.layer.istate_off : a.layer.cstate_off) +
                                                               (t - (B - 4)) * rec_bytes),
                    r.data(), size_t(rec_bytes));
      }
    }
  }
  for (const Item& it : b.items)
    for (int t = std::max(it.start, it.start + it.len - ntok); t < it.start + it.len; ++t) {
      auto r = record(it, t);
      std::memcpy(a.slot(it.slot, roff + (t % ntok) * rec_bytes), r.data(), size_t(rec_bytes));
    }
  return out;
}

// ---------------------------------------------------------------------------------------------------- MoE

void route(const std::vector<float>& logits, int64_t M, int64_t E, int k, int score_func, const float* bias,
           const int32_t* tid2eid, const int32_t* tokens, bool normalize, float route_scale,
           std::vector<int32_t>& experts, std::vector<float>& weights) {
  experts.assign(size_t(M * k), -1);
  weights.assign(size_t(M * k), 0.f);
  for (int64_t m = 0; m < M; ++m) {
    const float* l = logits.data() + m * E;
    std::vector<float> score(static_cast<size_t>(E));
    if (score_func == 2) {
      double mx = *std::max_element(l, l + E), s = 0;
      for (int64_t j = 0; j < E; ++j) s += std::exp(l[j] - mx);
      for (int64_t j = 0; j < E; ++j) score[size_t(j)] = float(std::exp(l[j] - mx) / s);
    } else {
      for (int64_t j = 0; j < E; ++j)  // sigmoid, or sqrt(softplus) with softplus(x) = x above 20
        score[size_t(j)] = score_func == 1 ? sigm(l[j]) : std::sqrt(l[j] > 20.f ? l[j] : std::log1p(std::exp(l[j])));
    }
    int32_t* ex = experts.data() + m * k;
    if (tid2eid) {
      for (int j = 0; j < k; ++j) ex[j] = tid2eid[int64_t(tokens[m]) * k + j];
    } else {
      std::vector<std::pair<float, int>> sel;
      for (int64_t j = 0; j < E; ++j) sel.push_back({score[size_t(j)] + (bias ? bias[j] : 0.f), int(j)});
      std::stable_sort(sel.begin(), sel.end(), [](auto& x, auto& y) { return x.first > y.first; });
      for (int j = 0; j < k; ++j) ex[j] = sel[size_t(j)].second;
    }
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += score[size_t(ex[j])];
    // Softmax scores are a distribution already: not renormalized over the chosen k (the old engine's rule).
    for (int j = 0; j < k; ++j)
      weights[size_t(m * k + j)] =
          float((normalize && score_func != 2 ? score[size_t(ex[j])] / sum : score[size_t(ex[j])]) * route_scale);
  }
}

namespace {

std::vector<float> expert(const Expert& e, const std::vector<float>& x, int64_t inter, float limit, float weight,
                          LinearOpts lin, bool round_hidden) {
  auto gate = linear(x, 1, e.w1, lin), up = linear(x, 1, e.w3, lin);
  std::vector<float> h(static_cast<size_t>(inter));
  for (int64_t i = 0; i < inter; ++i) {
    float gv = gate[size_t(i)], uv = up[size_t(i)];
    if (limit > 0) {
      uv = std::clamp(uv, -limit, limit);
      gv = std::min(gv, limit);
    }
    h[size_t(i)] = float(double(gv) / (1.0 + std::exp(-double(gv))) * uv * weight);
    if (round_hidden) h[size_t(i)] = dsv4::round_bf16(h[size_t(i)]);
  }
  return linear(h, 1, e.w2, lin);
}

}  // namespace

std::vector<float> moe(const std::vector<float>& x, int64_t M, int64_t D, const std::vector<int32_t>& experts,
                       const std::vector<float>& weights, int64_t K, const std::vector<Expert>& routed,
                       const Expert& shared, int64_t inter, float limit, LinearOpts lin, bool round_hidden,
                       bool round_out) {
  std::vector<float> out(size_t(M * D));
  for (int64_t m = 0; m < M; ++m) {
    std::vector<float> xm(x.begin() + m * D, x.begin() + (m + 1) * D);
    std::vector<double> acc(size_t(D), 0.0);
    for (int64_t j = 0; j < K; ++j) {
      auto y = expert(routed[size_t(experts[size_t(m * K + j)])], xm, inter, limit, weights[size_t(m * K + j)], lin,
                      round_hidden);
      for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += y[size_t(d)];
    }
    auto ys = expert(shared, xm, inter, limit, 1.f, lin, round_hidden);
    for (int64_t d = 0; d < D; ++d) {
      float v = float(acc[size_t(d)] + ys[size_t(d)]);
      out[size_t(m * D + d)] = round_out ? dsv4::round_bf16(v) : v;
    }
  }
  return out;
}

}  // namespace dsv4::ref
