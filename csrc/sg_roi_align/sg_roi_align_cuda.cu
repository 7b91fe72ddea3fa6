// Shape-guided RoIAlign (DSG, Sec. 3.4, Eq. 1-2): the CUDA kernels. Schemas and argument checks:
// sg_roi_align.cpp; the sampling rules (Eq. 1, RoIAlign's grid and border rules), shared with the CPU kernels:
// sg_roi_align.h.
#include "sg_roi_align/sg_roi_align.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/Atomic.cuh>

namespace instseg {
namespace sg_roi_align {
namespace {

// The op's sizes and options, as every kernel reads them.
template <typename T>
struct Params {
  T spatial_scale;
  int64_t num_images, channels, height, width;
  int64_t pooled_height, pooled_width, probs_height, probs_width;
  int64_t sampling_ratio;
  bool aligned;

  Params(const at::Tensor& input, const at::Tensor& probs, double scale, int64_t ph, int64_t pw, int64_t ratio,
         bool align)
      : spatial_scale(static_cast<T>(scale)),
        num_images(input.size(0)),
        channels(input.size(1)),
        height(input.size(2)),
        width(input.size(3)),
        pooled_height(ph),
        pooled_width(pw),
        probs_height(probs.size(1)),
        probs_width(probs.size(2)),
        sampling_ratio(ratio),
        aligned(align) {}

