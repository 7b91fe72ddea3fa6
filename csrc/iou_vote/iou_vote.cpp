// IoU-vote clustering (CASNet, Sec. III-C "common attribute support"): schema and CPU kernel.
//
//   instseg::iou_vote(sem_labels (H, W) int, distances (4, H, W) float, seed_boxes (S, 4) float,
//                     seed_classes (S,) int, min_iou, tie_eps) -> (instance_ids (H, W) int64, support (S,) int64)
//
// Each pixel of a class that has seeds builds its own box from the four predicted distances and votes for
// the seed of its class whose box it overlaps most (IoU); near-ties (within tie_eps) go to the seed whose
// centre is nearest the pixel box's centre (the paper's "center will give a direction"), then to the
// lower seed index. Every pixel gets at most one id, so instances never overlap. Not differentiable.
// The formulas live in iou_vote.h, shared with the CUDA kernel.
#include "iou_vote.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <vector>

namespace instseg {

namespace {

using namespace iou_vote_detail;

// The seeds as the kernel sees them: valid seeds in class-sorted order with their geometry table
// (column-major, see SeedCol), and the CSR grouping by class from group_seeds_by_class.
template <typename T>
struct SeedTable {
  const T* geo;             // kNumSeedCols x n_valid
  int64_t n_valid;          // seeds with a finite box
  const int64_t* order;     // (n_valid,) original seed index of each entry
  const int64_t* classes;   // (num_classes,) ascending
  const int64_t* offsets;   // (num_classes + 1,)
  int64_t num_classes;
};

// labels (H, W) and dist (4, H, W) contiguous; writes ids (H, W) and adds the votes to support (S,).
template <typename T>
void iou_vote_cpu_kernel(const int64_t* labels, const T* dist, int64_t H, int64_t W, const SeedTable<T>& seeds,
                         T min_iou, T tie_eps, int64_t* ids, int64_t* support, int64_t S) {
  const T* geo = seeds.geo;
  const int64_t n_valid = seeds.n_valid;
  const int64_t* order = seeds.order;
  const int64_t* classes = seeds.classes;
  const int64_t* offsets = seeds.offsets;
  const int64_t num_classes = seeds.num_classes;
  const int64_t P = H * W;  // pixels; int64 throughout
  const T* dl = dist;          // distance to the left edge
  const T* dt = dist + P;      // ... top
  const T* dr = dist + 2 * P;  // ... right
  const T* db = dist + 3 * P;  // ... bottom
  const T max_finite = std::numeric_limits<T>::max();

  // The largest class group bounds the per-thread IoU buffer.
  int64_t max_group = 0;
  for (int64_t u = 0; u < num_classes; ++u) {
    max_group = std::max(max_group, offsets[u + 1] - offsets[u]);
  }

  std::mutex support_mutex;
  // Pixels are independent: parallel over image rows (enough rows per task for ~4096 pixels). Each task
  // keeps its own support histogram and adds it to the total once at the end.
  const int64_t grain_rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1));
  at::parallel_for(0, H, grain_rows, [&](int64_t row_begin, int64_t row_end) {
    std::vector<T> iou(static_cast<size_t>(max_group));
    std::vector<int64_t> hist(static_cast<size_t>(S), 0);
    // Neighbouring pixels mostly share a class: remember the last class lookup.
    int64_t last_label = 0;
    int64_t last_u = find_class(classes, num_classes, 0);

    for (int64_t i = row_begin; i < row_end; ++i) {
      const T cy = static_cast<T>(i) + T(0.5);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t p = i * W + j;
        ids[p] = -1;
        const int64_t label = labels[p];
        if (label != last_label) {
          last_label = label;
          last_u = find_class(classes, num_classes, label);
        }
        if (last_u < 0) {
          continue;  // no seed of this class
        }
        const T l = dl[p], t = dt[p], r = dr[p], b = db[p];
        if (!(std::isfinite(l) && std::isfinite(t) && std::isfinite(r) && std::isfinite(b))) {
          continue;  // a pixel without a finite box casts no vote
        }
        // The pixel's own box around its centre (cx, cy) = (j + 0.5, i + 0.5).
        const T cx = static_cast<T>(j) + T(0.5);
        const T px1 = cx - l, py1 = cy - t, px2 = cx + r, py2 = cy + b;
        const T parea = box_area(px1, py1, px2, py2);

        const int64_t s0 = offsets[last_u];
        const int64_t n = offsets[last_u + 1] - s0;
        const T* __restrict__ gx1 = geo + kX1 * n_valid + s0;
        const T* __restrict__ gy1 = geo + kY1 * n_valid + s0;
        const T* __restrict__ gx2 = geo + kX2 * n_valid + s0;
        const T* __restrict__ gy2 = geo + kY2 * n_valid + s0;
        const T* __restrict__ garea = geo + kArea * n_valid + s0;

        // Pass 1: the IoU with every seed of the class (contiguous columns), then the best one, m.
        T* __restrict__ v = iou.data();
        for (int64_t k = 0; k < n; ++k) {
          v[k] = box_iou(px1, py1, px2, py2, parea, gx1[k], gy1[k], gx2[k], gy2[k], garea[k]);
        }
        T m = v[0];
        for (int64_t k = 1; k < n; ++k) {
          m = v[k] > m ? v[k] : m;
        }
        if (!(m > min_iou)) {
          continue;  // not enough overlap with any seed
        }
        // Pass 2: among the seeds with IoU >= m - tie_eps, the nearest centre wins; scanning in ascending
        // seed index with a strict "<" gives the lower index on equal distances.
        const T thr = m - tie_eps;
        const T pcx = box_center(px1, px2), pcy = box_center(py1, py2);
        const T* gcx = geo + kCx * n_valid + s0;
        const T* gcy = geo + kCy * n_valid + s0;
        int64_t best = -1;
        T best_d2 = T(0);
        for (int64_t k = 0; k < n; ++k) {
          if (!(v[k] >= thr)) {
            continue;
          }
          const T d2 = center_dist2(pcx, pcy, gcx[k], gcy[k], max_finite);
          if (best < 0 || d2 < best_d2) {
            best = k;
            best_d2 = d2;
          }
        }
        const int64_t seed = order[s0 + best];
        ids[p] = seed;
        ++hist[seed];
      }
    }

    std::lock_guard<std::mutex> lock(support_mutex);
    for (int64_t s = 0; s < S; ++s) {
      support[s] += hist[s];
    }
  });
}

