// Shape-guided RoIAlign (DSG, Sec. 3.4, Eq. 1-2): the CPU kernels (parallel over RoIs or channel blocks with
// at::parallel_for). Schemas and argument checks: sg_roi_align.cpp; sampling rules: sg_roi_align.h.
//
//   out[k, c, h, w] = sum_i f_c(a_i, b_i) * (1 + p_k(c_i, d_i)) / N                                  (Eq. 2)
//   d out[k, c, h, w] / d input[n, c, y, x] = sum_i bilinear_weight_i(y, x) * (1 + p_i) / N
//   d out[k, c, h, w] / d p_i               = f_c(a_i, b_i) / N, spread onto probs[k] by p's bilinear weights.
#include "sg_roi_align/sg_roi_align.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

namespace instseg {
namespace sg_roi_align {

namespace {

// Batch image of every RoI; throws for an index outside [0, N) (or NaN) before any kernel reads memory.
template <typename T>
std::vector<int64_t> batch_indices(const T* rois, int64_t K, int64_t num_images) {
  std::vector<int64_t> b(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) {
    const T v = rois[k * 5];
    TORCH_CHECK(v >= T(0) && v < static_cast<T>(num_images), "sg_roi_align: rois[", k, ", 0] = ", v,
                " is not a batch index in [0, ", num_images, ")");
    b[static_cast<size_t>(k)] = static_cast<int64_t>(v);
  }
  return b;
}

// One sample point of a RoI: its four feature-map neighbours (offsets in a (H, W) plane), their bilinear
// weights, and Eq. 2's factor (1 + p) at the point. The table of a RoI lists the samples bin by bin
// (row-major bins, then row-major samples inside the bin); it is shared by all channels.
template <typename T>
struct Sample {
  int64_t pos[4];
  T w[4];
  T scale;  // 1 + p(c, d)
};

struct Shape {
  int64_t height, width;  // feature map
  int64_t pooled_height, pooled_width;
  int64_t probs_height, probs_width;  // Hp, Wp
  int64_t samples_per_bin(int64_t grid_h, int64_t grid_w) const { return std::max<int64_t>(grid_h * grid_w, 0); }
};

template <typename T>
int64_t table_size(const RoiGeometry<T>& g, const Shape& s) {
  return s.pooled_height * s.pooled_width * s.samples_per_bin(g.grid_h, g.grid_w);
}

// Fill the sample table of one RoI. Both interpolations are separable, so the per-axis factors are computed
// once per row / column of samples and multiplied here.
template <typename T>
void build_table(const RoiGeometry<T>& g, const T* map, const Shape& s, Sample<T>* table) {
  if (g.grid_h <= 0 || g.grid_w <= 0) {
    return;
  }
  const int64_t rows = s.pooled_height * g.grid_h, cols = s.pooled_width * g.grid_w;
  std::vector<Lerp<T>> fy(rows), fx(cols), py(rows), px(cols);
  for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const int64_t r = ph * g.grid_h + iy;
      fy[r] = feature_lerp<T>(sample_coord<T>(g.start_h, g.bin_h, ph, iy, g.grid_h), s.height);
      py[r] = probs_lerp<T>(ph, iy, g.grid_h, s.pooled_height, s.probs_height);
    }
  }
  for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      const int64_t c = pw * g.grid_w + ix;
      fx[c] = feature_lerp<T>(sample_coord<T>(g.start_w, g.bin_w, pw, ix, g.grid_w), s.width);
      px[c] = probs_lerp<T>(pw, ix, g.grid_w, s.pooled_width, s.probs_width);
    }
  }
  Sample<T>* e = table;
  for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
    for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        const Lerp<T>& y = fy[ph * g.grid_h + iy];
        const Lerp<T>& yp = py[ph * g.grid_h + iy];
        for (int64_t ix = 0; ix < g.grid_w; ++ix, ++e) {
          const Lerp<T>& x = fx[pw * g.grid_w + ix];
          e->pos[0] = y.lo * s.width + x.lo;
          e->pos[1] = y.lo * s.width + x.hi;
          e->pos[2] = y.hi * s.width + x.lo;
          e->pos[3] = y.hi * s.width + x.hi;
          e->w[0] = y.w_lo * x.w_lo;
          e->w[1] = y.w_lo * x.w_hi;
          e->w[2] = y.w_hi * x.w_lo;
          e->w[3] = y.w_hi * x.w_hi;
          e->scale = T(1) + probs_value<T>(map, s.probs_width, yp, px[pw * g.grid_w + ix]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Two loop layouts, one arithmetic. Per channel both compute RoIAlign's interpolated value
// w1 f1 + w2 f2 + w3 f3 + w4 f4 at every sample, weight it by (1 + p) and average over the bin's samples.
//  * channels-last: the features are read as (N, H, W, C), so a sample's four neighbours are four contiguous
//    C-vectors and every per-sample update is a SIMD loop over channels. It needs a transposing copy of the
//    whole feature map (and, backward, of its gradient) unless the input is channels-last already.
//  * planar: the features are read in place as (N, C, H, W) planes, channel by channel (RoIAlign's order).
// The copy pays off unless the RoIs sample only a small part of the map (a few small RoIs on a large FPN
// level): see use_channels_last.
// ---------------------------------------------------------------------------------------------------------

// Whether to run the channels-last loops: always when the input is channels-last already (no copy), else
// when the RoIs take at least `min_samples_per_pixel` samples (per channel, all RoIs together) per pixel of
// the feature map (N * H * W). Measured crossovers (x86, 2 cores, C = 256, 7 x 7 bins, FPN-sized maps):
// about 1 sample per pixel forward (one transposing copy of the input) and about 2 backward (the input is
// transposed, and the input gradient built channels-last and transposed back). Far below, e.g. a few small
// RoIs on a large FPN level, the planar loops are several times faster; far above, e.g. 512 RoIs on a
// stride-8 map, the channels-last ones are.
constexpr int64_t kForwardMinSamplesPerPixel = 1;
constexpr int64_t kBackwardMinSamplesPerPixel = 2;

bool use_channels_last(const at::Tensor& input, int64_t total_samples, int64_t min_samples_per_pixel) {
  if (input.size(1) > 1 && input.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    return true;
  }
  return total_samples >= min_samples_per_pixel * input.size(0) * input.size(2) * input.size(3);
}

// (N, C, H, W) -> a contiguous (N, H, W, C) tensor (no copy when the input is already channels-last).
at::Tensor channels_last_storage(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1});
}

