// Shape-guided RoIAlign (DSG, Sec. 3.4, Eq. 1-2): the sampling rules shared by the CPU and CUDA kernels.
//
// SgRoIAlign divides a RoI into pooled_height x pooled_width bins and takes N = grid_h * grid_w sample points
// (a, b) per bin, exactly as RoIAlign does (same `aligned` half-pixel offset, same adaptive grid for
// sampling_ratio <= 0, same bilinear rule at the feature-map border). Eq. 2 then weights each sample by one
// plus the RoI's probability map at the corresponding point:
//
//   F_{R,P}(h, w) = sum_{i=1..N} f(a_i, b_i) * (1 + p(c_i, d_i)) / N                                   (Eq. 2)
//
// Eq. 1 maps a sample point (a, b) on the feature map to (c, d) in the Hp x Wp map P, which covers the RoI
// exactly:  c = (a - x1) * Wp / roi_w - 0.5,  d = (b - y1) * Hp / roi_h - 0.5  (pixel centres at k + 0.5),
// where (x1, y1, roi_w, roi_h) is the sampled RoI on the feature map (after spatial_scale, the aligned offset
// and, when aligned=False, RoIAlign's minimum size of 1). Since a = x1 + (pw + (ix + 0.5) / grid_w) * roi_w /
// pooled_width, the RoI-relative position (a - x1) / roi_w equals (pw + (ix + 0.5) / grid_w) / pooled_width:
// we compute it that way, which is the same number and stays defined for zero-width RoIs. p is the bilinear
// interpolation of P at (c, d), with (c, d) clamped to the map's border.
//
// The rules are header-only and __host__ __device__ so that both kernels use one definition. The schemas and
// the argument checks are in sg_roi_align.cpp, the kernels in sg_roi_align_cpu.cpp and sg_roi_align_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "common/kernel_utils.h"

