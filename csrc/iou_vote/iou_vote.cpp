// IoU-vote clustering (CASNet, Sec. III-C "common attribute support"): the op's schema, the argument checks both
// devices share, and the registration of the CPU (iou_vote_cpu.cpp) and CUDA (iou_vote_cuda.cu) kernels behind
// them.
//
//   instseg::iou_vote(sem_labels (H, W) int, distances (4, H, W) float, seed_boxes (S, 4) float,
//                     seed_classes (S,) int, min_iou, tie_eps) -> (instance_ids (H, W) int64, support (S,) int64)
//
// Each pixel of a class that has seeds builds its own box from the four predicted distances and votes for
// the seed of its class whose box it overlaps most (IoU); near-ties (within tie_eps) go to the seed whose
// centre is nearest the pixel box's centre (the paper's "center will give a direction"), then to the
// lower seed index. Every pixel gets at most one id, so instances never overlap. Not differentiable; the fake
// (meta) kernel is registered from Python with torch.library in casnet.layers.iou_vote.
#include "iou_vote/iou_vote.h"

#include <torch/library.h>

namespace instseg {
namespace iou_vote {
namespace {

bool is_integer(const at::Tensor& t) {
  return !at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) && t.scalar_type() != at::kBool;
}

// Shape, dtype and device checks (the Python wrapper checks first with ValueErrors; these keep a direct call to
// torch.ops.instseg.iou_vote from crashing).
void check_forward(const at::Tensor& sem_labels, const at::Tensor& distances, const at::Tensor& seed_boxes,
                   const at::Tensor& seed_classes, double /*min_iou*/, double tie_eps) {
  TORCH_CHECK(sem_labels.dim() == 2, "iou_vote: sem_labels must be (H, W), got ", sem_labels.sizes());
  TORCH_CHECK(is_integer(sem_labels), "iou_vote: sem_labels must be an integer tensor, got ", sem_labels.scalar_type());
  TORCH_CHECK(distances.dim() == 3 && distances.size(0) == 4 && distances.size(1) == sem_labels.size(0) &&
                  distances.size(2) == sem_labels.size(1),
              "iou_vote: distances must be (4, H, W) = ", "(4, ", sem_labels.size(0), ", ", sem_labels.size(1),
              "), got ", distances.sizes());
  TORCH_CHECK(distances.scalar_type() == at::kFloat || distances.scalar_type() == at::kDouble,
              "iou_vote: distances must be float32 or float64, got ", distances.scalar_type());
  TORCH_CHECK(seed_boxes.dim() == 2 && seed_boxes.size(1) == 4, "iou_vote: seed_boxes must be (S, 4), got ",
              seed_boxes.sizes());
  TORCH_CHECK(seed_boxes.scalar_type() == distances.scalar_type(), "iou_vote: seed_boxes (", seed_boxes.scalar_type(),
              ") must have the dtype of distances (", distances.scalar_type(), ")");
  TORCH_CHECK(seed_classes.dim() == 1 && seed_classes.size(0) == seed_boxes.size(0),
              "iou_vote: seed_classes must be (S,) with S = ", seed_boxes.size(0), ", got ", seed_classes.sizes());
  TORCH_CHECK(is_integer(seed_classes), "iou_vote: seed_classes must be an integer tensor, got ",
              seed_classes.scalar_type());
  check_same_device("iou_vote", {{"sem_labels", &sem_labels},
                                 {"distances", &distances},
                                 {"seed_boxes", &seed_boxes},
                                 {"seed_classes", &seed_classes}});
  TORCH_CHECK(tie_eps >= 0, "iou_vote: tie_eps must be >= 0, got ", tie_eps);
}

}  // namespace
}  // namespace iou_vote
}  // namespace instseg

TORCH_LIBRARY_FRAGMENT(instseg, m) {
  m.set_python_module("casnet.layers.iou_vote");  // its fake kernel
  m.def(
      "iou_vote(Tensor sem_labels, Tensor distances, Tensor seed_boxes, Tensor seed_classes, float min_iou, "
      "float tie_eps) -> (Tensor instance_ids, Tensor support)");
}

INSTSEG_KERNELS("iou_vote", instseg::iou_vote::check_forward, instseg::iou_vote::forward)