// a[c] += s * (w1 f1[c] + w2 f2[c] + w3 f3[c] + w4 f4[c]) for c in [0, n): one sample's term of Eq. 2.
template <typename T>
inline void add_sample(T* __restrict__ a, const T* __restrict__ f1, const T* __restrict__ f2, const T* __restrict__ f3,
                       const T* __restrict__ f4, const Sample<T>& e, int64_t n) {
  const T w1 = e.w[0], w2 = e.w[1], w3 = e.w[2], w4 = e.w[3], s = e.scale;
  for (int64_t c = 0; c < n; ++c) {
    a[c] += s * (w1 * f1[c] + w2 * f2[c] + w3 * f3[c] + w4 * f4[c]);
  }
}

// dst[c] += coef * g[c] for c in [0, n).
template <typename T>
inline void axpy(T* __restrict__ dst, const T* __restrict__ g, T coef, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    dst[c] += coef * g[c];
  }
}

// sum_c g[c] * (w1 f1[c] + w2 f2[c] + w3 f3[c] + w4 f4[c]): the channel sum of grad * f(a_i, b_i). Several
// partial sums so that the reduction vectorises without reassociation flags.
template <typename T>
inline T dot_sample(const T* __restrict__ g, const T* __restrict__ f1, const T* __restrict__ f2,
                    const T* __restrict__ f3, const T* __restrict__ f4, const Sample<T>& e, int64_t n) {
  constexpr int64_t kLanes = 8;
  const T w1 = e.w[0], w2 = e.w[1], w3 = e.w[2], w4 = e.w[3];
  T part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      part[l] += g[c + l] * (w1 * f1[c + l] + w2 * f2[c + l] + w3 * f3[c + l] + w4 * f4[c + l]);
    }
  }
  T sum = 0;
  for (; c < n; ++c) {
    sum += g[c] * (w1 * f1[c] + w2 * f2[c] + w3 * f3[c] + w4 * f4[c]);
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    sum += part[l];
  }
  return sum;
}

