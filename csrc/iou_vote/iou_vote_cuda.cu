// IoU-vote clustering (CASNet, Sec. III-C "common attribute support"): the CUDA kernel. Schema and argument
// checks: iou_vote.cpp.
//
// One thread per pixel (grid-stride). The seeds are grouped by class once (group_seeds_by_class, ATen ops
// on the GPU) and their geometry (box, area, centre) is tabulated by a small kernel, so each pixel only
// scans the seeds of its own class. The per-pair formulas are the ones of iou_vote.h, shared with the CPU
// kernel; products go through __fmul_rn/__dmul_rn there so nvcc cannot fuse them into FMAs and the result
// matches the CPU kernel and the PyTorch reference bit for bit. Support is a bincount of the ids.
#include "iou_vote/iou_vote.h"

// Only c10's CUDA headers: ATen/cuda/CUDAContext.h pulls in cuSPARSE/cuBLAS headers, which a minimal
// CUDA toolkit (nvcc + runtime) does not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <limits>

namespace instseg {
namespace iou_vote {
namespace {

// Entry k of the (column-major) seed geometry table from the box of seed order[k].
template <typename T>
__global__ void seed_geometry_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ order, int64_t n,
                                     T* __restrict__ geo) {
  INSTSEG_GRID_STRIDE_LOOP(k, n) { seed_geometry(boxes + order[k] * 4, geo, k, n); }
}

template <typename T>
__global__ void iou_vote_kernel(const int64_t* __restrict__ labels, const T* __restrict__ dist, int64_t H, int64_t W,
                                const T* __restrict__ geo, int64_t n_valid, const int64_t* __restrict__ order,
                                const int64_t* __restrict__ classes, const int64_t* __restrict__ offsets,
                                int64_t num_classes, T min_iou, T tie_eps, T max_finite, int64_t* __restrict__ ids) {
  const int64_t P = H * W;
  INSTSEG_GRID_STRIDE_LOOP(p, P) {
    int64_t result = -1;
    const int64_t u = find_class(classes, num_classes, labels[p]);
    const T l = dist[p], t = dist[P + p], r = dist[2 * P + p], b = dist[3 * P + p];
    if (u >= 0 && isfinite(l) && isfinite(t) && isfinite(r) && isfinite(b)) {
      // The pixel's own box around its centre (cx, cy) = (j + 0.5, i + 0.5).
      const T cx = static_cast<T>(p % W) + T(0.5);
      const T cy = static_cast<T>(p / W) + T(0.5);
      const T px1 = cx - l, py1 = cy - t, px2 = cx + r, py2 = cy + b;
      const T parea = box_area(px1, py1, px2, py2);
      const int64_t s0 = offsets[u], s1 = offsets[u + 1];
      const T* gx1 = geo + kX1 * n_valid;
      const T* gy1 = geo + kY1 * n_valid;
      const T* gx2 = geo + kX2 * n_valid;
      const T* gy2 = geo + kY2 * n_valid;
      const T* garea = geo + kArea * n_valid;
      const T* gcx = geo + kCx * n_valid;
      const T* gcy = geo + kCy * n_valid;

      // Pass 1: the best IoU m over the seeds of the pixel's class.
      T m = T(0);
      for (int64_t k = s0; k < s1; ++k) {
        const T v = box_iou(px1, py1, px2, py2, parea, gx1[k], gy1[k], gx2[k], gy2[k], garea[k]);
        m = (k == s0 || v > m) ? v : m;
      }
      if (m > min_iou) {
        // Pass 2: the candidates (IoU >= m - tie_eps; the IoU is recomputed, bit-identical) compete by
        // centre distance; ascending scan with strict "<" keeps the lower seed index on equal distances.
        const T thr = m - tie_eps;
        const T pcx = box_center(px1, px2), pcy = box_center(py1, py2);
        int64_t best = -1;
        T best_d2 = T(0);
        for (int64_t k = s0; k < s1; ++k) {
          const T v = box_iou(px1, py1, px2, py2, parea, gx1[k], gy1[k], gx2[k], gy2[k], garea[k]);
          if (!(v >= thr)) {
            continue;
          }
          const T d2 = center_dist2(pcx, pcy, gcx[k], gcy[k], max_finite);
          if (best < 0 || d2 < best_d2) {
            best = k;
            best_d2 = d2;
          }
        }
        result = order[best];
      }
    }
    ids[p] = result;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& sem_labels, const at::Tensor& distances,
                                                const at::Tensor& seed_boxes, const at::Tensor& seed_classes,
                                                double min_iou, double tie_eps) {
  const c10::cuda::CUDAGuard guard(sem_labels.device());
  const Inputs in(sem_labels, distances, seed_boxes, seed_classes);
  at::Tensor ids = at::empty({in.H, in.W}, in.labels.options());
  if (in.H * in.W == 0) {
    return {ids, at::zeros({in.S}, in.labels.options())};
  }
  const SeedGroups groups = group_seeds_by_class(in.boxes, in.classes);
  const int64_t n_valid = groups.order.size(0);
  const int64_t num_classes = groups.classes.size(0);
  at::Tensor geo = at::empty({kNumSeedCols, std::max<int64_t>(n_valid, 1)}, in.dist.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(in.dist.scalar_type(), "iou_vote_cuda", [&] {
    if (n_valid > 0) {
      seed_geometry_kernel<scalar_t><<<blocks_for(n_valid), kThreadsPerBlock, 0, stream>>>(
          in.boxes.data_ptr<scalar_t>(), groups.order.data_ptr<int64_t>(), n_valid, geo.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    iou_vote_kernel<scalar_t><<<blocks_for(in.H * in.W), kThreadsPerBlock, 0, stream>>>(
        in.labels.data_ptr<int64_t>(), in.dist.data_ptr<scalar_t>(), in.H, in.W, geo.data_ptr<scalar_t>(), n_valid,
        groups.order.data_ptr<int64_t>(), groups.classes.data_ptr<int64_t>(), groups.offsets.data_ptr<int64_t>(),
        num_classes, static_cast<scalar_t>(min_iou), static_cast<scalar_t>(tie_eps),
        std::numeric_limits<scalar_t>::max(), ids.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // support[s] = number of pixels with id s: a histogram of id + 1 (bin 0 collects the -1s).
  const at::Tensor support =
      at::bincount(ids.view({-1}) + 1, /*weights=*/{}, /*minlength=*/in.S + 1).narrow(0, 1, in.S);
  return {ids, support.contiguous()};
}

}  // namespace iou_vote
}  // namespace instseg
