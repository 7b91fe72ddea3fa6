// IoU-vote clustering (CASNet, Sec. III-C "common attribute support"): the CPU kernel. Schema and argument checks:
// iou_vote.cpp; the per-pair formulas (box area and centre, IoU, centre distance), shared with the CUDA kernel and
// matching the references bit for bit: iou_vote.h.
//
// Image rows are interleaved among the threads. A row is cut into runs of pixels of one class (instances are
// blobs, so runs are long), and each run is scored against the seeds of its class seed by seed, the loops running
// over the run's pixels: every pixel's own arithmetic is the one of the definition, but it vectorises across
// pixels (8 float32 lanes with AVX2) however few seeds the class has.
#include "iou_vote/iou_vote.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

namespace instseg {
namespace iou_vote {
namespace {

// The seeds as the kernel sees them: valid seeds in class-sorted order with their geometry table
// (column-major, see SeedCol), and the CSR grouping by class from group_seeds_by_class.
template <typename T>
struct SeedTable {
  const T* geo;            // kNumSeedCols x n_valid
  int64_t n_valid;         // seeds with a finite box
  const int64_t* order;    // (n_valid,) original seed index of each entry
  const int64_t* classes;  // (num_classes,) ascending
  const int64_t* offsets;  // (num_classes + 1,)
  int64_t num_classes;

