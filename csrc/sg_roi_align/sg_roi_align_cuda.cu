// Shape-guided RoIAlign (DSG, Sec. 3.4, Eq. 1-2): CUDA kernels. Schemas and CPU kernels: sg_roi_align.cpp;
// the sampling rules (Eq. 1, RoIAlign's grid and border rules) are shared through sg_roi_align.h.
//
// forward:     one thread per output element (k, c, ph, pw): mean over the bin's samples of f * (1 + p) (Eq. 2).
// grad_input:  one thread per output element; adds grad * w_j * (1 + p_i) / N to the four neighbours of
//              every sample with gpuAtomicAdd (as RoIAlign's backward).
// grad_probs:  one warp per bin (k, ph, pw): for each sample, the lanes split the channels to form
//              sum_c grad[k, c, ph, pw] * f_c(a_i, b_i) / N (= d out / d p_i summed over channels), reduce it
//              with warp shuffles, and lane 0 spreads it onto probs[k] with p's bilinear weights.
#include "sg_roi_align/sg_roi_align.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

namespace instseg {
namespace sg_roi_align {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

inline int64_t blocks_for(int64_t work, int64_t per_block) {
  // Grid-stride loops below cover any remainder, so the grid can be capped.
  return std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, int64_t(1) << 20));
}

// Batch image of RoI `roi`, or -1 when rois[k, 0] is not an index in [0, num_images) (or NaN): such a RoI is
// treated as empty (zero output, no gradient) so that a kernel never reads out of bounds. The CPU kernel
// raises instead; on the GPU that would need a device-to-host sync per call.
template <typename T>
__device__ __forceinline__ int64_t batch_index(const T* roi, int64_t num_images) {
  const T v = roi[0];
  return (v >= T(0) && v < static_cast<T>(num_images)) ? static_cast<int64_t>(v) : -1;
}

