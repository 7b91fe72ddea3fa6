// Correlation + cropping (RDSNet, Wang et al., AAAI 2020, Sec. 3.2): the kernels' declarations and the box rule
// shared by the CPU kernels (correlation_crop_cpu.cpp) and the CUDA kernels (correlation_crop_cuda.cu); the
// schemas and the argument checks are in correlation_crop.cpp.
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

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common/kernel_utils.h"

namespace instseg {
namespace correlation_crop {

// The kernels of each device, called (through the dispatcher) once correlation_crop.cpp has checked the arguments:
//   forward(pixel_embed (N, d, h, w), obj_embed (K, 2, d), batch_idx (K,) int64, boxes (K, 4), fill) -> (K, h, w)
//   backward(grad_out (K, h, w), pixel_embed, obj_embed, batch_idx, boxes) -> (grad_pixel_embed, grad_obj_embed)
using ForwardKernel = at::Tensor(const at::Tensor& pixel_embed, const at::Tensor& obj_embed,
                                 const at::Tensor& batch_idx, const at::Tensor& boxes, double fill);
using BackwardKernel = std::tuple<at::Tensor, at::Tensor>(const at::Tensor& grad_out, const at::Tensor& pixel_embed,
                                                          const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                                                          const at::Tensor& boxes);
ForwardKernel forward_cpu, forward_cuda;
BackwardKernel backward_cpu, backward_cuda;

// The problem's sizes: N images of d channels and h x w pixels, K objects.
struct Sizes {
  int64_t N, d, h, w, K;
  INSTSEG_HOST_DEVICE int64_t plane() const { return h * w; }
};

// The inputs as both devices' kernels read them (contiguous) and their sizes. Host code.
struct Inputs {
  at::Tensor pixel_embed, obj_embed, batch_idx;
  Sizes size;

  Inputs(const at::Tensor& pixel, const at::Tensor& obj, const at::Tensor& batch)
      : pixel_embed(pixel.contiguous()),
        obj_embed(obj.contiguous()),
        batch_idx(batch.contiguous()),
        size{pixel.size(0), pixel.size(1), pixel.size(2), pixel.size(3), obj.size(0)} {}

  // No object, no pixel or no channel: every gradient is zero (and no kernel runs).
  bool empty() const { return size.K == 0 || size.h == 0 || size.w == 0 || size.d == 0; }
  std::tuple<at::Tensor, at::Tensor> zero_gradients() const {
    return {at::zeros_like(pixel_embed), at::zeros_like(obj_embed)};
  }
};

// Inclusive range [*lo, *hi] of pixel indices t in [0, size) whose centre t + 0.5 satisfies
// a <= t + 0.5 <= b (the cropping rule, edges included); *lo > *hi when the range is empty.
//
// Boxes are read as double: for float32 and float64 coordinates below 2^51 in magnitude, `a - 0.5` is
// exact wherever the rounding could change the clipped result, so ceil/floor here give exactly the
// pixels the direct comparison `a <= t + 0.5 <= b` gives. NaN and inverted boxes are empty; +-inf clip.
INSTSEG_HOST_DEVICE void centre_range(double a, double b, int64_t size, int64_t* lo, int64_t* hi) {
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
INSTSEG_HOST_DEVICE void object_window(const double* box, int64_t batch, int64_t num_images, int64_t h, int64_t w,
                                       int64_t* r) {
  centre_range(box[1], box[3], h, &r[0], &r[1]);
  centre_range(box[0], box[2], w, &r[2], &r[3]);
  if (batch < 0 || batch >= num_images || r[0] > r[1] || r[2] > r[3]) {
    r[0] = 0;
    r[1] = -1;
    r[2] = 0;
    r[3] = -1;
  }
}

}  // namespace correlation_crop
}  // namespace instseg