  const T* column(SeedCol c, int64_t first) const { return geo + c * n_valid + first; }
};

// Pixels scored at once: a longer run of one class is cut (bounds the per-thread buffers).
constexpr int64_t kMaxRun = 256;

// Per-thread buffers for one run of pixels (structure of arrays, one entry per pixel of the run).
template <typename T>
struct RunBuffers {
  std::vector<T> x1, y1, x2, y2, area, best_iou, threshold, cx, cy, best_d2, iou;  // iou: (seeds, run)
  std::vector<int32_t> best;
  explicit RunBuffers(int64_t max_group)
      : x1(kMaxRun),
        y1(kMaxRun),
        x2(kMaxRun),
        y2(kMaxRun),
        area(kMaxRun),
        best_iou(kMaxRun),
        threshold(kMaxRun),
        cx(kMaxRun),
        cy(kMaxRun),
        best_d2(kMaxRun),
        iou(static_cast<size_t>(std::max<int64_t>(max_group, 1)) * kMaxRun),
        best(kMaxRun) {}
};

template <typename T>
struct Problem {
  const int64_t* labels;  // (H, W)
  const T* dist;          // (4, H, W): distances to the left, top, right and bottom edges
  int64_t H, W;
  SeedTable<T> seeds;
  T min_iou, tie_eps;
};

// Votes of the run of pixels j0 .. j0 + n - 1 of row i, all of class classes[u]: the seed index (or -1) of each
// pixel into ids, and +1 per vote into hist.
template <typename T>
INSTSEG_ALWAYS_INLINE void vote_run_impl(const Problem<T>& P, int64_t i, int64_t j0, int64_t n, int64_t u,
                                         RunBuffers<T>& B, int64_t* ids, int64_t* hist) {
  const int64_t P0 = i * P.W + j0, plane = P.H * P.W;
  const T* __restrict__ dl = P.dist + P0;
  const T* __restrict__ dt = dl + plane;
  const T* __restrict__ dr = dt + plane;
  const T* __restrict__ db = dr + plane;
  T* __restrict__ x1 = B.x1.data();
  T* __restrict__ y1 = B.y1.data();
  T* __restrict__ x2 = B.x2.data();
  T* __restrict__ y2 = B.y2.data();
  T* __restrict__ area = B.area.data();
  // Each pixel's own box around its centre (cx, cy) = (j + 0.5, i + 0.5).
  // (Columns as int32, whose conversion to floating point vectorises; images are narrower than 2^31 pixels.)
  const T cy = static_cast<T>(i) + T(0.5);
  const int32_t col0 = static_cast<int32_t>(j0);
  for (int32_t j = 0; j < static_cast<int32_t>(n); ++j) {
    const T cx = static_cast<T>(col0 + j) + T(0.5);
    x1[j] = cx - dl[j];
    y1[j] = cy - dt[j];
    x2[j] = cx + dr[j];
    y2[j] = cy + db[j];
    area[j] = box_area(x1[j], y1[j], x2[j], y2[j]);
  }
  const SeedTable<T>& S = P.seeds;
  const int64_t s0 = S.offsets[u], count = S.offsets[u + 1] - s0;
  const T* gx1 = S.column(kX1, s0);
  const T* gy1 = S.column(kY1, s0);
  const T* gx2 = S.column(kX2, s0);
  const T* gy2 = S.column(kY2, s0);
  const T* garea = S.column(kArea, s0);
  const T* gcx = S.column(kCx, s0);
  const T* gcy = S.column(kCy, s0);

  // Pass 1: the IoU of every pixel with every seed of the class, and each pixel's best one, m.
  T* __restrict__ m = B.best_iou.data();
  for (int64_t k = 0; k < count; ++k) {
    T* __restrict__ v = B.iou.data() + k * n;
    const T bx1 = gx1[k], by1 = gy1[k], bx2 = gx2[k], by2 = gy2[k], barea = garea[k];
    for (int64_t j = 0; j < n; ++j) {
      v[j] = box_iou(x1[j], y1[j], x2[j], y2[j], area[j], bx1, by1, bx2, by2, barea);
    }
    if (k == 0) {
      std::copy(v, v + n, m);
    } else {
      for (int64_t j = 0; j < n; ++j) {
        m[j] = v[j] > m[j] ? v[j] : m[j];
      }
    }
  }
  // Pass 2: among the seeds with IoU >= m - tie_eps, the nearest centre wins; seeds are visited in ascending
  // index with a strict "<", so equal distances go to the lower index.
  T* __restrict__ thr = B.threshold.data();
  T* __restrict__ pcx = B.cx.data();
  T* __restrict__ pcy = B.cy.data();
  T* __restrict__ best_d2 = B.best_d2.data();
  int32_t* __restrict__ best = B.best.data();
  for (int64_t j = 0; j < n; ++j) {
    thr[j] = m[j] - P.tie_eps;
    pcx[j] = box_center(x1[j], x2[j]);
    pcy[j] = box_center(y1[j], y2[j]);
    best[j] = -1;
    best_d2[j] = std::numeric_limits<T>::infinity();  // above every (clamped, finite) distance: the first wins
  }
  const T max_finite = std::numeric_limits<T>::max();
  for (int64_t k = 0; k < count; ++k) {
    const T* __restrict__ v = B.iou.data() + k * n;
    const T bcx = gcx[k], bcy = gcy[k];
    for (int64_t j = 0; j < n; ++j) {
      const T d2 = center_dist2(pcx[j], pcy[j], bcx, bcy, max_finite);
      const T old = best_d2[j];
      // (Written without branches or conditional stores so that the loop vectorises.)
      const int32_t take = (v[j] >= thr[j]) & (d2 < old);
      best[j] += take * (static_cast<int32_t>(k) - best[j]);
      best_d2[j] = take ? d2 : old;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    // A pixel whose distances are not all finite casts no vote, nor does one with too little overlap.
    const bool finite = std::isfinite(dl[j]) && std::isfinite(dt[j]) && std::isfinite(dr[j]) && std::isfinite(db[j]);
    int64_t seed = -1;
    if (finite && m[j] > P.min_iou && best[j] >= 0) {
      seed = S.order[s0 + best[j]];
      ++hist[seed];
    }
    ids[P0 + j] = seed;
  }
}

// vote_run_impl, compiled for AVX2 and for baseline x86-64 (see INSTSEG_CPU_CLONES).
INSTSEG_CPU_CLONES void vote_run(const Problem<float>& P, int64_t i, int64_t j0, int64_t n, int64_t u,
                                 RunBuffers<float>& B, int64_t* ids, int64_t* hist) {
  vote_run_impl(P, i, j0, n, u, B, ids, hist);
}
INSTSEG_CPU_CLONES void vote_run(const Problem<double>& P, int64_t i, int64_t j0, int64_t n, int64_t u,
                                 RunBuffers<double>& B, int64_t* ids, int64_t* hist) {
  vote_run_impl(P, i, j0, n, u, B, ids, hist);
}

// Writes ids (H, W) and adds the votes to support (S,).
template <typename T>
void vote(const Problem<T>& P, int64_t* ids, int64_t* support, int64_t num_seeds) {
  const SeedTable<T>& S = P.seeds;
  int64_t max_group = 0;  // the largest class bounds the IoU buffer
  for (int64_t u = 0; u < S.num_classes; ++u) {
    max_group = std::max(max_group, S.offsets[u + 1] - S.offsets[u]);
  }
  std::mutex support_mutex;
  const int64_t cost_per_row = P.W * (S.n_valid / std::max<int64_t>(1, S.num_classes) + 1) * 16;  // ~16 ops a pair
  parallel_for_interleaved(P.H, cost_per_row, [&](const auto& for_each_row) {
    RunBuffers<T> buffers(max_group);
    std::vector<int64_t> hist(static_cast<size_t>(num_seeds), 0);  // this task's votes, added to support at the end
    for_each_row([&](int64_t i) {
      const int64_t* row = P.labels + i * P.W;
      for (int64_t j = 0; j < P.W;) {
        const int64_t label = row[j];
        int64_t end = j + 1;
        while (end < P.W && end - j < kMaxRun && row[end] == label) {
          ++end;
        }
        const int64_t u = find_class(S.classes, S.num_classes, label);
        if (u < 0) {
          std::fill(ids + i * P.W + j, ids + i * P.W + end, int64_t(-1));  // no seed of this class
        } else {
          vote_run(P, i, j, end - j, u, buffers, ids, hist.data());
        }
        j = end;
      }
    });
    std::lock_guard<std::mutex> lock(support_mutex);
    for (int64_t s = 0; s < num_seeds; ++s) {
      support[s] += hist[s];
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& sem_labels, const at::Tensor& distances,
                                               const at::Tensor& seed_boxes, const at::Tensor& seed_classes,
                                               double min_iou, double tie_eps) {
  const Inputs in(sem_labels, distances, seed_boxes, seed_classes);
  at::Tensor ids = at::empty({in.H, in.W}, in.labels.options());
  at::Tensor support = at::zeros({in.S}, in.labels.options());
  if (in.H * in.W == 0) {
    return {ids, support};
  }
  const SeedGroups groups = group_seeds_by_class(in.boxes, in.classes);
  const int64_t n_valid = groups.order.size(0);

  AT_DISPATCH_FLOATING_TYPES(in.dist.scalar_type(), "iou_vote_cpu", [&] {
    // Seed geometry table in class-sorted order (box, area, centre), computed once.
    std::vector<scalar_t> geo(static_cast<size_t>(n_valid * kNumSeedCols));
    const scalar_t* box_ptr = in.boxes.data_ptr<scalar_t>();
    const int64_t* order_ptr = groups.order.data_ptr<int64_t>();
    for (int64_t k = 0; k < n_valid; ++k) {
      seed_geometry(box_ptr + order_ptr[k] * 4, geo.data(), k, n_valid);
    }
    const Problem<scalar_t> P{in.labels.data_ptr<int64_t>(),
                              in.dist.data_ptr<scalar_t>(),
                              in.H,
                              in.W,
                              {geo.data(), n_valid, order_ptr, groups.classes.data_ptr<int64_t>(),
                               groups.offsets.data_ptr<int64_t>(), groups.classes.size(0)},
                              static_cast<scalar_t>(min_iou),
                              static_cast<scalar_t>(tie_eps)};
    vote(P, ids.data_ptr<int64_t>(), support.data_ptr<int64_t>(), in.S);
  });
  return {ids, support};
}

}  // namespace iou_vote
}  // namespace instseg