// f(a, b) * (1 + p(c, d)) summed over the samples of bin (ph, pw) of one RoI, for one channel plane `f`.
template <typename T>
__device__ __forceinline__ T weighted_bin_sum(const T* f, const T* map, const RoiGeometry<T>& g, int64_t ph,
                                              int64_t pw, int64_t height, int64_t width, int64_t pooled_height,
                                              int64_t pooled_width, int64_t probs_height, int64_t probs_width) {
  T acc = 0;
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    const Lerp<T> y = feature_lerp<T>(sample_coord<T>(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
    const Lerp<T> yp = probs_lerp<T>(ph, iy, g.grid_h, pooled_height, probs_height);
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      const Lerp<T> x = feature_lerp<T>(sample_coord<T>(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
      const Lerp<T> xp = probs_lerp<T>(pw, ix, g.grid_w, pooled_width, probs_width);
      const T value = y.w_lo * x.w_lo * f[y.lo * width + x.lo] + y.w_lo * x.w_hi * f[y.lo * width + x.hi] +
                      y.w_hi * x.w_lo * f[y.hi * width + x.lo] + y.w_hi * x.w_hi * f[y.hi * width + x.hi];
      acc += (T(1) + probs_value<T>(map, probs_width, yp, xp)) * value;
    }
  }
  return acc;
}

template <typename T>
__global__ void forward_kernel(int64_t total, const T* __restrict__ input, const T* __restrict__ rois,
                               const T* __restrict__ probs, T* __restrict__ output, T spatial_scale,
                               int64_t num_images, int64_t channels, int64_t height, int64_t width,
                               int64_t pooled_height, int64_t pooled_width, int64_t probs_height,
                               int64_t probs_width, int64_t sampling_ratio, bool aligned) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % pooled_width;
    const int64_t ph = (index / pooled_width) % pooled_height;
    const int64_t c = (index / (pooled_width * pooled_height)) % channels;
    const int64_t k = index / (pooled_width * pooled_height * channels);
    const T* roi = rois + k * 5;
    const int64_t b = batch_index(roi, num_images);
    if (b < 0) {
      output[index] = T(0);
      continue;
    }
    const RoiGeometry<T> g = roi_geometry<T>(roi, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    const T* f = input + (b * channels + c) * height * width;
    const T* map = probs + k * probs_height * probs_width;
    const T acc = weighted_bin_sum<T>(f, map, g, ph, pw, height, width, pooled_height, pooled_width, probs_height,
                                      probs_width);
    output[index] = acc / g.count;  // Eq. 2's mean over the N samples
  }
}

template <typename T>
__global__ void grad_input_kernel(int64_t total, const T* __restrict__ grad, const T* __restrict__ rois,
                                  const T* __restrict__ probs, T* __restrict__ grad_input, T spatial_scale,
                                  int64_t num_images, int64_t channels, int64_t height, int64_t width,
                                  int64_t pooled_height, int64_t pooled_width, int64_t probs_height,
                                  int64_t probs_width, int64_t sampling_ratio, bool aligned) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < total;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % pooled_width;
    const int64_t ph = (index / pooled_width) % pooled_height;
    const int64_t c = (index / (pooled_width * pooled_height)) % channels;
    const int64_t k = index / (pooled_width * pooled_height * channels);
    const T* roi = rois + k * 5;
    const int64_t b = batch_index(roi, num_images);
    const T g_out = grad[index];
    if (b < 0 || g_out == T(0)) {
      continue;
    }
    const RoiGeometry<T> g = roi_geometry<T>(roi, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    const T gb = g_out / g.count;
    T* gi = grad_input + (b * channels + c) * height * width;
    const T* map = probs + k * probs_height * probs_width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const Lerp<T> y = feature_lerp<T>(sample_coord<T>(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
      const Lerp<T> yp = probs_lerp<T>(ph, iy, g.grid_h, pooled_height, probs_height);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const Lerp<T> x = feature_lerp<T>(sample_coord<T>(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
        if ((y.w_lo == T(0) && y.w_hi == T(0)) || (x.w_lo == T(0) && x.w_hi == T(0))) {
          continue;  // the sample lies outside the feature map: f = 0 there, no gradient
        }
        const Lerp<T> xp = probs_lerp<T>(pw, ix, g.grid_w, pooled_width, probs_width);
        const T gs = gb * (T(1) + probs_value<T>(map, probs_width, yp, xp));
        gpuAtomicAdd(gi + y.lo * width + x.lo, gs * y.w_lo * x.w_lo);
        gpuAtomicAdd(gi + y.lo * width + x.hi, gs * y.w_lo * x.w_hi);
        gpuAtomicAdd(gi + y.hi * width + x.lo, gs * y.w_hi * x.w_lo);
        gpuAtomicAdd(gi + y.hi * width + x.hi, gs * y.w_hi * x.w_hi);
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename T>
__global__ void grad_probs_kernel(int64_t total_bins, const T* __restrict__ grad, const T* __restrict__ input,
                                  const T* __restrict__ rois, T* __restrict__ grad_probs, T spatial_scale,
                                  int64_t num_images, int64_t channels, int64_t height, int64_t width,
                                  int64_t pooled_height, int64_t pooled_width, int64_t probs_height,
                                  int64_t probs_width, int64_t sampling_ratio, bool aligned) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const int64_t warp_stride = warps_per_block * gridDim.x;
  // The loop bounds depend only on the warp's bin, so all 32 lanes stay converged for the shuffles.
  for (int64_t bin = blockIdx.x * warps_per_block + threadIdx.x / kWarp; bin < total_bins; bin += warp_stride) {
    const int64_t pw = bin % pooled_width;
    const int64_t ph = (bin / pooled_width) % pooled_height;
    const int64_t k = bin / (pooled_width * pooled_height);
    const T* roi = rois + k * 5;
    const int64_t b = batch_index(roi, num_images);
    if (b < 0) {
      continue;
    }
    const RoiGeometry<T> g = roi_geometry<T>(roi, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    const int64_t bins = pooled_height * pooled_width, plane = height * width;
    const T* go = grad + k * channels * bins + ph * pooled_width + pw;  // grad[k, c, ph, pw] = go[c * bins]
    const T* in = input + b * channels * plane;
    T* gp = grad_probs + k * probs_height * probs_width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const Lerp<T> y = feature_lerp<T>(sample_coord<T>(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const Lerp<T> x = feature_lerp<T>(sample_coord<T>(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
        if ((y.w_lo == T(0) && y.w_hi == T(0)) || (x.w_lo == T(0) && x.w_hi == T(0))) {
          continue;  // f = 0 outside the feature map: d out / d p is 0 (uniform across the warp)
        }
        const int64_t p1 = y.lo * width + x.lo, p2 = y.lo * width + x.hi;
        const int64_t p3 = y.hi * width + x.lo, p4 = y.hi * width + x.hi;
        const T w1 = y.w_lo * x.w_lo, w2 = y.w_lo * x.w_hi, w3 = y.w_hi * x.w_lo, w4 = y.w_hi * x.w_hi;
        T partial = 0;
        for (int64_t c = lane; c < channels; c += kWarp) {
          const T* f = in + c * plane;
          partial += go[c * bins] * (w1 * f[p1] + w2 * f[p2] + w3 * f[p3] + w4 * f[p4]);
        }
        const T dp = warp_sum(partial);
        if (lane == 0 && dp != T(0)) {
          const T v = dp / g.count;
          const Lerp<T> yp = probs_lerp<T>(ph, iy, g.grid_h, pooled_height, probs_height);
          const Lerp<T> xp = probs_lerp<T>(pw, ix, g.grid_w, pooled_width, probs_width);
          gpuAtomicAdd(gp + yp.lo * probs_width + xp.lo, v * yp.w_lo * xp.w_lo);
          gpuAtomicAdd(gp + yp.lo * probs_width + xp.hi, v * yp.w_lo * xp.w_hi);
          gpuAtomicAdd(gp + yp.hi * probs_width + xp.lo, v * yp.w_hi * xp.w_lo);
          gpuAtomicAdd(gp + yp.hi * probs_width + xp.hi, v * yp.w_hi * xp.w_hi);
        }
      }
    }
  }
}

at::Tensor sg_roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs,
                                     double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                     int64_t sampling_ratio, bool aligned) {
  check_inputs(input, rois, probs, pooled_height, pooled_width);
  TORCH_CHECK(input.is_cuda(), "sg_roi_align: the CUDA kernel got tensors on ", input.device());
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor output = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous(), rois_c = rois.contiguous(), probs_c = probs.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sg_roi_align_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        total, input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), probs_c.data_ptr<scalar_t>(),
        output.data_ptr<scalar_t>(), static_cast<scalar_t>(spatial_scale), input.size(0), input.size(1),
        input.size(2), input.size(3), pooled_height, pooled_width, probs.size(1), probs.size(2), sampling_ratio,
        aligned);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> sg_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                              const at::Tensor& rois, const at::Tensor& probs,
                                                              double spatial_scale, int64_t pooled_height,
                                                              int64_t pooled_width, int64_t sampling_ratio,
                                                              bool aligned, std::array<bool, 2> output_mask) {
  check_inputs(input, rois, probs, pooled_height, pooled_width);
  check_grad(grad, input, rois, pooled_height, pooled_width);
  TORCH_CHECK(input.is_cuda(), "sg_roi_align: the CUDA kernel got tensors on ", input.device());
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor grad_input, grad_probs;
  if (output_mask[0]) {
    grad_input = at::zeros_like(input, at::MemoryFormat::Contiguous);
  }
  if (output_mask[1]) {
    grad_probs = at::zeros_like(probs, at::MemoryFormat::Contiguous);
  }
  const int64_t total = grad.numel();
  if (total == 0 || !(output_mask[0] || output_mask[1])) {
    return {grad_input, grad_probs};
  }
  const at::Tensor grad_c = grad.contiguous(), rois_c = rois.contiguous(), probs_c = probs.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sg_roi_align_backward_cuda", [&] {
    const scalar_t scale = static_cast<scalar_t>(spatial_scale);
    if (output_mask[0]) {
      grad_input_kernel<scalar_t><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          total, grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), probs_c.data_ptr<scalar_t>(),
          grad_input.data_ptr<scalar_t>(), scale, input.size(0), input.size(1), input.size(2), input.size(3),
          pooled_height, pooled_width, probs.size(1), probs.size(2), sampling_ratio, aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[1]) {
      const at::Tensor input_c = input.contiguous();
      const int64_t total_bins = rois.size(0) * pooled_height * pooled_width;
      grad_probs_kernel<scalar_t><<<blocks_for(total_bins, kThreads / kWarp), kThreads, 0, stream>>>(
          total_bins, grad_c.data_ptr<scalar_t>(), input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(),
          grad_probs.data_ptr<scalar_t>(), scale, input.size(0), input.size(1), input.size(2), input.size(3),
          pooled_height, pooled_width, probs.size(1), probs.size(2), sampling_ratio, aligned);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_probs};
}

}  // namespace
}  // namespace sg_roi_align
}  // namespace instseg

TORCH_LIBRARY_IMPL(instseg, CUDA, m) {
  m.impl("sg_roi_align_forward", &instseg::sg_roi_align::sg_roi_align_forward_cuda);
  m.impl("sg_roi_align_backward", &instseg::sg_roi_align::sg_roi_align_backward_cuda);
}
