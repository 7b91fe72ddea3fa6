// Correlation + cropping (RDSNet, Sec. 3.2, Eq. 1 and the cropping module): the CPU kernels (parallel over
// pixel rows with at::parallel_for). Schemas and argument checks: correlation_crop.cpp.
//
//   z[k, i, j] = < obj_embed[k, 0] - obj_embed[k, 1], pixel_embed[batch_idx[k], :, i, j] >  inside box k,
//              = fill                                                                     outside,
// where "inside" means the pixel centre (j + 0.5, i + 0.5) lies in the box, edges included. The logit z is
// exact for Eq. 1: softmax over the two correlation channels (l_fg, l_bg) is (sigmoid(z), sigmoid(-z)).
//
//   grad_pixel_embed[n, c, i, j] = sum_{k in image n, (i, j) in box k} grad_z[k, i, j] * (fg - bg)[k, c]
//   grad_obj_embed[k, 0, c] = + sum_{(i, j) in box k} grad_z[k, i, j] * pixel_embed[n, c, i, j]
//   grad_obj_embed[k, 1, c] = - (the same sum)
// Pixels outside the box contribute nothing (their output is the constant `fill`).
#include "correlation_crop/correlation_crop.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace instseg {
namespace correlation_crop {

namespace {

// Pixel window of every object (see object_window); throws for a batch index outside [0, N).
std::vector<int64_t> object_windows(const at::Tensor& batch_idx, const at::Tensor& boxes, int64_t num_images, int64_t h,
                                    int64_t w) {
  const int64_t K = batch_idx.size(0);
  const at::Tensor boxes_d = boxes.to(at::kDouble).contiguous();
  const double* bx = boxes_d.data_ptr<double>();
  const int64_t* bi = batch_idx.data_ptr<int64_t>();
  std::vector<int64_t> win(static_cast<size_t>(K) * 4);
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(bi[k] >= 0 && bi[k] < num_images, "correlation_crop: batch_idx[", k, "] = ", bi[k], " is outside [0, ",
                num_images, ")");
    object_window(bx + 4 * k, bi[k], num_images, h, w, win.data() + 4 * k);
  }
  return win;
}

// Pixels inside the windows of all objects together: the work of a pass is d multiply-adds per such pixel.
int64_t window_pixels(const std::vector<int64_t>& win) {
  int64_t total = 0;
  for (size_t k = 0; k + 3 < win.size(); k += 4) {
    total += std::max<int64_t>(0, win[k + 1] - win[k] + 1) * std::max<int64_t>(0, win[k + 3] - win[k + 2] + 1);
  }
  return total;
}

// kdiff[k, c] = phi_fg[k, c] - phi_bg[k, c] in the accumulation type: Eq. 1's two logits enter the
// softmax only through their difference, so one kernel does the work of two.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> kernel_difference(const scalar_t* obj, int64_t K, int64_t d) {
  std::vector<acc_t> kdiff(static_cast<size_t>(K) * d);
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t c = 0; c < d; ++c) {
      kdiff[k * d + c] = static_cast<acc_t>(obj[(k * 2 + 0) * d + c]) - static_cast<acc_t>(obj[(k * 2 + 1) * d + c]);
    }
  }
  return kdiff;
}

// Objects grouped by image (CSR: the objects of image n are order[start[n] .. start[n + 1]), in index order).
struct ImageObjects {
  std::vector<int64_t> start, order;
  ImageObjects(const int64_t* bidx, int64_t N, int64_t K)
      : start(static_cast<size_t>(N) + 1, 0), order(static_cast<size_t>(K)) {
    for (int64_t k = 0; k < K; ++k) start[bidx[k] + 1]++;
    for (int64_t n = 0; n < N; ++n) start[n + 1] += start[n];
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    for (int64_t k = 0; k < K; ++k) order[pos[bidx[k]]++] = k;
  }
};

// Runs body(n, i, buffer) for every pixel row (image n, row i) of the embedding, in parallel.
//
// The work is organised by pixel row rather than by object: the d channel rows Psi[n, :, i, :] (d * w values,
// a few tens of KB) stay in cache while every object whose box covers row i uses them, so Psi is read from
// memory once instead of once per object. Rows are interleaved among the threads (parallel_for_interleaved), so
// each thread gets rows from the whole height of every image (box coverage, hence cost, varies smoothly with the
// row). Each row is handled by exactly one thread: no two threads write one row.
template <typename acc_t, typename Body>
void for_each_pixel_row(int64_t N, int64_t h, int64_t cost_per_row, size_t buffer_size, const Body& body) {
  parallel_for_interleaved(N * h, cost_per_row, [&](const auto& for_each_row) {
    std::vector<acc_t> buffer(buffer_size);
    for_each_row([&](int64_t row) { body(row / h, row % h, buffer.data()); });
  });
}