std::tuple<at::Tensor, at::Tensor> iou_vote_cpu(const at::Tensor& sem_labels, const at::Tensor& distances,
                                                const at::Tensor& seed_boxes, const at::Tensor& seed_classes,
                                                double min_iou, double tie_eps) {
  check_inputs(sem_labels, distances, seed_boxes, seed_classes, tie_eps);
  TORCH_CHECK(sem_labels.device().is_cpu(), "iou_vote (CPU kernel): inputs must be on the CPU");

  const at::Tensor labels = sem_labels.to(at::kLong).contiguous();
  const at::Tensor dist = distances.contiguous();
  const at::Tensor boxes = seed_boxes.contiguous();
  const at::Tensor cls = seed_classes.to(at::kLong).contiguous();
  const int64_t H = labels.size(0), W = labels.size(1), S = boxes.size(0);

  at::Tensor ids = at::empty({H, W}, labels.options());
  at::Tensor support = at::zeros({S}, labels.options());
  if (H * W == 0) {
    return {ids, support};
  }
  const SeedGroups groups = group_seeds_by_class(boxes, cls);
  const int64_t n_valid = groups.order.size(0);

  AT_DISPATCH_FLOATING_TYPES(dist.scalar_type(), "iou_vote_cpu", [&] {
    // Seed geometry table in class-sorted order (box, area, centre), computed once.
    std::vector<scalar_t> geo(static_cast<size_t>(n_valid * kNumSeedCols));
    const scalar_t* box_ptr = boxes.data_ptr<scalar_t>();
    const int64_t* order_ptr = groups.order.data_ptr<int64_t>();
    for (int64_t k = 0; k < n_valid; ++k) {
      seed_geometry(box_ptr + order_ptr[k] * 4, geo.data(), k, n_valid);
    }
    const SeedTable<scalar_t> table{geo.data(),
                                    n_valid,
                                    order_ptr,
                                    groups.classes.data_ptr<int64_t>(),
                                    groups.offsets.data_ptr<int64_t>(),
                                    groups.classes.size(0)};
    iou_vote_cpu_kernel<scalar_t>(labels.data_ptr<int64_t>(), dist.data_ptr<scalar_t>(), H, W, table,
                                  static_cast<scalar_t>(min_iou), static_cast<scalar_t>(tie_eps),
                                  ids.data_ptr<int64_t>(), support.data_ptr<int64_t>(), S);
  });
  return {ids, support};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(instseg, m) {
  m.def(
      "iou_vote(Tensor sem_labels, Tensor distances, Tensor seed_boxes, Tensor seed_classes, float min_iou, "
      "float tie_eps) -> (Tensor instance_ids, Tensor support)");
}

TORCH_LIBRARY_IMPL(instseg, CPU, m) {
  m.impl("iou_vote", &iou_vote_cpu);
}

}  // namespace instseg
