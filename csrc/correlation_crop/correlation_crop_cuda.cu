// Correlation + cropping (RDSNet, Sec. 3.2, Eq. 1 and the cropping module): the CUDA kernels. Schemas and
// argument checks: correlation_crop.cpp. Same definitions as the CPU kernels (correlation_crop_cpu.cpp and
// correlation_crop.h):
//   z[k, i, j] = < phi_fg[k] - phi_bg[k], Psi[batch_idx[k], :, i, j] >  for pixel centres inside box k, else fill.
// All reductions are gathers (no atomics), so forward and backward are deterministic.
#include "correlation_crop/correlation_crop.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
// Only c10/cuda headers (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers that a minimal
// CUDA toolkit may lack).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

namespace instseg {
namespace correlation_crop {
namespace {

// Channels accumulated in registers at once by the dL/dPsi kernel.
constexpr int kChannelChunk = 16;

// Whether pixel (i, j) lies in the window r (rows r[0]..r[1], columns r[2]..r[3], inclusive).
__device__ __forceinline__ bool in_window(const int64_t* r, int64_t i, int64_t j) {
  return i >= r[0] && i <= r[1] && j >= r[2] && j <= r[3];
}

// Pixel window (rows r0..r1, cols c0..c1, inclusive) of each object; empty for an out-of-range batch index.
__global__ void windows_kernel(const double* __restrict__ boxes, const int64_t* __restrict__ bidx, int64_t K, int64_t N,
                               int64_t h, int64_t w, int64_t* __restrict__ win) {
  INSTSEG_GRID_STRIDE_LOOP(k, K) { object_window(boxes + 4 * k, bidx[k], N, h, w, win + 4 * k); }
}

// Forward: one thread per output element (k, i, j). Outside the box it writes `fill` and reads nothing;
// inside it forms the d-term dot product with the kernel difference (adjacent threads read adjacent
// pixels of one channel plane: coalesced).
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ pix, const scalar_t* __restrict__ obj,
                               const int64_t* __restrict__ bidx, const int64_t* __restrict__ win, const Sizes s,
                               scalar_t fill, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = s.plane(), d = s.d;
  INSTSEG_GRID_STRIDE_LOOP(idx, s.K * plane) {
    const int64_t k = idx / plane;
    const int64_t pix_idx = idx - k * plane;
    if (!in_window(win + 4 * k, pix_idx / s.w, pix_idx % s.w)) {
      out[idx] = fill;
      continue;
    }
    const scalar_t* p = pix + bidx[k] * d * plane + pix_idx;
    const scalar_t* fg = obj + k * 2 * d;
    const scalar_t* bg = fg + d;
    acc_t acc = 0;
    for (int64_t c = 0; c < d; ++c) {
      acc += (static_cast<acc_t>(fg[c]) - static_cast<acc_t>(bg[c])) * static_cast<acc_t>(p[c * plane]);
    }
    out[idx] = static_cast<scalar_t>(acc);
  }
}

// dL/dPsi: one thread per (image n, channel chunk, pixel). It gathers grad_z * (fg - bg) over the
// objects of image n whose box holds the pixel, for kChannelChunk channels in registers, and writes each
// gradient element exactly once (zero where no box covers the pixel).
template <typename scalar_t>
__global__ void grad_pixel_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ obj,
                                  const int64_t* __restrict__ bidx, const int64_t* __restrict__ win, const Sizes s,
                                  scalar_t* __restrict__ gpix) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = s.plane(), d = s.d, chunks = (s.d + kChannelChunk - 1) / kChannelChunk;
  INSTSEG_GRID_STRIDE_LOOP(idx, s.N * chunks * plane) {
    const int64_t pix_idx = idx % plane;
    const int64_t chunk = (idx / plane) % chunks;
    const int64_t n = idx / plane / chunks;
    const int64_t i = pix_idx / s.w;
    const int64_t j = pix_idx % s.w;
    const int64_t c0 = chunk * kChannelChunk;
    const int64_t nch = d - c0 < kChannelChunk ? d - c0 : kChannelChunk;
    acc_t acc[kChannelChunk];
#pragma unroll
    for (int cc = 0; cc < kChannelChunk; ++cc) acc[cc] = 0;
    for (int64_t k = 0; k < s.K; ++k) {
      if (bidx[k] != n || !in_window(win + 4 * k, i, j)) continue;
      const acc_t g = static_cast<acc_t>(gout[k * plane + pix_idx]);
      const scalar_t* fg = obj + k * 2 * d + c0;
      const scalar_t* bg = fg + d;
#pragma unroll
      for (int cc = 0; cc < kChannelChunk; ++cc) {
        if (cc < nch) acc[cc] += g * (static_cast<acc_t>(fg[cc]) - static_cast<acc_t>(bg[cc]));
      }
    }
    scalar_t* dst = gpix + (n * d + c0) * plane + pix_idx;
#pragma unroll
    for (int cc = 0; cc < kChannelChunk; ++cc) {
      if (cc < nch) dst[cc * plane] = static_cast<scalar_t>(acc[cc]);
    }
  }
}

