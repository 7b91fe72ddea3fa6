// Correlation + cropping (RDSNet, Sec. 3.2, Eq. 1 and the cropping module): CUDA kernels.
// Same definitions as the CPU kernels in corr_crop.cpp (see there and corr_crop.h):
//   z[k, i, j] = < phi_fg[k] - phi_bg[k], Psi[batch_idx[k], :, i, j] >  for pixel centres inside box k, else fill.
// All reductions are gathers (no atomics), so forward and backward are deterministic.
#include "corr_crop/corr_crop.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
// Only c10/cuda headers (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers that a minimal
// CUDA toolkit may lack).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace instseg {
namespace corr_crop {
namespace {

constexpr int kThreads = 256;
// Channels accumulated in registers at once by the dL/dPsi kernel.
constexpr int kChannelChunk = 16;

inline int64_t blocks_for(int64_t n) {
  // Grid-stride loops below; cap the grid at a size that fills any current GPU many times over.
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20));
}

// Pixel window (rows r0..r1, cols c0..c1, inclusive) of each object; empty for an out-of-range batch index.
__global__ void windows_kernel(const double* __restrict__ boxes, const int64_t* __restrict__ bidx, int64_t K,
                               int64_t N, int64_t h, int64_t w, int64_t* __restrict__ win) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < K; k += int64_t(blockDim.x) * gridDim.x) {
    object_window(boxes + 4 * k, bidx[k], N, h, w, win + 4 * k);
  }
}

// Forward: one thread per output element (k, i, j). Outside the box it writes `fill` and reads nothing;
// inside it forms the d-term dot product with the kernel difference (adjacent threads read adjacent
// pixels of one channel plane: coalesced).
template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ pix, const scalar_t* __restrict__ obj,
                               const int64_t* __restrict__ bidx, const int64_t* __restrict__ win, int64_t K,
                               int64_t d, int64_t h, int64_t w, scalar_t fill, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = h * w;
  const int64_t total = K * plane;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t k = idx / plane;
    const int64_t pix_idx = idx - k * plane;
    const int64_t i = pix_idx / w;
    const int64_t j = pix_idx - i * w;
    const int64_t* r = win + 4 * k;
    if (i < r[0] || i > r[1] || j < r[2] || j > r[3]) {
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
                                  const int64_t* __restrict__ bidx, const int64_t* __restrict__ win, int64_t N,
                                  int64_t K, int64_t d, int64_t h, int64_t w, scalar_t* __restrict__ gpix) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = h * w;
  const int64_t chunks = (d + kChannelChunk - 1) / kChannelChunk;
  const int64_t total = N * chunks * plane;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t pix_idx = idx % plane;
    const int64_t nc = idx / plane;
    const int64_t chunk = nc % chunks;
    const int64_t n = nc / chunks;
    const int64_t i = pix_idx / w;
    const int64_t j = pix_idx - i * w;
    const int64_t c0 = chunk * kChannelChunk;
    const int64_t nch = d - c0 < kChannelChunk ? d - c0 : kChannelChunk;
    acc_t acc[kChannelChunk];
#pragma unroll
    for (int cc = 0; cc < kChannelChunk; ++cc) acc[cc] = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t* r = win + 4 * k;
      if (bidx[k] != n || i < r[0] || i > r[1] || j < r[2] || j > r[3]) continue;
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
                                const int64_t* __restrict__ bidx, const int64_t* __restrict__ win, int64_t K,
                                int64_t d, int64_t h, int64_t w, scalar_t* __restrict__ gobj) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t warp_sums[kThreads / 32];
  const int64_t plane = h * w;
  for (int64_t item = blockIdx.x; item < K * d; item += gridDim.x) {
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
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = lane < kThreads / 32 ? warp_sums[lane] : acc_t(0);
      for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
      if (lane == 0) {
        gobj[(k * 2 + 0) * d + c] = static_cast<scalar_t>(acc);
        gobj[(k * 2 + 1) * d + c] = static_cast<scalar_t>(-acc);
      }
    }
    __syncthreads();  // warp_sums is reused by the next item
  }
}

void check_cuda(std::initializer_list<const at::Tensor*> tensors, const at::Tensor& ref) {
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->is_cuda() && t->device() == ref.device(),
                "correlation_crop (CUDA kernel): all inputs must be on ", ref.device(), ", got ", t->device());
  }
}

at::Tensor windows_cuda(const at::Tensor& batch_idx, const at::Tensor& boxes, int64_t N, int64_t h, int64_t w) {
  const int64_t K = batch_idx.size(0);
  const at::Tensor boxes_d = boxes.to(at::kDouble).contiguous();
  at::Tensor win = at::empty({K, 4}, batch_idx.options());
  windows_kernel<<<blocks_for(K), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      boxes_d.data_ptr<double>(), batch_idx.data_ptr<int64_t>(), K, N, h, w, win.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return win;
}

