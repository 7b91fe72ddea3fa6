// The Python module instseg._C. Importing it loads this library, whose static initialisers register every op of
// csrc/<op>/ with the dispatcher under the namespace `instseg` (torch.ops.instseg.*): each <op>/<op>.cpp declares
// the op's schema (TORCH_LIBRARY_FRAGMENT) and registers its CPU kernel (<op>_cpu.cpp) and, in CUDA builds, its
// CUDA kernel (<op>_cuda.cu) behind the argument checks both share. Autograd and the fake (meta) kernels are
// registered from Python with torch.library, in the module each op names with set_python_module.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <mutex>
#include <set>

namespace instseg {

bool with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// ATen's at::parallel_for (ATen/ParallelOpenMP.h) is an inline `#pragma omp parallel` loop: compiled without
// OpenMP, every CPU kernel's loop runs on one thread whatever torch.get_num_threads() says.
bool with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// How many threads an at::parallel_for of `items` items (grain 1) compiled into this library actually runs on:
// torch.get_num_threads() (at most `items`) when the library has OpenMP, 1 without.
int64_t parallel_threads(int64_t items) {
  std::mutex mutex;
  std::set<int> seen;
  at::parallel_for(0, items, 1, [&](int64_t, int64_t) {
    const std::lock_guard<std::mutex> lock(mutex);
    seen.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(seen.size());
}

}  // namespace instseg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("with_cuda", &instseg::with_cuda, "whether the CUDA kernels were compiled in");
  m.def("with_openmp", &instseg::with_openmp, "whether the C++ was compiled with OpenMP (parallel CPU kernels)");
  m.def("parallel_threads", &instseg::parallel_threads, "threads an at::parallel_for in this library runs on",
        pybind11::arg("items"));
}
