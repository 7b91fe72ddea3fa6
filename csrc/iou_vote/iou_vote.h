// IoU-vote clustering, CASNet Sec. III-C "Post processing" ("common attribute support").
//
// Shared by the CPU kernel (iou_vote_cpu.cpp) and the CUDA kernel (iou_vote_cuda.cu); the schema and the argument
// checks are in iou_vote.cpp:
//   * the per-pair geometry (box area, box centre, IoU, squared centre distance) as inline host/device
//     functions, so that both kernels compute bit-identical values to each other and to the Python
//     reference (casnet/layers/iou_vote.py), which evaluates the same formulas in the same order;
//   * the seed preparation (valid seeds grouped by class, CSR offsets), written with ATen ops so that it
//     runs on the seeds' own device.
//
// Definition (our precise reading of the paper, see casnet/layers/iou_vote.py for the full text):
//   pixel (i, j) with class c and predicted distances (l, t, r, b) forms the box
//     B = (cx - l, cy - t, cx + r, cy + b),  (cx, cy) = (j + 0.5, i + 0.5);
//   among the seeds of class c, m = max IoU(B, seed); the candidates are the seeds with IoU >= m - tie_eps;
//   the candidate whose box centre is nearest to B's centre wins, then the lower seed index;
//   the pixel gets -1 when class c has no (finite) seed, its distances are not finite, or m <= min_iou.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "common/kernel_utils.h"

namespace instseg {
namespace iou_vote {

// The kernel of each device, called (through the dispatcher) once iou_vote.cpp has checked the arguments:
//   forward(sem_labels (H, W) int, distances (4, H, W) float, seed_boxes (S, 4), seed_classes (S,) int, min_iou,
//           tie_eps) -> (instance_ids (H, W) int64, support (S,) int64)
using ForwardKernel = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& sem_labels, const at::Tensor& distances,
                                                         const at::Tensor& seed_boxes, const at::Tensor& seed_classes,
                                                         double min_iou, double tie_eps);
ForwardKernel forward_cpu, forward_cuda;

// A product that the compiler must not fuse with a following add into an FMA: nvcc contracts a*b+c by
// default, which would round differently from the CPU kernel and the PyTorch reference. The _rn
// intrinsics are never contracted. (Host compilers for x86-64 do not contract without -mfma.)
template <typename T>
INSTSEG_HOST_DEVICE T mul_exact(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<T, float>::value) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

// max(v, 0), and the smaller / larger of two values (only finite values reach them).
template <typename T>
INSTSEG_HOST_DEVICE T max0(T v) {
  return v > T(0) ? v : T(0);
}
template <typename T>
INSTSEG_HOST_DEVICE T pick(bool take_b, T a, T b) {
  return take_b ? b : a;
}
template <typename T>
INSTSEG_HOST_DEVICE T min2(T a, T b) {
  return pick(b < a, a, b);
}
template <typename T>
INSTSEG_HOST_DEVICE T max2(T a, T b) {
  return pick(b > a, a, b);
}

// Area of an xyxy box; an inverted side counts as zero: max(x2 - x1, 0) * max(y2 - y1, 0).
template <typename T>
INSTSEG_HOST_DEVICE T box_area(T x1, T y1, T x2, T y2) {
  return mul_exact(max0(x2 - x1), max0(y2 - y1));
}

// Box centre, ((x1 + x2) / 2, (y1 + y2) / 2), computed as (x1 + x2) * 0.5.
template <typename T>
INSTSEG_HOST_DEVICE T box_center(T lo, T hi) {
  return mul_exact(lo + hi, T(0.5));
}

// IoU = |A ∩ B| / |A ∪ B| with |A ∪ B| = (|A| + |B|) - |A ∩ B|; defined as 0 when the union is 0
// (two zero-area boxes), so degenerate (zero-width) boxes never divide by zero.
template <typename T>
INSTSEG_HOST_DEVICE T box_iou(T ax1, T ay1, T ax2, T ay2, T a_area, T bx1, T by1, T bx2, T by2, T b_area) {
  const T iw = max0(min2(ax2, bx2) - max2(ax1, bx1));
  const T ih = max0(min2(ay2, by2) - max2(ay1, by1));
  const T inter = mul_exact(iw, ih);
  const T uni = (a_area + b_area) - inter;
  // Branch-free (the CPU kernel's loops over pixels vectorise): divide by 1 where the IoU is 0 by definition.
  const T iou = inter / (uni > T(0) ? uni : T(1));
  return uni > T(0) ? iou : T(0);
}

// Squared distance between two centres, dx*dx + dy*dy, clamped to the largest finite value so that
// a candidate always compares below the "+inf = not a candidate" sentinel of the reference.
template <typename T>
INSTSEG_HOST_DEVICE T center_dist2(T ax, T ay, T bx, T by, T max_finite) {
  const T dx = ax - bx;
  const T dy = ay - by;
  const T d2 = mul_exact(dx, dx) + mul_exact(dy, dy);
  return min2(d2, max_finite);
}

// Columns of the per-seed geometry table. The table is stored column-major (structure of arrays): column
// c of seed k is geo[c * n + k] for n valid seeds in class-sorted order, so that the loop over the seeds
// of one class reads contiguous memory (and vectorises on the CPU).
enum SeedCol : int { kX1 = 0, kY1, kX2, kY2, kArea, kCx, kCy, kNumSeedCols };

// Fills entry k of the seed geometry table (n entries) from an xyxy box.
template <typename T>
INSTSEG_HOST_DEVICE void seed_geometry(const T* box, T* geo, int64_t k, int64_t n) {
  geo[kX1 * n + k] = box[0];
  geo[kY1 * n + k] = box[1];
  geo[kX2 * n + k] = box[2];
  geo[kY2 * n + k] = box[3];
  geo[kArea * n + k] = box_area(box[0], box[1], box[2], box[3]);
  geo[kCx * n + k] = box_center(box[0], box[2]);
  geo[kCy * n + k] = box_center(box[1], box[3]);
}

// Index of `label` in the sorted array `classes[0, n)`, or -1 (binary search; n is at most S).
INSTSEG_HOST_DEVICE int64_t find_class(const int64_t* classes, int64_t n, int64_t label) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (classes[mid] < label) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return (lo < n && classes[lo] == label) ? lo : -1;
}

