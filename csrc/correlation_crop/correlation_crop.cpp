// Correlation + cropping (RDSNet, Sec. 3.2, Eq. 1 and the cropping module): the op's schemas, the argument checks
// both devices share, and the registration of the CPU (correlation_crop_cpu.cpp) and CUDA
// (correlation_crop_cuda.cu) kernels behind them.
//
//   correlation_crop_forward(pixel_embed (N, d, h, w), obj_embed (K, 2, d), batch_idx (K,) int64,
//                            boxes (K, 4) xyxy, fill) -> z (K, h, w)
//   z[k, i, j] = < obj_embed[k, 0] - obj_embed[k, 1], pixel_embed[batch_idx[k], :, i, j] >  inside box k,
//              = fill                                                                     outside.
//   correlation_crop_backward(grad_z, pixel_embed, obj_embed, batch_idx, boxes)
//       -> (grad_pixel_embed (N, d, h, w), grad_obj_embed (K, 2, d))
// Autograd and the fake (meta) kernels are registered from Python with torch.library in
// rdsnet.layers.correlation_crop.
#include "correlation_crop/correlation_crop.h"

#include <torch/library.h>

namespace instseg {
namespace correlation_crop {
namespace {

// Shape, dtype and device checks (a clear RuntimeError, never a bad read). The batch indices are data: the CPU
// kernel checks their range, the CUDA kernel gives an object with a bad index an empty window.
void check_forward(const at::Tensor& pixel_embed, const at::Tensor& obj_embed, const at::Tensor& batch_idx,
                   const at::Tensor& boxes, double /*fill*/) {
  TORCH_CHECK(pixel_embed.dim() == 4, "correlation_crop: pixel_embed must be (N, d, h, w), got ", pixel_embed.sizes());
  TORCH_CHECK(obj_embed.dim() == 3 && obj_embed.size(1) == 2 && obj_embed.size(2) == pixel_embed.size(1),
              "correlation_crop: obj_embed must be (K, 2, d) with d = pixel_embed.size(1) = ", pixel_embed.size(1),
              ", got ", obj_embed.sizes());
  TORCH_CHECK(batch_idx.dim() == 1 && batch_idx.size(0) == obj_embed.size(0),
              "correlation_crop: batch_idx must be (K,), got ", batch_idx.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == obj_embed.size(0) && boxes.size(1) == 4,
              "correlation_crop: boxes must be (K, 4), got ", boxes.sizes());
  TORCH_CHECK(pixel_embed.is_floating_point() && obj_embed.scalar_type() == pixel_embed.scalar_type(),
              "correlation_crop: pixel_embed and obj_embed must share one floating dtype, got ",
              pixel_embed.scalar_type(), " and ", obj_embed.scalar_type());
  TORCH_CHECK(batch_idx.scalar_type() == at::kLong, "correlation_crop: batch_idx must be int64, got ",
              batch_idx.scalar_type());
  TORCH_CHECK(boxes.is_floating_point(), "correlation_crop: boxes must be floating point, got ", boxes.scalar_type());
  check_same_device(
      "correlation_crop",
      {{"pixel_embed", &pixel_embed}, {"obj_embed", &obj_embed}, {"batch_idx", &batch_idx}, {"boxes", &boxes}});
}

void check_backward(const at::Tensor& grad_out, const at::Tensor& pixel_embed, const at::Tensor& obj_embed,
                    const at::Tensor& batch_idx, const at::Tensor& boxes) {
  check_forward(pixel_embed, obj_embed, batch_idx, boxes, 0.0);
  const int64_t K = obj_embed.size(0), h = pixel_embed.size(2), w = pixel_embed.size(3);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == K && grad_out.size(1) == h && grad_out.size(2) == w,
              "correlation_crop_backward: grad_out must be (K, h, w) = (", K, ", ", h, ", ", w, "), got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == pixel_embed.scalar_type(), "correlation_crop_backward: grad_out must have ",
              "the dtype of pixel_embed (", pixel_embed.scalar_type(), "), got ", grad_out.scalar_type());
  check_same_device("correlation_crop_backward", {{"grad_out", &grad_out}, {"pixel_embed", &pixel_embed}});
}

}  // namespace
}  // namespace correlation_crop
}  // namespace instseg

TORCH_LIBRARY_FRAGMENT(instseg, m) {
  m.set_python_module("rdsnet.layers.correlation_crop");  // its fake kernels and autograd
  m.def(
      "correlation_crop_forward(Tensor pixel_embed, Tensor obj_embed, Tensor batch_idx, Tensor boxes, "
      "float fill) -> Tensor");
  m.def(
      "correlation_crop_backward(Tensor grad_out, Tensor pixel_embed, Tensor obj_embed, Tensor batch_idx, "
      "Tensor boxes) -> (Tensor, Tensor)");
}

INSTSEG_KERNELS("correlation_crop_forward", instseg::correlation_crop::check_forward,
                instseg::correlation_crop::forward)
INSTSEG_KERNELS("correlation_crop_backward", instseg::correlation_crop::check_backward,
                instseg::correlation_crop::backward)