// dL/dphi: one block per (object k, channel c): the block reduces grad_z[k] * Psi[n, c] over the box pixels;
// the foreground kernel gets +sum, the background kernel -sum.
template <typename scalar_t>
__global__ void grad_obj_kernel(const scalar_t* __restrict__ gout, const scalar_t* __restrict__ pix,
                                const int64_t* __restrict__ bidx, const int64_t* __restrict__ win, const Sizes s,
                                scalar_t* __restrict__ gobj) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t warp_sums[kThreadsPerBlock / kWarpSize];
  const int64_t plane = s.plane(), d = s.d, w = s.w;
  for (int64_t item = blockIdx.x; item < s.K * d; item += gridDim.x) {
    const int64_t k = item / d;
    const int64_t c = item - k * d;
    const int64_t* r = win + 4 * k;
    const int64_t bh = r[1] - r[0] + 1;
    const int64_t bw = r[3] - r[2] + 1;
    const int64_t count = (bh > 0 && bw > 0) ? bh * bw : 0;
    acc_t acc = 0;
    if (count > 0) {
      const scalar_t* g = gout + k * plane;
      const scalar_t* p = pix + (bidx[k] * d + c) * plane;
      for (int64_t t = threadIdx.x; t < count; t += blockDim.x) {
        const int64_t i = r[0] + t / bw;
        const int64_t j = r[2] + t % bw;
        acc += static_cast<acc_t>(g[i * w + j]) * static_cast<acc_t>(p[i * w + j]);
      }
    }
    // Block reduction: warp shuffles, then the first warp over the per-warp sums.
    acc = warp_sum(acc);
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = warp_sum(lane < kThreadsPerBlock / kWarpSize ? warp_sums[lane] : acc_t(0));
      if (lane == 0) {
        gobj[(k * 2 + 0) * d + c] = static_cast<scalar_t>(acc);
        gobj[(k * 2 + 1) * d + c] = static_cast<scalar_t>(-acc);
      }
    }
    __syncthreads();  // warp_sums is reused by the next item
  }
}

at::Tensor windows_cuda(const at::Tensor& batch_idx, const at::Tensor& boxes, int64_t N, int64_t h, int64_t w) {
  const int64_t K = batch_idx.size(0);
  const at::Tensor boxes_d = boxes.to(at::kDouble).contiguous();
  at::Tensor win = at::empty({K, 4}, batch_idx.options());
  windows_kernel<<<blocks_for(K), kThreadsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      boxes_d.data_ptr<double>(), batch_idx.data_ptr<int64_t>(), K, N, h, w, win.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return win;
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& pixel_embed, const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                        const at::Tensor& boxes, double fill) {
  const c10::cuda::CUDAGuard guard(pixel_embed.device());
  const Inputs in(pixel_embed, obj_embed, batch_idx);
  const Sizes& s = in.size;
  at::Tensor out = at::empty({s.K, s.h, s.w}, in.pixel_embed.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor win = windows_cuda(in.batch_idx, boxes, s.N, s.h, s.w);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.pixel_embed.scalar_type(), "correlation_crop_forward_cuda", [&] {
        forward_kernel<scalar_t><<<blocks_for(out.numel()), kThreadsPerBlock, 0, stream>>>(
            in.pixel_embed.data_ptr<scalar_t>(), in.obj_embed.data_ptr<scalar_t>(), in.batch_idx.data_ptr<int64_t>(),
            win.data_ptr<int64_t>(), s, static_cast<scalar_t>(fill), out.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& pixel_embed,
                                                 const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                                                 const at::Tensor& boxes) {
  const c10::cuda::CUDAGuard guard(pixel_embed.device());
  const Inputs in(pixel_embed, obj_embed, batch_idx);
  if (in.empty()) {
    return in.zero_gradients();
  }
  const Sizes& s = in.size;
  const at::Tensor win = windows_cuda(in.batch_idx, boxes, s.N, s.h, s.w);
  const at::Tensor grad = grad_out.contiguous();
  at::Tensor grad_pixel = at::empty_like(in.pixel_embed), grad_obj = at::empty_like(in.obj_embed);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (s.d + kChannelChunk - 1) / kChannelChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, in.pixel_embed.scalar_type(), "correlation_crop_backward_cuda", [&] {
        grad_pixel_kernel<scalar_t><<<blocks_for(s.N * chunks * s.h * s.w), kThreadsPerBlock, 0, stream>>>(
            grad.data_ptr<scalar_t>(), in.obj_embed.data_ptr<scalar_t>(), in.batch_idx.data_ptr<int64_t>(),
            win.data_ptr<int64_t>(), s, grad_pixel.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_obj_kernel<scalar_t><<<blocks_for(s.K * s.d, 1), kThreadsPerBlock, 0, stream>>>(
            grad.data_ptr<scalar_t>(), in.pixel_embed.data_ptr<scalar_t>(), in.batch_idx.data_ptr<int64_t>(),
            win.data_ptr<int64_t>(), s, grad_obj.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_pixel, grad_obj};
}

}  // namespace correlation_crop
}  // namespace instseg
