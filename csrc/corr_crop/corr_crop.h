// Correlation + cropping (RDSNet, Wang et al., AAAI 2020, Sec. 3.2): declarations and the box rule
// shared by the CPU kernel (corr_crop.cpp) and the CUDA kernel (corr_crop_cuda.cu).
//
// For object k in image n = batch_idx[k], with foreground/background kernels phi_fg, phi_bg (the two
// channels of phi(v_o) in Eq. 1) and pixel embeddings Psi(U) of shape (d, h, w), Eq. 1 is
//     M_o = softmax(Psi(U) * phi(v_o))          (a 1x1 convolution with two output channels),
// and its foreground channel is softmax([l_fg, l_bg])_0 = sigmoid(l_fg - l_bg). The op returns that logit
//     z[k, i, j] = < phi_fg - phi_bg , Psi(U)[n, :, i, j] >
// at every pixel whose centre (j + 0.5, i + 0.5) lies in the (already expanded) box of the object, edges
// included -- the cropping module -- and `fill` everywhere else. Only box pixels are ever computed; no
// (K, d, h, w) or (K, 2, h, w) tensor is formed.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>

#if defined(__CUDACC__)
#define INSTSEG_CC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INSTSEG_CC_HOST_DEVICE inline
#endif

namespace instseg {
namespace corr_crop {

// Inclusive range [*lo, *hi] of pixel indices t in [0, size) whose centre t + 0.5 satisfies
// a <= t + 0.5 <= b (the cropping rule, edges included); *lo > *hi when the range is empty.
//
// Boxes are read as double: for float32 and float64 coordinates below 2^51 in magnitude, `a - 0.5` is
// exact wherever the rounding could change the clipped result, so ceil/floor here give exactly the
// pixels the direct comparison `a <= t + 0.5 <= b` gives. NaN and inverted boxes are empty; +-inf clip.
INSTSEG_CC_HOST_DEVICE void centre_range(double a, double b, int64_t size, int64_t* lo, int64_t* hi) {
  *lo = 0;
  *hi = -1;
  if (!(a <= b) || size <= 0) {  // also catches NaN
    return;
  }
  double l = ceil(a - 0.5);
  double u = floor(b - 0.5);
  if (l < 0.0) l = 0.0;
  if (u > static_cast<double>(size - 1)) u = static_cast<double>(size - 1);
  if (!(l <= u)) {
    return;
  }
  *lo = static_cast<int64_t>(l);
  *hi = static_cast<int64_t>(u);
}

// Pixel window of object k: rows [r[0], r[1]], columns [r[2], r[3]] (inclusive). An object whose
// batch index is not in [0, num_images) gets an empty window (the wrappers reject such input; this
// only keeps the kernels memory-safe when the op is called directly).
INSTSEG_CC_HOST_DEVICE void object_window(const double* box, int64_t batch, int64_t num_images, int64_t h,
                                          int64_t w, int64_t* r) {
  centre_range(box[1], box[3], h, &r[0], &r[1]);
  centre_range(box[0], box[2], w, &r[2], &r[3]);
  if (batch < 0 || batch >= num_images || r[0] > r[1] || r[2] > r[3]) {
    r[0] = 0;
    r[1] = -1;
    r[2] = 0;
    r[3] = -1;
  }
}

// Shape checks shared by both backends (the Python wrapper raises ValueError before these are reached).
void check_inputs(const at::Tensor& pixel_embed, const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                  const at::Tensor& boxes);

}  // namespace corr_crop
}  // namespace instseg