// f(a_i, b_i) in one (H, W) plane.
template <typename T>
inline T interpolate(const T* plane, const Sample<T>& e) {
  return e.w[0] * plane[e.pos[0]] + e.w[1] * plane[e.pos[1]] + e.w[2] * plane[e.pos[2]] + e.w[3] * plane[e.pos[3]];
}

// A sample beyond RoIAlign's [-1, size] border: f = 0 there, so it contributes no gradient.
template <typename T>
inline bool outside(const Sample<T>& e) {
  return e.w[0] == T(0) && e.w[1] == T(0) && e.w[2] == T(0) && e.w[3] == T(0);
}

// Everything a kernel needs to know about the problem; `geo` and `batch` have one entry per RoI.
template <typename T>
struct Problem {
  Shape s;
  int64_t num_images, K, C, bins, plane, map_size;
  std::vector<RoiGeometry<T>> geo;
  std::vector<int64_t> batch;
  int64_t total_samples;  // sum over RoIs of bins * N (per channel)

  Problem(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs, int64_t pooled_height,
          int64_t pooled_width, T spatial_scale, int64_t sampling_ratio, bool aligned)
      : s{input.size(2), input.size(3), pooled_height, pooled_width, probs.size(1), probs.size(2)},
        num_images(input.size(0)),
        K(rois.size(0)),
        C(input.size(1)),
        bins(pooled_height * pooled_width),
        plane(input.size(2) * input.size(3)),
        map_size(probs.size(1) * probs.size(2)),
        total_samples(0) {
    const T* r = rois.data_ptr<T>();
    batch = batch_indices(r, K, input.size(0));
    geo.resize(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) {
      geo[k] = roi_geometry<T>(r + k * 5, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
      total_samples += table_size(geo[k], s);
    }
  }
  int64_t samples_per_bin(int64_t k) const { return s.samples_per_bin(geo[k].grid_h, geo[k].grid_w); }
  // Work of one RoI on all channels (about 4 multiply-adds per sample and channel), for grain_for.
  int64_t cost_per_roi() const { return 4 * C * std::max<int64_t>(1, total_samples / std::max<int64_t>(1, K)); }
};

// ----------------------------------------------------------------------------------------------- forward
// One RoI per task: its sample table is built once and shared by all channels.

// in: (N, H, W, C). The RoI's bins are accumulated channels-last in `acc`, then transposed into out[k].
template <typename T>
void forward_channels_last(const Problem<T>& P, const T* in, const T* probs, T* out) {
  const int64_t C = P.C, bins = P.bins;
  at::parallel_for(0, P.K, grain_for(P.cost_per_roi()), [&](int64_t begin, int64_t end) {
    std::vector<Sample<T>> table;
    std::vector<T> acc;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t n = P.samples_per_bin(k);
      table.resize(static_cast<size_t>(bins * n));
      build_table<T>(P.geo[k], probs + k * P.map_size, P.s, table.data());
      acc.assign(static_cast<size_t>(bins * C), T(0));
      const T* f = in + P.batch[k] * P.plane * C;
      const Sample<T>* e = table.data();
      for (int64_t bin = 0; bin < bins; ++bin) {
        T* a = acc.data() + bin * C;
        for (int64_t i = 0; i < n; ++i, ++e) {  // sum_i f(a_i, b_i) * (1 + p(c_i, d_i))
          add_sample(a, f + e->pos[0] * C, f + e->pos[1] * C, f + e->pos[2] * C, f + e->pos[3] * C, *e, C);
        }
      }
      T* o = out + k * C * bins;
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t bin = 0; bin < bins; ++bin) {
          o[c * bins + bin] = acc[bin * C + c] / P.geo[k].count;  // Eq. 2's mean over the N samples
        }
      }
    }
  });
}

