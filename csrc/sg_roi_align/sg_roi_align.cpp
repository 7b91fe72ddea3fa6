// Shape-guided RoIAlign (DSG, Sec. 3.4, Eq. 1-2): the op's schemas, the argument checks both devices share, and
// the registration of the CPU (sg_roi_align_cpu.cpp) and CUDA (sg_roi_align_cuda.cu) kernels behind them.
//
//   sg_roi_align_forward(input (N, C, H, W), rois (K, 5), probs (K, Hp, Wp), spatial_scale, pooled_height,
//                        pooled_width, sampling_ratio, aligned) -> (K, C, pooled_height, pooled_width)
//   out[k, c, h, w] = sum_i f_c(a_i, b_i) * (1 + p_k(c_i, d_i)) / N                                  (Eq. 2)
//
//   sg_roi_align_backward(grad (K, C, ph, pw), input, rois, probs, ..., output_mask) -> (grad_input, grad_probs)
// output_mask[0] / [1] say whether grad_input / grad_probs are wanted (the other comes back undefined, None).
// Autograd and the fake (meta) kernels are registered from Python with torch.library in dsg.layers.sg_roi_align.
#include "sg_roi_align/sg_roi_align.h"

#include <torch/library.h>

namespace instseg {
namespace sg_roi_align {
namespace {

// Shape, dtype and device checks (a clear RuntimeError, never a bad read).
void check_inputs(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs, int64_t pooled_height,
                  int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "sg_roi_align: input must be (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "sg_roi_align: rois must be (K, 5), got ", rois.sizes());
  TORCH_CHECK(probs.dim() == 3 && probs.size(0) == rois.size(0),
              "sg_roi_align: probs must be (K, Hp, Wp) with K = rois.size(0) = ", rois.size(0), ", got ",
              probs.sizes());
  TORCH_CHECK(probs.size(1) > 0 && probs.size(2) > 0, "sg_roi_align: probs maps must be non-empty, got ",
              probs.sizes());
  // a sample in [-1, 0] of an empty map would read element -1: there is nothing to pool from
  TORCH_CHECK(rois.size(0) == 0 || input.size(1) == 0 || (input.size(2) > 0 && input.size(3) > 0),
              "sg_roi_align: the feature map must have H > 0 and W > 0 when there are RoIs, got ", input.sizes());
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "sg_roi_align: output size must be positive, got (", pooled_height,
              ", ", pooled_width, ")");
  TORCH_CHECK(input.is_floating_point(), "sg_roi_align: input must be floating point, got ", input.scalar_type());
  TORCH_CHECK(rois.scalar_type() == input.scalar_type() && probs.scalar_type() == input.scalar_type(),
              "sg_roi_align: input, rois and probs must share one dtype, got ", input.scalar_type(), ", ",
              rois.scalar_type(), " and ", probs.scalar_type());
  check_same_device("sg_roi_align", {{"input", &input}, {"rois", &rois}, {"probs", &probs}});
}

void check_forward(const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs, double /*spatial_scale*/,
                   int64_t pooled_height, int64_t pooled_width, int64_t /*sampling_ratio*/, bool /*aligned*/) {
  check_inputs(input, rois, probs, pooled_height, pooled_width);
}

void check_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& rois, const at::Tensor& probs,
                    double /*spatial_scale*/, int64_t pooled_height, int64_t pooled_width, int64_t /*sampling_ratio*/,
                    bool /*aligned*/, std::array<bool, 2> /*output_mask*/) {
  check_inputs(input, rois, probs, pooled_height, pooled_width);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == input.size(1) &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "sg_roi_align: grad must be (K, C, pooled_height, pooled_width) = (", rois.size(0), ", ", input.size(1),
              ", ", pooled_height, ", ", pooled_width, "), got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == input.scalar_type() && grad.device() == input.device(),
              "sg_roi_align: grad must match input's dtype and device, got ", grad.scalar_type(), " on ",
              grad.device());
}

}  // namespace
}  // namespace sg_roi_align
}  // namespace instseg

TORCH_LIBRARY_FRAGMENT(instseg, m) {
  m.set_python_module("dsg.layers.sg_roi_align");  // its fake kernels and autograd
  m.def(
      "sg_roi_align_forward(Tensor input, Tensor rois, Tensor probs, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "sg_roi_align_backward(Tensor grad, Tensor input, Tensor rois, Tensor probs, float spatial_scale, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, bool[2] output_mask) "
      "-> (Tensor, Tensor)");
}

INSTSEG_KERNELS("sg_roi_align_forward", instseg::sg_roi_align::check_forward, instseg::sg_roi_align::forward)
INSTSEG_KERNELS("sg_roi_align_backward", instseg::sg_roi_align::check_backward, instseg::sg_roi_align::backward)
