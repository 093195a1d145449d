// Just enough of CUDA's execution model to run lvmcore's kernels (kernels/cuda/*.cu) on the CPU,
// for tests on machines without a GPU.
//
// Every CUDA thread of a block is a fiber on the launching OS thread (started with makecontext,
// switched with _setjmp/_longjmp, which unlike swapcontext make no system call); blocks run one
// after another, so __shared__ variables can be plain statics. A fiber runs until it reaches a
// barrier (__syncthreads() over the block; __syncwarp() and the shuffles over its warp of 32
// consecutive linear thread ids) or returns; the scheduler then runs the next fiber that can go
// on, and a barrier opens when every thread it spans has arrived. A kernel without barriers thus
// runs its threads one after another at full speed (creating an OS thread per CUDA thread, as an
// earlier version did, cost about a third of a second per launch). A kernel whose lanes call the
// barriers a different number of times would misbehave on a GPU: here the launch stops with
// an error instead of hanging. The math functions are glibc's, so transcendental results differ
// from CUDA's in the last bits; integer code, the Philox words and the exact uniform conversions
// are bit-identical.
//
// A kernel is launched the way cuLaunchKernel does it: argv[i] points to the value of parameter i.
#ifndef LVM_CUDA_EMU_H
#define LVM_CUDA_EMU_H

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <csetjmp>
#include <ucontext.h>
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
inline dim3 threadIdx, blockIdx;  // of the running fiber
static const int warpSize = 32;

namespace emu {

// One barrier: arrivals counted against the threads it spans; a generation number that moves on
// when it opens.
struct Barrier {
    unsigned int expected = 0, arrived = 0;
    unsigned long long generation = 0;
};

struct Fiber {
    ucontext_t start;  // the entry point on the fiber's stack, for the first switch
    jmp_buf env;       // where it yielded, for the later ones
    bool started = false;
    bool done = false;
    const Barrier* waiting = nullptr;  // the barrier it waits at, closed while generation == gen
    unsigned long long gen = 0;
};

struct Block {
    explicit Block(unsigned int n) : n(n), fibers(n), stacks(n), xchg(n), warps(n / 32) {
        all.expected = n;
        for (auto& w : warps) w.expected = 32;
        for (auto& st : stacks) st.reset(new char[kStack]);
    }
    static constexpr std::size_t kStack = 256 * 1024;
    unsigned int n;
    Barrier all;
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;
    std::vector<unsigned long long> xchg;  // one 8-byte slot per thread for the shuffles
    std::vector<Barrier> warps;
    ucontext_t scheduler_uc;  // written by the first switch into each fiber, never resumed
    jmp_buf scheduler;
    bool progress = false;  // did a fiber arrive at a barrier or finish since the last sweep?
};

inline Block* block = nullptr;
inline unsigned int tid = 0;  // linear thread index in the block of the running fiber

inline void yield() {
    if (!_setjmp(block->fibers[tid].env)) _longjmp(block->scheduler, 1);
}

inline void arrive_and_wait(Barrier& b) {
    const unsigned long long gen = b.generation;
    block->progress = true;  // an arrival changes the state: the next sweep may differ
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        ++b.generation;
        return;
    }
    Fiber& me = block->fibers[tid];
    me.waiting = &b;
    me.gen = gen;
    while (b.generation == gen) yield();
    me.waiting = nullptr;
}

template <typename T>
inline T shfl_xor(T v, int lane_mask, int width) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    const unsigned int lane = tid % 32, warp = tid / 32;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    block->xchg[tid] = bits;
    arrive_and_wait(block->warps[warp]);
    unsigned int src = lane ^ (unsigned int)lane_mask;
    const unsigned int seg = ~(unsigned int)(width - 1);
    if ((src & seg) > (lane & seg)) src = lane;  // a later segment: own value (CUDA semantics)
    bits = block->xchg[warp * 32 + src];
    arrive_and_wait(block->warps[warp]);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}

template <typename... A, std::size_t... I>
inline void call(void (*f)(A...), void** argv, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(argv[I])...);
}

// The running launch, read by the fibers' entry point (makecontext passes only ints).
inline void (*entry_body)(void*) = nullptr;
inline void* entry_state = nullptr;

[[noreturn]] inline void fiber_entry() {
    entry_body(entry_state);
    block->fibers[tid].done = true;
    block->progress = true;
    _longjmp(block->scheduler, 1);  // never returns: its stack is reused by the next block
}

inline void set_thread_index(unsigned int t, dim3 b) {
    tid = t;
    threadIdx = dim3(t % b.x, (t / b.x) % b.y, t / (b.x * b.y));
}

// Returns 0; 1 when the block size is not a multiple of 32; 2 when the threads of a block wait
// at barriers that can never open (they call them a different number of times).
template <typename... A>
inline int launch(void (*f)(A...), dim3 g, dim3 b, void** argv) {
    const unsigned int n = b.x * b.y * b.z;
    if (n == 0 || n % 32 != 0) return 1;
    gridDim = g;
    blockDim = b;
    struct State {
        void (*f)(A...);
        void** argv;
    } state{f, argv};
    entry_body = [](void* p) {
        auto* s = static_cast<State*>(p);
        call(s->f, s->argv, std::index_sequence_for<A...>{});
    };
    entry_state = &state;
    Block blk(n);
    block = &blk;
    for (unsigned int bz = 0; bz < g.z; ++bz)
        for (unsigned int by = 0; by < g.y; ++by)
            for (unsigned int bx = 0; bx < g.x; ++bx) {
                blockIdx = dim3(bx, by, bz);
                blk.all.arrived = 0;
                for (auto& w : blk.warps) w.arrived = 0;
                for (unsigned int t = 0; t < n; ++t) {
                    Fiber& fb = blk.fibers[t];
                    fb.done = false;
                    fb.started = false;
                    fb.waiting = nullptr;
                    getcontext(&fb.start);
                    fb.start.uc_stack.ss_sp = blk.stacks[t].get();
                    fb.start.uc_stack.ss_size = Block::kStack;
                    fb.start.uc_link = nullptr;
                    makecontext(&fb.start, fiber_entry, 0);
                }
                unsigned int left = n;
                while (left) {
                    blk.progress = false;
                    for (unsigned int t = 0; t < n; ++t) {
                        const Fiber& fb = blk.fibers[t];
                        if (fb.done || (fb.waiting && fb.waiting->generation == fb.gen)) continue;
                        set_thread_index(t, b);
                        if (!_setjmp(blk.scheduler)) {
                            Fiber& f = blk.fibers[t];
                            if (f.started) _longjmp(f.env, 1);
                            f.started = true;
                            swapcontext(&blk.scheduler_uc, &f.start);
                        }
                        if (blk.fibers[t].done) --left;
                    }
                    if (left && !blk.progress) {
                        block = nullptr;
                        return 2;
                    }
                }
            }
    block = nullptr;
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

inline void __syncthreads() { emu::arrive_and_wait(emu::block->all); }
inline void __syncwarp(unsigned int = 0xffffffffu) {
    emu::arrive_and_wait(emu::block->warps[emu::tid / 32]);
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