  // Batch image of RoI `roi`, or -1 when rois[k, 0] is not an index in [0, num_images) (or NaN): such a RoI is
  // treated as empty (zero output, no gradient) so that a kernel never reads out of bounds. The CPU kernel
  // raises instead; on the GPU that would need a device-to-host sync per call.
  __device__ int64_t batch_index(const T* roi) const {
    const T v = roi[0];
    return (v >= T(0) && v < static_cast<T>(num_images)) ? static_cast<int64_t>(v) : -1;
  }
  __device__ RoiGeometry<T> geometry(const T* roi) const {
    return roi_geometry<T>(roi, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
  }
  // f's and p's interpolation along y for sample iy of bin row ph (and along x for sample ix of bin column pw).
  __device__ Lerp<T> feature_y(const RoiGeometry<T>& g, int64_t ph, int64_t iy) const {
    return feature_lerp<T>(sample_coord<T>(g.start_h, g.bin_h, ph, iy, g.grid_h), height);
  }
  __device__ Lerp<T> feature_x(const RoiGeometry<T>& g, int64_t pw, int64_t ix) const {
    return feature_lerp<T>(sample_coord<T>(g.start_w, g.bin_w, pw, ix, g.grid_w), width);
  }
  __device__ Lerp<T> probs_y(const RoiGeometry<T>& g, int64_t ph, int64_t iy) const {
    return probs_lerp<T>(ph, iy, g.grid_h, pooled_height, probs_height);
  }
  __device__ Lerp<T> probs_x(const RoiGeometry<T>& g, int64_t pw, int64_t ix) const {
    return probs_lerp<T>(pw, ix, g.grid_w, pooled_width, probs_width);
  }
};

// Element `index` of a (K, C, pooled_height, pooled_width) tensor, with its RoI's image (-1 for an invalid RoI) and
// geometry.
template <typename T>
struct OutputBin {
  int64_t k, c, ph, pw, batch;
  RoiGeometry<T> g;
};

template <typename T>
__device__ __forceinline__ OutputBin<T> output_bin(int64_t index, const T* rois, const Params<T>& p) {
  OutputBin<T> o;
  o.pw = index % p.pooled_width;
  o.ph = (index / p.pooled_width) % p.pooled_height;
  o.c = (index / (p.pooled_width * p.pooled_height)) % p.channels;
  o.k = index / (p.pooled_width * p.pooled_height * p.channels);
  o.batch = p.batch_index(rois + o.k * 5);
  if (o.batch >= 0) {
    o.g = p.geometry(rois + o.k * 5);
  }
  return o;
}

// A sample beyond RoIAlign's [-1, size] border along either axis: f = 0 there, so no gradient either.
template <typename T>
__device__ __forceinline__ bool outside(const Lerp<T>& y, const Lerp<T>& x) {
  return (y.w_lo == T(0) && y.w_hi == T(0)) || (x.w_lo == T(0) && x.w_hi == T(0));
}

// Adds v * (bilinear weight) to the four neighbours of a sample in a row-major plane with `width` columns.
template <typename T>
__device__ __forceinline__ void atomic_spread(T* plane, int64_t width, const Lerp<T>& y, const Lerp<T>& x, T v) {
  gpuAtomicAdd(plane + y.lo * width + x.lo, v * y.w_lo * x.w_lo);
  gpuAtomicAdd(plane + y.lo * width + x.hi, v * y.w_lo * x.w_hi);
  gpuAtomicAdd(plane + y.hi * width + x.lo, v * y.w_hi * x.w_lo);
  gpuAtomicAdd(plane + y.hi * width + x.hi, v * y.w_hi * x.w_hi);
}

// visit(y, x, 1 + p(c_i, d_i)) for every sample i of bin o, given by f's interpolation factors along y and x
// and Eq. 2's weight (`map`: the RoI's probability map).
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_sample(const Params<T>& p, const OutputBin<T>& o, const T* map,
                                                const Visit& visit) {
  const RoiGeometry<T>& g = o.g;
  for (int64_t iy = 0; iy < g.grid_h; ++iy) {
    const Lerp<T> y = p.feature_y(g, o.ph, iy);
    const Lerp<T> yp = p.probs_y(g, o.ph, iy);
    for (int64_t ix = 0; ix < g.grid_w; ++ix) {
      visit(y, p.feature_x(g, o.pw, ix), T(1) + probs_value<T>(map, p.probs_width, yp, p.probs_x(g, o.pw, ix)));
    }
  }
}

// Forward: one thread per output element (k, c, ph, pw): the mean over the bin's samples of f * (1 + p) (Eq. 2).
template <typename T>
__global__ void forward_kernel(int64_t total, const T* __restrict__ input, const T* __restrict__ rois,
                               const T* __restrict__ probs, T* __restrict__ output, const Params<T> p) {
  INSTSEG_GRID_STRIDE_LOOP(index, total) {
    const OutputBin<T> o = output_bin(index, rois, p);
    if (o.batch < 0) {
      output[index] = T(0);
      continue;
    }
    const T* f = input + (o.batch * p.channels + o.c) * p.height * p.width;
    T acc = 0;
    for_each_sample(p, o, probs + o.k * p.probs_height * p.probs_width,
                    [&](const Lerp<T>& y, const Lerp<T>& x, T scale) {
                      acc += scale * feature_value<T>(f, p.width, y, x);  // f(a_i, b_i) * (1 + p(c_i, d_i))
                    });
    output[index] = acc / o.g.count;  // Eq. 2's mean over the N samples
  }
}

// d input: one thread per output element; adds grad * w_j * (1 + p_i) / N to the four neighbours of every sample
// with atomics (as RoIAlign's backward).
template <typename T>
__global__ void grad_input_kernel(int64_t total, const T* __restrict__ grad, const T* __restrict__ rois,
                                  const T* __restrict__ probs, T* __restrict__ grad_input, const Params<T> p) {
  INSTSEG_GRID_STRIDE_LOOP(index, total) {
    const T g_out = grad[index];
    if (g_out == T(0)) {
      continue;
    }
    const OutputBin<T> o = output_bin(index, rois, p);
    if (o.batch < 0) {
      continue;
    }
    const T gb = g_out / o.g.count;
    T* gi = grad_input + (o.batch * p.channels + o.c) * p.height * p.width;
    for_each_sample(p, o, probs + o.k * p.probs_height * p.probs_width,
                    [&](const Lerp<T>& y, const Lerp<T>& x, T scale) {
                      if (!outside(y, x)) {
                        atomic_spread(gi, p.width, y, x, gb * scale);
                      }
                    });
  }
}

// d probs: one warp per bin (k, ph, pw). For each sample the lanes split the channels to form
// sum_c grad[k, c, ph, pw] * f_c(a_i, b_i) / N (= d out / d p_i summed over channels), reduce it with warp
// shuffles, and lane 0 spreads it onto probs[k] with p's bilinear weights.
template <typename T>
__global__ void grad_probs_kernel(int64_t total_bins, const T* __restrict__ grad, const T* __restrict__ input,
                                  const T* __restrict__ rois, T* __restrict__ grad_probs, const Params<T> p) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warps_per_block = blockDim.x / kWarpSize;
  const int64_t warp_stride = warps_per_block * gridDim.x;
  const int64_t bins = p.pooled_height * p.pooled_width, plane = p.height * p.width;
  // The loop bounds depend only on the warp's bin, so all 32 lanes stay converged for the shuffles.
  for (int64_t bin = blockIdx.x * warps_per_block + threadIdx.x / kWarpSize; bin < total_bins; bin += warp_stride) {
    const int64_t pw = bin % p.pooled_width;
    const int64_t ph = (bin / p.pooled_width) % p.pooled_height;
    const int64_t k = bin / bins;
    const T* roi = rois + k * 5;
    const int64_t b = p.batch_index(roi);
    if (b < 0) {
      continue;
    }
    const RoiGeometry<T> g = p.geometry(roi);
    const T* go = grad + k * p.channels * bins + ph * p.pooled_width + pw;  // grad[k, c, ph, pw] = go[c * bins]
    const T* in = input + b * p.channels * plane;
    T* gp = grad_probs + k * p.probs_height * p.probs_width;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const Lerp<T> y = p.feature_y(g, ph, iy);
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const Lerp<T> x = p.feature_x(g, pw, ix);
        if (outside(y, x)) {
          continue;  // d out / d p is 0 there (uniform across the warp)
        }
        T partial = 0;
        for (int64_t c = lane; c < p.channels; c += kWarpSize) {
          partial += go[c * bins] * feature_value<T>(in + c * plane, p.width, y, x);
        }
        const T dp = warp_sum(partial);
        if (lane == 0 && dp != T(0)) {
          atomic_spread(gp, p.probs_width, p.probs_y(g, ph, iy), p.probs_x(g, pw, ix), dp / g.count);
        }
      }
    }
  }
}

}  // namespace

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs, double spatial_scale,
                        int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  at::Tensor output = at::empty({rois.size(0), input.size(1), pooled_height, pooled_width}, input.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous(), rois_c = rois.contiguous(), probs_c = probs.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sg_roi_align_forward_cuda", [&] {
    const Params<scalar_t> p(input, probs, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    forward_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), probs_c.data_ptr<scalar_t>(),
        output.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad, const at::Tensor& input,
                                                 const at::Tensor& rois, const at::Tensor& probs, double spatial_scale,
                                                 int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                                                 bool aligned, std::array<bool, 2> output_mask) {
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
    const Params<scalar_t> p(input, probs, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned);
    if (output_mask[0]) {
      grad_input_kernel<scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
          total, grad_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), probs_c.data_ptr<scalar_t>(),
          grad_input.data_ptr<scalar_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (output_mask[1]) {
      const at::Tensor input_c = input.contiguous();
      const int64_t total_bins = rois.size(0) * pooled_height * pooled_width;
      grad_probs_kernel<scalar_t>
          <<<blocks_for(total_bins, kThreadsPerBlock / kWarpSize), kThreadsPerBlock, 0, stream>>>(
              total_bins, grad_c.data_ptr<scalar_t>(), input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(),
              grad_probs.data_ptr<scalar_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_input, grad_probs};
}

}  // namespace sg_roi_align
}  // namespace instseg