// in: (N, C, H, W).
template <typename T>
void forward_planar(const Problem<T>& P, const T* in, const T* probs, T* out) {
  const int64_t C = P.C, bins = P.bins;
  at::parallel_for(0, P.K, grain_for(P.cost_per_roi()), [&](int64_t begin, int64_t end) {
    std::vector<Sample<T>> table;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t n = P.samples_per_bin(k);
      table.resize(static_cast<size_t>(bins * n));
      build_table<T>(P.geo[k], probs + k * P.map_size, P.s, table.data());
      for (int64_t c = 0; c < C; ++c) {
        const T* f = in + (P.batch[k] * C + c) * P.plane;
        T* o = out + (k * C + c) * bins;
        const Sample<T>* e = table.data();
        for (int64_t bin = 0; bin < bins; ++bin) {
          T acc = 0;
          for (int64_t i = 0; i < n; ++i, ++e) {
            acc += e->scale * interpolate(f, *e);  // f(a_i, b_i) * (1 + p(c_i, d_i))
          }
          o[bin] = acc / P.geo[k].count;  // Eq. 2's mean over the N samples
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------- backward
// RoIs are processed in groups [first, last) whose sample tables (table + offset[k - first]) fit a budget.
//
// d input: d out[k, c, bin] / d input[n, c, y, x] = sum over the bin's samples of w_j(y, x) * (1 + p_i) / N.
// RoIs overlap, so the threads split the channels (blocks of whole cache lines) and need no atomics.
// d probs: d out[k, c, bin] / d p_i = f_c(a_i, b_i) / N, summed over channels with the output gradient and
// spread onto probs[k] by p's bilinear weights (Eq. 1). Each RoI owns its map: RoIs run in parallel.
constexpr int64_t kChannelBlock = 16;

template <typename T>
struct Group {
  int64_t first, last;
  const Sample<T>* table;
  const int64_t* offset;
  const Sample<T>* of(int64_t k) const { return table + offset[k - first]; }
  int64_t samples() const { return offset[last - first]; }
};

// body(c0, c1, k, n) for every RoI k of the group and channel range [c0, c1) (n: the RoI's samples per bin). The
// work is split into (image, block of kChannelBlock channels) tasks, a thread taking a contiguous range of them:
// with several images the threads mostly take different images (disjoint gradient planes, and each RoI's samples
// visited by one thread), with one image they split its channels. No two threads write one gradient element, and
// an image's RoIs are visited in ascending index, so the sums run in one order whatever the number of threads.
template <typename T, typename Body>
void for_each_channel_block(const Problem<T>& P, const Group<T>& G, const Body& body) {
  const int64_t blocks = (P.C + kChannelBlock - 1) / kChannelBlock, images = P.num_images;
  std::vector<int64_t> start(static_cast<size_t>(images) + 1, 0), order(static_cast<size_t>(G.last - G.first));
  for (int64_t k = G.first; k < G.last; ++k) {  // the group's RoIs by image (CSR), ascending within an image
    ++start[P.batch[k] + 1];
  }
  for (int64_t n = 0; n < images; ++n) {
    start[n + 1] += start[n];
  }
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t k = G.first; k < G.last; ++k) {
    order[fill[P.batch[k]]++] = k;
  }
  const int64_t cost = 4 * kChannelBlock * std::max<int64_t>(1, G.samples() / images);
  at::parallel_for(0, images * blocks, grain_for(cost), [&](int64_t task_begin, int64_t task_end) {
    if (task_begin == 0 && task_end == images * blocks) {  // one thread does it all: RoIs in index order
      for (int64_t k = G.first; k < G.last; ++k) {
        body(0, P.C, k, P.samples_per_bin(k));
      }
      return;
    }
    for (int64_t t = task_begin; t < task_end;) {
      const int64_t n = t / blocks, b0 = t % blocks, b1 = std::min(blocks, b0 + (task_end - t));
      const int64_t c0 = b0 * kChannelBlock, c1 = std::min(P.C, b1 * kChannelBlock);
      for (int64_t i = start[n]; i < start[n + 1]; ++i) {
        body(c0, c1, order[i], P.samples_per_bin(order[i]));
      }
      t += b1 - b0;
    }
  });
}

// Spread d (= d loss / d p at sample (iy, ix) of bin (ph, pw)) onto the RoI's map gp with p's weights.
template <typename T>
inline void add_probs_grad(T* gp, const Shape& s, const RoiGeometry<T>& g, int64_t ph, int64_t pw, int64_t iy,
                           int64_t ix, T d) {
  const Lerp<T> ly = probs_lerp<T>(ph, iy, g.grid_h, s.pooled_height, s.probs_height);
  const Lerp<T> lx = probs_lerp<T>(pw, ix, g.grid_w, s.pooled_width, s.probs_width);
  gp[ly.lo * s.probs_width + lx.lo] += d * ly.w_lo * lx.w_lo;
  gp[ly.lo * s.probs_width + lx.hi] += d * ly.w_lo * lx.w_hi;
  gp[ly.hi * s.probs_width + lx.lo] += d * ly.w_hi * lx.w_lo;
  gp[ly.hi * s.probs_width + lx.hi] += d * ly.w_hi * lx.w_hi;
}

// grad_t: (K, ph, pw, C); gi: (N, H, W, C).
template <typename T>
void grad_input_channels_last(const Problem<T>& P, const Group<T>& G, const T* grad_t, T* gi) {
  const int64_t C = P.C, bins = P.bins;
  for_each_channel_block(P, G, [&](int64_t c0, int64_t c1, int64_t k, int64_t n) {
    T* g_in = gi + P.batch[k] * P.plane * C + c0;
    const Sample<T>* e = G.of(k);
    for (int64_t bin = 0; bin < bins; ++bin) {
      const T* go = grad_t + (k * bins + bin) * C + c0;
      for (int64_t i = 0; i < n; ++i, ++e) {
        if (outside(*e)) {
          continue;
        }
        const T coef = e->scale / P.geo[k].count;
        for (int j = 0; j < 4; ++j) {
          axpy(g_in + e->pos[j] * C, go, coef * e->w[j], c1 - c0);
        }
      }
    }
  });
}

// grad: (K, C, ph, pw); gi: (N, C, H, W).
template <typename T>
void grad_input_planar(const Problem<T>& P, const Group<T>& G, const T* grad, T* gi) {
  const int64_t C = P.C, bins = P.bins;
  for_each_channel_block(P, G, [&](int64_t c0, int64_t c1, int64_t k, int64_t n) {
    for (int64_t c = c0; c < c1; ++c) {
      T* g_in = gi + (P.batch[k] * C + c) * P.plane;
      const T* go = grad + (k * C + c) * bins;
      const Sample<T>* e = G.of(k);
      for (int64_t bin = 0; bin < bins; ++bin, e += n) {
        const T gb = go[bin] / P.geo[k].count;
        if (gb == T(0)) {
          continue;
        }
        for (int64_t i = 0; i < n; ++i) {
          const T gs = gb * e[i].scale;
          for (int j = 0; j < 4; ++j) {
            g_in[e[i].pos[j]] += gs * e[i].w[j];
          }
        }
      }
    }
  });
}

// grad_t: (K, ph, pw, C); in: (N, H, W, C); gp: (K, Hp, Wp).
template <typename T>
void grad_probs_channels_last(const Problem<T>& P, const Group<T>& G, const T* grad_t, const T* in, T* gp) {
  const int64_t C = P.C;
  const Shape& s = P.s;
  at::parallel_for(G.first, G.last, grain_for(P.cost_per_roi()), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const RoiGeometry<T>& g = P.geo[k];
      const T* f = in + P.batch[k] * P.plane * C;
      const Sample<T>* e = G.of(k);
      for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
        for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
          const T* go = grad_t + (k * P.bins + ph * s.pooled_width + pw) * C;
          for (int64_t iy = 0; iy < g.grid_h; ++iy) {
            for (int64_t ix = 0; ix < g.grid_w; ++ix, ++e) {
              if (outside(*e)) {
                continue;
              }
              const T* f1 = f + e->pos[0] * C;
              const T* f2 = f + e->pos[1] * C;
              const T* f3 = f + e->pos[2] * C;
              const T* f4 = f + e->pos[3] * C;
              const T d = dot_sample(go, f1, f2, f3, f4, *e, C) / g.count;
              add_probs_grad(gp + k * P.map_size, s, g, ph, pw, iy, ix, d);
            }
          }
        }
      }
    }
  });
}

