// The Python module instseg._C. Importing it loads this library, whose static initialisers register
// every op of csrc/<op>/ with the dispatcher under the namespace `instseg` (torch.ops.instseg.*).
// Each op folder declares its schema once (TORCH_LIBRARY_FRAGMENT) next to its CPU kernel and adds
// its CUDA kernel with TORCH_LIBRARY_IMPL(instseg, CUDA, ...) in its .cu file.
#include <torch/extension.h>

namespace instseg {

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace instseg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("with_cuda", &instseg::with_cuda, "whether the CUDA kernels were compiled in");
}