// One pass over a row segment of length n, for one channel: a[j] += alpha * g[j] (the dL/dPsi contribution)
// and the return value sum_j g[j] * p[j] (the dL/dphi contribution). The sum uses 8 independent partial
// sums, so it vectorises without reassociating floating-point additions and is deterministic.
template <typename scalar_t, typename acc_t>
inline acc_t axpy_dot(acc_t alpha, const scalar_t* __restrict__ g, const scalar_t* __restrict__ p,
                      acc_t* __restrict__ a, int64_t n) {
  acc_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) {
      const acc_t gv = static_cast<acc_t>(g[j + l]);
      a[j + l] += alpha * gv;
      lane[l] += gv * static_cast<acc_t>(p[j + l]);
    }
  }
  for (; j < n; ++j) {
    const acc_t gv = static_cast<acc_t>(g[j]);
    a[j] += alpha * gv;
    lane[0] += gv * static_cast<acc_t>(p[j]);
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Forward (Eq. 1 + crop), on an output already set to `fill`. Row (n, i) computes, for every object k of
// image n whose box covers row i, the d-term dot products (phi_fg - phi_bg) . Psi over the box's columns,
// accumulated four channels at a time over the contiguous row segment (vectorisable, and the accumulator
// row is loaded and stored once per four channels).
template <typename scalar_t>
void forward_kernel(const scalar_t* pix, const scalar_t* obj, const int64_t* bidx, const std::vector<int64_t>& win,
                    int64_t N, int64_t K, int64_t d, int64_t h, int64_t w, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> kdiff = kernel_difference<scalar_t, acc_t>(obj, K, d);
  const ImageObjects objects(bidx, N, K);
  const int64_t plane = h * w;
  const int64_t cost_per_row = d * window_pixels(win) / std::max<int64_t>(1, N * h) + w;
  for_each_pixel_row<acc_t>(N, h, cost_per_row, static_cast<size_t>(w), [&](int64_t n, int64_t i, acc_t* acc) {
    const scalar_t* prow = pix + n * d * plane + i * w;  // Psi[n, 0, i, :]
    for (int64_t s = objects.start[n]; s < objects.start[n + 1]; ++s) {
      const int64_t k = objects.order[s];
      const int64_t* r = win.data() + 4 * k;
      if (i < r[0] || i > r[1]) continue;
      const int64_t j0 = r[2], j1 = r[3] + 1;
      acc_t* __restrict__ a = acc;
      std::fill(a + j0, a + j1, acc_t(0));
      const acc_t* kd = kdiff.data() + k * d;
      int64_t c = 0;
      for (; c + 4 <= d; c += 4) {
        const acc_t k0 = kd[c], k1 = kd[c + 1], k2 = kd[c + 2], k3 = kd[c + 3];
        const scalar_t* __restrict__ p0 = prow + c * plane;
        const scalar_t* __restrict__ p1 = p0 + plane;
        const scalar_t* __restrict__ p2 = p1 + plane;
        const scalar_t* __restrict__ p3 = p2 + plane;
        for (int64_t j = j0; j < j1; ++j) {
          a[j] += (k0 * static_cast<acc_t>(p0[j]) + k1 * static_cast<acc_t>(p1[j])) +
                  (k2 * static_cast<acc_t>(p2[j]) + k3 * static_cast<acc_t>(p3[j]));
        }
      }
      for (; c < d; ++c) {
        const acc_t kc = kd[c];
        const scalar_t* __restrict__ p = prow + c * plane;
        for (int64_t j = j0; j < j1; ++j) {
          a[j] += kc * static_cast<acc_t>(p[j]);
        }
      }
      scalar_t* orow = out + (k * h + i) * w;
      for (int64_t j = j0; j < j1; ++j) {
        orow[j] = static_cast<scalar_t>(a[j]);
      }
    }
  });
}

// Backward. Row (n, i) visits the objects of image n whose box covers row i and, for each channel c,
//   dL/dPsi[n, c, i, j0:j1] += grad_z[k, i, j0:j1] * (phi_fg - phi_bg)[k, c]      (accumulated in a d x w
//                                                                                  buffer, written once)
//   partial[k, i, c]         = sum_j grad_z[k, i, j] * Psi[n, c, i, j]             (this row's share of dL/dphi)
// Then dL/dphi_fg[k, c] = sum over the box rows of partial[k, :, c] and dL/dphi_bg = -dL/dphi_fg. No atomics:
// every gradient element has one writer, and the sums run in a fixed order (deterministic).
template <typename scalar_t>
void backward_kernel(const scalar_t* gout, const scalar_t* pix, const scalar_t* obj, const int64_t* bidx,
                     const std::vector<int64_t>& win, int64_t N, int64_t K, int64_t d, int64_t h, int64_t w,
                     at::opmath_type<scalar_t>* partial, scalar_t* gpix, scalar_t* gobj) {
  using acc_t = at::opmath_type<scalar_t>;
  const std::vector<acc_t> kdiff = kernel_difference<scalar_t, acc_t>(obj, K, d);
  const ImageObjects objects(bidx, N, K);
  const int64_t plane = h * w;

  const int64_t cost_per_row = 2 * d * window_pixels(win) / std::max<int64_t>(1, N * h) + d * w;
  for_each_pixel_row<acc_t>(N, h, cost_per_row, static_cast<size_t>(d) * w, [&](int64_t n, int64_t i, acc_t* acc) {
    const scalar_t* prow = pix + n * d * plane + i * w;  // Psi[n, 0, i, :]
    bool touched = false;
    for (int64_t s = objects.start[n]; s < objects.start[n + 1]; ++s) {
      const int64_t k = objects.order[s];
      const int64_t* r = win.data() + 4 * k;
      if (i < r[0] || i > r[1]) continue;
      if (!touched) {
        std::fill(acc, acc + d * w, acc_t(0));
        touched = true;
      }
      const int64_t j0 = r[2], j1 = r[3] + 1;
      const scalar_t* __restrict__ g = gout + (k * h + i) * w;
      const acc_t* kd = kdiff.data() + k * d;
      acc_t* part = partial + (k * h + i) * d;
      for (int64_t c = 0; c < d; ++c) {
        part[c] = axpy_dot<scalar_t, acc_t>(kd[c], g + j0, prow + c * plane + j0, acc + c * w + j0, j1 - j0);
      }
    }
    for (int64_t c = 0; c < d; ++c) {
      scalar_t* dst = gpix + (n * d + c) * plane + i * w;
      if (!touched) {
        std::fill(dst, dst + w, scalar_t(0));
      } else {
        const acc_t* a = acc + c * w;
        for (int64_t j = 0; j < w; ++j) dst[j] = static_cast<scalar_t>(a[j]);
      }
    }
  });

  at::parallel_for(0, K, grain_for(h * d), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(static_cast<size_t>(d));
    for (int64_t k = begin; k < end; ++k) {
      const int64_t* r = win.data() + 4 * k;
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for (int64_t i = r[0]; i <= r[1]; ++i) {
        const acc_t* part = partial + (k * h + i) * d;
        for (int64_t c = 0; c < d; ++c) sum[c] += part[c];
      }
      for (int64_t c = 0; c < d; ++c) {
        gobj[(k * 2 + 0) * d + c] = static_cast<scalar_t>(sum[c]);
        gobj[(k * 2 + 1) * d + c] = static_cast<scalar_t>(-sum[c]);
      }
    }
  });
}

}  // namespace