// grad: (K, C, ph, pw); in: (N, C, H, W); gp: (K, Hp, Wp).
template <typename T>
void grad_probs_planar(const Problem<T>& P, const Group<T>& G, const T* grad, const T* in, T* gp) {
  const int64_t C = P.C, bins = P.bins;
  const Shape& s = P.s;
  at::parallel_for(G.first, G.last, grain_for(P.cost_per_roi()), [&](int64_t begin, int64_t end) {
    std::vector<T> dp;  // sum_c grad[k, c, bin] * f_c(a_i, b_i) per sample of the RoI
    for (int64_t k = begin; k < end; ++k) {
      const RoiGeometry<T>& g = P.geo[k];
      const int64_t n = P.samples_per_bin(k);
      dp.assign(static_cast<size_t>(bins * n), T(0));
      for (int64_t c = 0; c < C; ++c) {
        const T* f = in + (P.batch[k] * C + c) * P.plane;
        const T* go = grad + (k * C + c) * bins;
        const Sample<T>* e = G.of(k);
        T* d = dp.data();
        for (int64_t bin = 0; bin < bins; ++bin) {
          for (int64_t i = 0; i < n; ++i, ++e, ++d) {
            *d += go[bin] * interpolate(f, *e);
          }
        }
      }
      const T* d = dp.data();
      for (int64_t ph = 0; ph < s.pooled_height; ++ph) {
        for (int64_t pw = 0; pw < s.pooled_width; ++pw) {
          for (int64_t iy = 0; iy < g.grid_h; ++iy) {
            for (int64_t ix = 0; ix < g.grid_w; ++ix, ++d) {
              add_probs_grad(gp + k * P.map_size, s, g, ph, pw, iy, ix, *d / g.count);
            }
          }
        }
      }
    }
  });
}