namespace instseg {
namespace sg_roi_align {

// The kernels of each device, called (through the dispatcher) once sg_roi_align.cpp has checked the arguments:
//   forward(input (N, C, H, W), rois (K, 5), probs (K, Hp, Wp), ...) -> (K, C, pooled_height, pooled_width)
//   backward(grad (K, C, pooled_height, pooled_width), input, rois, probs, ..., output_mask)
//       -> (grad_input if output_mask[0], grad_probs if output_mask[1]; an undefined tensor otherwise)
using ForwardKernel = at::Tensor(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t sampling_ratio, bool aligned);
using BackwardKernel = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& grad, const at::Tensor& input,
                                                          const at::Tensor& rois, const at::Tensor& probs,
                                                          double spatial_scale, int64_t pooled_height,
                                                          int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                                                          std::array<bool, 2> output_mask);
ForwardKernel forward_cpu, forward_cuda;
BackwardKernel backward_cpu, backward_cuda;

// One RoI on the feature map, as RoIAlign samples it.
template <typename T>
struct RoiGeometry {
  T start_h;       // y1 on the feature map (after spatial_scale and the aligned offset)
  T start_w;       // x1
  T bin_h;         // roi_h / pooled_height
  T bin_w;         // roi_w / pooled_width
  int64_t grid_h;  // sample points per bin along y (0: the bin has no samples and is 0)
  int64_t grid_w;  // sample points per bin along x
  T count;         // Eq. 2's N = grid_h * grid_w, at least 1 (an empty grid averages to 0, as RoIAlign)
};

// RoIAlign's adaptive grid, ceil(roi_extent / pooled): non-positive, NaN or absurdly large extents give an
// empty grid instead of an undefined float-to-int conversion.
template <typename T>
INSTSEG_HOST_DEVICE int64_t adaptive_grid(T extent_per_bin) {
  if (!(extent_per_bin > T(0) && extent_per_bin < T(1e9))) {
    return 0;
  }
  const int64_t whole = static_cast<int64_t>(extent_per_bin);
  return static_cast<T>(whole) < extent_per_bin ? whole + 1 : whole;
}

// `roi` points at (batch_index, x1, y1, x2, y2) in image coordinates.
template <typename T>
INSTSEG_HOST_DEVICE RoiGeometry<T> roi_geometry(const T* roi, T spatial_scale, int64_t pooled_height,
                                                int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiGeometry<T> g;
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  T roi_w = roi[3] * spatial_scale - offset - g.start_w;
  T roi_h = roi[4] * spatial_scale - offset - g.start_h;
  if (!aligned) {  // RoIAlign (legacy) forces malformed RoIs to be at least 1 x 1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_height);
  g.bin_w = roi_w / static_cast<T>(pooled_width);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid<T>(roi_h / static_cast<T>(pooled_height));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid<T>(roi_w / static_cast<T>(pooled_width));
  const int64_t n = g.grid_h * g.grid_w;
  g.count = static_cast<T>(n > 0 ? n : 1);
  return g;
}

// Sample coordinate (a or b of Eq. 1) of sample `i` in bin `p` along one axis.
template <typename T>
INSTSEG_HOST_DEVICE T sample_coord(T start, T bin, int64_t p, int64_t i, int64_t grid) {
  return start + static_cast<T>(p) * bin + static_cast<T>(i + .5f) * bin / static_cast<T>(grid);
}

// Linear interpolation along one axis: value = w_lo * v[lo] + w_hi * v[hi]. Bilinear interpolation is the
// product of one such factor per axis.
template <typename T>
struct Lerp {
  int64_t lo;
  int64_t hi;
  T w_lo;
  T w_hi;
};

// f's rule along one axis (RoIAlign's): a coordinate outside [-1, size] (or NaN) makes the sample 0 (weights
// 0, index 0 so that a read stays in bounds); otherwise it is clamped to [0, size - 1].
template <typename T>
INSTSEG_HOST_DEVICE Lerp<T> feature_lerp(T v, int64_t size) {
  Lerp<T> r;
  if (!(v >= T(-1) && v <= static_cast<T>(size))) {
    r.lo = r.hi = 0;
    r.w_lo = r.w_hi = T(0);
    return r;
  }
  if (v <= T(0)) {
    v = T(0);
  }
  r.lo = static_cast<int64_t>(v);
  if (r.lo >= size - 1) {
    r.lo = r.hi = size - 1;
    v = static_cast<T>(r.lo);
  } else {
    r.hi = r.lo + 1;
  }
  const T l = v - static_cast<T>(r.lo);
  r.w_lo = T(1) - l;
  r.w_hi = l;
  return r;
}

// p's rule along one axis (Eq. 1): sample `i` of bin `p` sits at the RoI-relative position
// u = (p + (i + 0.5) / grid) / pooled, i.e. at c = u * size - 0.5 in the map's pixel coordinates, clamped to
// [0, size - 1] (the map's border value extends outwards).
template <typename T>
INSTSEG_HOST_DEVICE Lerp<T> probs_lerp(int64_t p, int64_t i, int64_t grid, int64_t pooled, int64_t size) {
  const T u = (static_cast<T>(p) + (static_cast<T>(i) + T(0.5)) / static_cast<T>(grid)) / static_cast<T>(pooled);
  T c = u * static_cast<T>(size) - T(0.5);
  const T last = static_cast<T>(size - 1);
  c = c > T(0) ? c : T(0);
  c = c < last ? c : last;
  Lerp<T> r;
  r.lo = static_cast<int64_t>(c);
  r.hi = r.lo + 1 < size ? r.lo + 1 : r.lo;
  const T l = c - static_cast<T>(r.lo);
  r.w_lo = T(1) - l;
  r.w_hi = l;
  return r;
}

// f(a, b): RoIAlign's bilinear interpolation of one feature plane (row-major, `width` columns) from its two axis
// factors, as w1 f1 + w2 f2 + w3 f3 + w4 f4 with w = w_y * w_x.
template <typename T>
INSTSEG_HOST_DEVICE T feature_value(const T* plane, int64_t width, const Lerp<T>& y, const Lerp<T>& x) {
  return y.w_lo * x.w_lo * plane[y.lo * width + x.lo] + y.w_lo * x.w_hi * plane[y.lo * width + x.hi] +
         y.w_hi * x.w_lo * plane[y.hi * width + x.lo] + y.w_hi * x.w_hi * plane[y.hi * width + x.hi];
}

// p(c, d): bilinear interpolation of one RoI's map (row-major, `width` columns) from its two axis factors.
template <typename T>
INSTSEG_HOST_DEVICE T probs_value(const T* map, int64_t width, const Lerp<T>& ly, const Lerp<T>& lx) {
  return ly.w_lo * (lx.w_lo * map[ly.lo * width + lx.lo] + lx.w_hi * map[ly.lo * width + lx.hi]) +
         ly.w_hi * (lx.w_lo * map[ly.hi * width + lx.lo] + lx.w_hi * map[ly.hi * width + lx.hi]);
}

}  // namespace sg_roi_align
}  // namespace instseg