at::Tensor forward_cpu(const at::Tensor& pixel_embed, const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                       const at::Tensor& boxes, double fill) {
  const Inputs in(pixel_embed, obj_embed, batch_idx);
  const Sizes& s = in.size;
  // Cropping module: every pixel starts as `fill`; the kernel overwrites the pixels inside each box.
  at::Tensor out = at::full({s.K, s.h, s.w}, fill, in.pixel_embed.options());
  if (out.numel() == 0) {
    return out;
  }
  const std::vector<int64_t> win = object_windows(in.batch_idx, boxes, s.N, s.h, s.w);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.pixel_embed.scalar_type(), "correlation_crop_forward", [&] {
        forward_kernel<scalar_t>(in.pixel_embed.data_ptr<scalar_t>(), in.obj_embed.data_ptr<scalar_t>(),
                                 in.batch_idx.data_ptr<int64_t>(), win, s.N, s.K, s.d, s.h, s.w,
                                 out.data_ptr<scalar_t>());
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& pixel_embed,
                                                const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                                                const at::Tensor& boxes) {
  const Inputs in(pixel_embed, obj_embed, batch_idx);
  if (in.empty()) {
    return in.zero_gradients();
  }
  const Sizes& s = in.size;
  const std::vector<int64_t> win = object_windows(in.batch_idx, boxes, s.N, s.h, s.w);
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_pixel = at::empty_like(in.pixel_embed), grad_obj = at::empty_like(in.obj_embed);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.pixel_embed.scalar_type(), "correlation_crop_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        // Per-row shares of dL/dphi, (K, h, d) in the accumulation type; only rows inside a box are written/read.
        at::Tensor partial =
            at::empty({s.K, s.h, s.d}, in.pixel_embed.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), in.pixel_embed.data_ptr<scalar_t>(),
                                  in.obj_embed.data_ptr<scalar_t>(), in.batch_idx.data_ptr<int64_t>(), win, s.N, s.K,
                                  s.d, s.h, s.w, partial.data_ptr<acc_t>(), grad_pixel.data_ptr<scalar_t>(),
                                  grad_obj.data_ptr<scalar_t>());
      });
  return {grad_pixel, grad_obj};
}

}  // namespace correlation_crop
}  // namespace instseg