template <typename T>
void backward_impl(const Problem<T>& P, bool channels_last, const T* grad, const T* in, const T* probs, T* gi, T* gp) {
  constexpr int64_t kTableBudget = int64_t(1) << 19;  // samples per group (at least one RoI per group)
  std::vector<Sample<T>> table;
  std::vector<int64_t> offset;
  for (int64_t first = 0; first < P.K;) {
    int64_t last = first, total = 0;
    offset.assign(1, 0);
    while (last < P.K && (last == first || total + table_size(P.geo[last], P.s) <= kTableBudget)) {
      total += table_size(P.geo[last], P.s);
      offset.push_back(total);
      ++last;
    }
    table.resize(static_cast<size_t>(total));
    at::parallel_for(first, last, grain_for(16 * total / (last - first)), [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        build_table<T>(P.geo[k], probs + k * P.map_size, P.s, table.data() + offset[k - first]);
      }
    });
    const Group<T> G{first, last, table.data(), offset.data()};
    if (gi) {
      channels_last ? grad_input_channels_last(P, G, grad, gi) : grad_input_planar(P, G, grad, gi);
    }
    if (gp) {
      channels_last ? grad_probs_channels_last(P, G, grad, in, gp) : grad_probs_planar(P, G, grad, in, gp);
    }
    first = last;
  }
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs, double spatial_scale,
                       int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  at::Tensor output = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor rois_c = rois.contiguous(), probs_c = probs.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sg_roi_align_forward_cpu", [&] {
    const Problem<scalar_t> P(input, rois_c, probs_c, pooled_height, pooled_width, static_cast<scalar_t>(spatial_scale),
                              sampling_ratio, aligned);
    const scalar_t* p = probs_c.data_ptr<scalar_t>();
    if (use_channels_last(input, P.total_samples, kForwardMinSamplesPerPixel)) {
      const at::Tensor input_nhwc = channels_last_storage(input);
      forward_channels_last(P, input_nhwc.data_ptr<scalar_t>(), p, output.data_ptr<scalar_t>());
    } else {
      const at::Tensor input_c = input.contiguous();
      forward_planar(P, input_c.data_ptr<scalar_t>(), p, output.data_ptr<scalar_t>());
    }
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois,
                                                const at::Tensor& probs, double spatial_scale, int64_t pooled_height,
                                                int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                std::array<bool, 2> output_mask) {
  at::Tensor grad_input, grad_probs;
  if (output_mask[1]) {
    grad_probs = at::zeros_like(probs, at::MemoryFormat::Contiguous);
  }
  const bool work = grad.numel() > 0 && (output_mask[0] || output_mask[1]);
  const at::Tensor rois_c = rois.contiguous(), probs_c = probs.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sg_roi_align_backward_cpu", [&] {
    const Problem<scalar_t> P(input, rois_c, probs_c, pooled_height, pooled_width, static_cast<scalar_t>(spatial_scale),
                              sampling_ratio, aligned);
    const bool channels_last = use_channels_last(input, P.total_samples, kBackwardMinSamplesPerPixel);
    at::Tensor grad_l, input_l;  // grad and input in the chosen layout
    if (channels_last) {
      if (output_mask[0]) {
        grad_input = at::zeros({input.size(0), input.size(2), input.size(3), input.size(1)}, input.options());
      }
      if (work) {
        grad_l = grad.permute({0, 2, 3, 1}).contiguous();  // (K, ph, pw, C)
      }
      if (work && output_mask[1]) {
        input_l = channels_last_storage(input);
      }
    } else {
      if (output_mask[0]) {
        grad_input = at::zeros_like(input, at::MemoryFormat::Contiguous);
      }
      if (work) {
        grad_l = grad.contiguous();
      }
      if (work && output_mask[1]) {
        input_l = input.contiguous();
      }
    }
    if (work) {
      backward_impl(P, channels_last, grad_l.data_ptr<scalar_t>(),
                    input_l.defined() ? input_l.data_ptr<scalar_t>() : nullptr, probs_c.data_ptr<scalar_t>(),
                    output_mask[0] ? grad_input.data_ptr<scalar_t>() : nullptr,
                    output_mask[1] ? grad_probs.data_ptr<scalar_t>() : nullptr);
    }
    if (channels_last && output_mask[0]) {  // (N, H, W, C) -> a contiguous (N, C, H, W), as the CUDA kernel and
      // the fake kernel (dsg/layers/sg_roi_align.py) return it: torch.compile lays the result out by the fake's strides
      grad_input = grad_input.permute({0, 3, 1, 2}).contiguous();
    }
  });
  return {grad_input, grad_probs};
}

}  // namespace sg_roi_align
}  // namespace instseg