at::Tensor correlation_crop_forward_cuda(const at::Tensor& pixel_embed_, const at::Tensor& obj_embed_,
                                         const at::Tensor& batch_idx_, const at::Tensor& boxes, double fill) {
  check_inputs(pixel_embed_, obj_embed_, batch_idx_, boxes);
  check_cuda({&pixel_embed_, &obj_embed_, &batch_idx_, &boxes}, pixel_embed_);
  const c10::cuda::CUDAGuard guard(pixel_embed_.device());
  const at::Tensor pixel_embed = pixel_embed_.contiguous();
  const at::Tensor obj_embed = obj_embed_.contiguous();
  const at::Tensor batch_idx = batch_idx_.contiguous();
  const int64_t N = pixel_embed.size(0), d = pixel_embed.size(1), h = pixel_embed.size(2), w = pixel_embed.size(3);
  const int64_t K = obj_embed.size(0);
  at::Tensor out = at::empty({K, h, w}, pixel_embed.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor win = windows_cuda(batch_idx, boxes, N, h, w);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pixel_embed.scalar_type(), "correlation_crop_forward_cuda",
                                  [&] {
    forward_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        pixel_embed.data_ptr<scalar_t>(), obj_embed.data_ptr<scalar_t>(), batch_idx.data_ptr<int64_t>(),
        win.data_ptr<int64_t>(), K, d, h, w, static_cast<scalar_t>(fill), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> correlation_crop_backward_cuda(const at::Tensor& grad_out_,
                                                                  const at::Tensor& pixel_embed_,
                                                                  const at::Tensor& obj_embed_,
                                                                  const at::Tensor& batch_idx_,
                                                                  const at::Tensor& boxes) {
  check_inputs(pixel_embed_, obj_embed_, batch_idx_, boxes);
  check_cuda({&grad_out_, &pixel_embed_, &obj_embed_, &batch_idx_, &boxes}, pixel_embed_);
  const int64_t N = pixel_embed_.size(0), d = pixel_embed_.size(1), h = pixel_embed_.size(2),
                w = pixel_embed_.size(3);
  const int64_t K = obj_embed_.size(0);
  TORCH_CHECK(grad_out_.dim() == 3 && grad_out_.size(0) == K && grad_out_.size(1) == h && grad_out_.size(2) == w,
              "correlation_crop_backward: grad_out must be (K, h, w) = (", K, ", ", h, ", ", w, "), got ",
              grad_out_.sizes());
  TORCH_CHECK(grad_out_.scalar_type() == pixel_embed_.scalar_type(),
              "correlation_crop_backward: grad_out must have dtype ", pixel_embed_.scalar_type(), ", got ",
              grad_out_.scalar_type());
  const c10::cuda::CUDAGuard guard(pixel_embed_.device());
  const at::Tensor grad_out = grad_out_.contiguous();
  const at::Tensor pixel_embed = pixel_embed_.contiguous();
  const at::Tensor obj_embed = obj_embed_.contiguous();
  const at::Tensor batch_idx = batch_idx_.contiguous();
  at::Tensor grad_pixel = at::empty_like(pixel_embed);
  at::Tensor grad_obj = at::empty_like(obj_embed);
  if (K == 0 || h == 0 || w == 0 || d == 0) {
    grad_pixel.zero_();
    grad_obj.zero_();
    return {grad_pixel, grad_obj};
  }
  const at::Tensor win = windows_cuda(batch_idx, boxes, N, h, w);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t chunks = (d + kChannelChunk - 1) / kChannelChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pixel_embed.scalar_type(),
                                  "correlation_crop_backward_cuda", [&] {
    if (grad_pixel.numel() > 0) {
      grad_pixel_kernel<scalar_t><<<blocks_for(N * chunks * h * w), kThreads, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), obj_embed.data_ptr<scalar_t>(), batch_idx.data_ptr<int64_t>(),
          win.data_ptr<int64_t>(), N, K, d, h, w, grad_pixel.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t items = K * d;
    grad_obj_kernel<scalar_t><<<std::min<int64_t>(items, int64_t(1) << 20), kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), pixel_embed.data_ptr<scalar_t>(), batch_idx.data_ptr<int64_t>(),
        win.data_ptr<int64_t>(), K, d, h, w, grad_obj.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_pixel, grad_obj};
}

}  // namespace

TORCH_LIBRARY_IMPL(instseg, CUDA, m) {
  m.impl("correlation_crop_forward", &correlation_crop_forward_cuda);
  m.impl("correlation_crop_backward", &correlation_crop_backward_cuda);
}

}  // namespace corr_crop
}  // namespace instseg