// The seeds grouped by class, computed with ATen ops on the seeds' device:
//   order    (S',)   original indices of the valid (finite-box) seeds, sorted by (class, index);
//   classes  (U,)    the distinct classes among them, ascending;
//   offsets  (U+1,)  CSR offsets: the seeds of classes[u] are order[offsets[u] : offsets[u+1]].
struct SeedGroups {
  at::Tensor order;
  at::Tensor classes;
  at::Tensor offsets;
};

inline SeedGroups group_seeds_by_class(const at::Tensor& seed_boxes, const at::Tensor& seed_classes) {
  // A seed with a non-finite box can never be voted for; it is left out (its support stays 0).
  const at::Tensor valid = at::isfinite(seed_boxes).all(/*dim=*/1);
  const at::Tensor valid_idx = valid.nonzero().view({-1});
  const at::Tensor cls = seed_classes.index_select(0, valid_idx);
  // Stable sort: within a class the seeds stay in ascending original index, which the kernels rely on
  // for the "lower seed index wins" rule.
  at::Tensor sorted_cls, perm;
  std::tie(sorted_cls, perm) = cls.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  SeedGroups g;
  g.order = valid_idx.index_select(0, perm).contiguous();
  at::Tensor counts;
  std::tie(g.classes, std::ignore, counts) =
      at::unique_consecutive(sorted_cls, /*return_inverse=*/false, /*return_counts=*/true);
  g.classes = g.classes.contiguous();
  g.offsets = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)}).contiguous();
  return g;
}

// The inputs as both devices' kernels read them: labels and classes as contiguous int64, distances and boxes
// contiguous. Host code.
struct Inputs {
  at::Tensor labels, dist, boxes, classes;
  int64_t H, W, S;

  Inputs(const at::Tensor& sem_labels, const at::Tensor& distances, const at::Tensor& seed_boxes,
         const at::Tensor& seed_classes)
      : labels(sem_labels.to(at::kLong).contiguous()),
        dist(distances.contiguous()),
        boxes(seed_boxes.contiguous()),
        classes(seed_classes.to(at::kLong).contiguous()),
        H(sem_labels.size(0)),
        W(sem_labels.size(1)),
        S(seed_boxes.size(0)) {}
};

}  // namespace iou_vote
}  // namespace instseg
