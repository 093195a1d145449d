// Just enough of CUDA's execution model to run lvmcore's kernels (kernels/cuda/*.cu) on the CPU,
// for tests on machines without a GPU.
//
// Every CUDA thread of a block is a std::thread; blocks run one after another, so __shared__
// variables can be plain statics. __syncthreads() is a barrier over the block, __syncwarp() and
// the shuffles are barriers over the warp (32 consecutive linear thread ids): a kernel whose lanes
// call them a different number of times deadlocks here, as it would misbehave on a GPU. The math
// functions are glibc's, so transcendental results differ from CUDA's in the last bits; integer
// code, the Philox words and the exact uniform conversions are bit-identical.
//
// A kernel is launched the way cuLaunchKernel does it: argv[i] points to the value of parameter i.
#ifndef LVM_CUDA_EMU_H
#define LVM_CUDA_EMU_H

#include <barrier>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};

inline dim3 gridDim, blockDim;
inline thread_local dim3 threadIdx, blockIdx;
static const int warpSize = 32;

namespace emu {

struct Block {
    explicit Block(unsigned int n) : all(n), xchg(n) {
        for (unsigned int w = 0; w < n / 32; ++w) warps.emplace_back(new std::barrier<>(32));
    }
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<unsigned long long> xchg;  // one 8-byte slot per thread for the shuffles
};

inline thread_local Block* block = nullptr;
inline thread_local unsigned int tid = 0;  // linear thread index in the block

template <typename T>
inline T shfl_xor(T v, int lane_mask, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    const unsigned int lane = tid % 32, warp = tid / 32;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    block->xchg[tid] = bits;
    block->warps[warp]->arrive_and_wait();
    unsigned int src = lane ^ (unsigned int)lane_mask;
    const unsigned int seg = ~(unsigned int)(width - 1);
    if ((src & seg) > (lane & seg)) src = lane;  // a later segment: own value (CUDA semantics)
    bits = block->xchg[warp * 32 + src];
    block->warps[warp]->arrive_and_wait();
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

template <typename... A, std::size_t... I>
inline void call(void (*f)(A...), void** argv, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(argv[I])...);
}

// Returns 0, or 1 when the block size is not a multiple of 32.
template <typename... A>
inline int launch(void (*f)(A...), dim3 g, dim3 b, void** argv) {
    const unsigned int n = b.x * b.y * b.z;
    if (n == 0 || n % 32 != 0) return 1;
    gridDim = g;
    blockDim = b;
    for (unsigned int bz = 0; bz < g.z; ++bz)
        for (unsigned int by = 0; by < g.y; ++by)
            for (unsigned int bx = 0; bx < g.x; ++bx) {
                Block blk(n);
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (unsigned int t = 0; t < n; ++t) {
                    threads.emplace_back([&, t] {
                        block = &blk;
                        tid = t;
                        threadIdx = dim3(t % b.x, (t / b.x) % b.y, t / (b.x * b.y));
                        blockIdx = dim3(bx, by, bz);
                        call(f, argv, std::index_sequence_for<A...>{});
                    });
                }
                for (auto& th : threads) th.join();
            }
    return 0;
}

// Parameter codes for the Python side's argument check: "p" + pointee code for pointers, else
// the scalar code: f4 f8 i4 i8 u4 u8 b1.
template <typename T>
inline const char* scalar_code() {
    using U = std::remove_cv_t<T>;
    if constexpr (std::is_same_v<U, float>) return "f4";
    else if constexpr (std::is_same_v<U, double>) return "f8";
    else if constexpr (std::is_same_v<U, bool>) return "b1";
    else if constexpr (std::is_integral_v<U>) {
        if constexpr (std::is_signed_v<U>)
            return sizeof(U) == 4 ? "i4" : sizeof(U) == 8 ? "i8" : "??";
        else
            return sizeof(U) == 4 ? "u4" : sizeof(U) == 8 ? "u8" : "??";
    } else return "??";
}

template <typename T>
inline std::string param_code() {
    if constexpr (std::is_pointer_v<T>)
        return std::string("p") + scalar_code<std::remove_pointer_t<T>>();
    else
        return scalar_code<T>();
}

template <typename... A>
inline std::string signature(void (*)(A...)) {
    std::string s;
    ((s += param_code<A>() + ","), ...);
    return s;
}

}  // namespace emu

inline void __syncthreads() { emu::block->all.arrive_and_wait(); }
inline void __syncwarp(unsigned int = 0xffffffffu) {
    emu::block->warps[emu::tid / 32]->arrive_and_wait();
}

template <typename T>
inline T __shfl_xor_sync(unsigned int, T v, int lane_mask, int width = 32) {
    return emu::shfl_xor(v, lane_mask, width);
}

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

#endif  // LVM_CUDA_EMU_H
