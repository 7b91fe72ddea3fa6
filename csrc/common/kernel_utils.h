// What every op of csrc/ shares: the host/device function macro, the CUDA launch geometry (threads per block,
// block count, grid-stride loop, warp reduction) and the wrapper that runs an op's argument checks before the
// kernel of whichever device the dispatcher picked.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <utility>

#if !defined(__CUDACC__)
#include <ATen/Parallel.h>
#endif

// Functions that the CPU and the CUDA kernels of an op share (geometry, interpolation, IoU): inline on the host,
// __host__ __device__ under nvcc.
#if defined(__CUDACC__)
#define INSTSEG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define INSTSEG_HOST_DEVICE inline
#endif

namespace instseg {

// -------------------------------------------------------------------------------------------------- CPU
#if !defined(__CUDACC__)
// INSTSEG_CPU_CLONES before a CPU function compiles it twice, for AVX2 and for baseline x86-64 (SSE2), and picks
// one when the library loads (function multi-versioning: an ifunc; GCC and Clang on Linux x86-64, elsewhere a
// single baseline version). Its loops then vectorise 8 float32 lanes wide where the CPU has AVX2, without making
// the library need it. AVX2 alone brings no FMA, so nothing is contracted: both versions give identical results.
// Put the body in an INSTSEG_ALWAYS_INLINE template and the attribute on plain (per-dtype) functions calling it.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define INSTSEG_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define INSTSEG_CPU_CLONES
#endif
#define INSTSEG_ALWAYS_INLINE inline __attribute__((always_inline))

// Work (in multiply-adds, roughly) below which a CPU loop stays on one thread: starting an OpenMP region costs
// microseconds, and far more when another process holds a core (the team waits for a descheduled thread), which
// small calls -- a gradcheck, a few RoIs -- must not pay.
constexpr int64_t kMinParallelWork = int64_t(1) << 16;

// The grain of an at::parallel_for whose items cost `cost_per_item` each: enough items per task for
// kMinParallelWork, so that a loop with less work than that in all runs serially.
inline int64_t grain_for(int64_t cost_per_item) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(1, cost_per_item));
}

// at::parallel_for over the items [0, n), dealt round-robin to many interleaved lanes (about 64 per thread) so
// that every thread gets items from the whole range: when the cost of an item varies along the range (image rows
// crossing more or fewer objects) the threads still finish together, which a split into one contiguous block per
// thread does not give. `task(for_each_item)` runs once per chunk of lanes (set up per-task scratch there) and
// calls `for_each_item(f)` to run f(i) for each of its items. `cost_per_item` (see grain_for) keeps small loops
// on one thread.
template <typename Task>
void parallel_for_interleaved(int64_t n, int64_t cost_per_item, const Task& task) {
  if (n <= 0) {
    return;
  }
  const int64_t lanes = std::min<int64_t>(n, 64 * std::max<int64_t>(1, at::get_num_threads()));
  const int64_t cost_per_lane = cost_per_item * ((n + lanes - 1) / lanes);
  at::parallel_for(0, lanes, grain_for(cost_per_lane), [&](int64_t lane_begin, int64_t lane_end) {
    task([&](const auto& f) {
      for (int64_t lane = lane_begin; lane < lane_end; ++lane) {
        for (int64_t i = lane; i < n; i += lanes) {
          f(i);
        }
      }
    });
  });
}
#endif

// ------------------------------------------------------------------------------------------------- CUDA
constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;

// Blocks for `work` items at `per_block` items a block. Kernels loop grid-stride, so the grid is capped (at a
// size that fills any current GPU many times over) and a larger `work` is covered by the loop.
inline int64_t blocks_for(int64_t work, int64_t per_block = kThreadsPerBlock) {
  return std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, int64_t(1) << 20));
}

#if defined(__CUDACC__)
// for (int64_t i = first index of this thread; i < n; i += all threads of the grid): a 1-D grid-stride loop.
#define INSTSEG_GRID_STRIDE_LOOP(i, n)                                                   \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Sum of `v` over the 32 lanes of a warp, in lane 0 (every lane must take part).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}
#endif

// ------------------------------------------------------------------------------------------------- checks
// A RuntimeError unless all the named tensors are on one device: "<op>: all inputs must be on one device, got
// input on cpu, rois on cuda:0, ...".
inline void check_same_device(const char* op,
                              std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  bool same = true;
  for (const auto& named : tensors) {
    same = same && named.second->device() == tensors.begin()->second->device();
  }
  if (!same) {
    std::ostringstream got;
    for (const auto& named : tensors) {
      got << (&named == tensors.begin() ? "" : ", ") << named.first << " on " << named.second->device();
    }
    TORCH_CHECK(false, op, ": all inputs must be on one device, got ", got.str());
  }
}

// Checked<check, kernel>::call runs `check` (the op's argument checks, shared by every device) and then
// `kernel` (one device's implementation) with the same arguments. Each op registers
// `&Checked<check_x, x_cpu>::call` for the CPU and `&Checked<check_x, x_cuda>::call` for CUDA (INSTSEG_KERNELS),
// so the device kernels never repeat the checks.
template <auto Check, auto Kernel>
struct Checked;

template <typename R, typename... Args, void (*Check)(Args...), R (*Kernel)(Args...)>
struct Checked<Check, Kernel> {
  static R call(Args... args) {
    Check(args...);
    return Kernel(args...);
  }
};

}  // namespace instseg

// INSTSEG_KERNELS("op", check, ns::pass) registers the kernels of torch.ops.instseg.op: `check` followed by
// ns::pass_cpu for CPU tensors and, in CUDA builds (WITH_CUDA), `check` followed by ns::pass_cuda for CUDA
// tensors. One line per op in its <op>.cpp, after the schema (TORCH_LIBRARY_FRAGMENT).
#define INSTSEG_KERNELS_FOR(device, op, check, kernel) \
  TORCH_LIBRARY_IMPL(instseg, device, m) { m.impl(op, &::instseg::Checked<check, kernel>::call); }
#ifdef WITH_CUDA
#define INSTSEG_KERNELS(op, check, pass)          \
  INSTSEG_KERNELS_FOR(CPU, op, check, pass##_cpu) \
  INSTSEG_KERNELS_FOR(CUDA, op, check, pass##_cuda)
#else
#define INSTSEG_KERNELS(op, check, pass) INSTSEG_KERNELS_FOR(CPU, op, check, pass##_cpu)
#endif

namespace instseg {}  // namespace instseg
