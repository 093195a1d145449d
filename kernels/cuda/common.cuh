// Shared device helpers of the lvmcore CUDA kernels: per-dtype math and limits, and reductions
// over a "group" of W consecutive lanes of one warp (W a power of two, 1 <= W <= 32).
//
// No standard headers: NVRTC (CuPy's RawModule) has none, so integer types are spelled out and
// the limits are bit patterns. The Python loader inlines this file where it is included.
//
// Group reductions use __shfl_xor_sync with the full warp mask: every lane of the warp must call
// them, the same number of times. Kernels therefore run their row loops with a trip count that is
// uniform across the warp (see lvm_group_loop_* below) and let lanes without work take part with
// neutral values. In a butterfly, lanes i and i ^ o add the same two operands (a + b == b + a in
// IEEE arithmetic), so after log2(W) steps every lane of the group holds the same, deterministic
// result.
#ifndef LVM_COMMON_CUH
#define LVM_COMMON_CUH

#define LVM_FULL_MASK 0xffffffffu
#define LVM_NO_INDEX 0x7fffffffffffffffLL

template <typename T> struct lvm_math;

template <> struct lvm_math<float> {
    static __device__ __forceinline__ float exp(float x) { return expf(x); }
    static __device__ __forceinline__ float log(float x) { return logf(x); }
    static __device__ __forceinline__ float log1p(float x) { return log1pf(x); }
    static __device__ __forceinline__ float sqrt(float x) { return sqrtf(x); }
    static __device__ __forceinline__ float abs(float x) { return fabsf(x); }
    static __device__ __forceinline__ void sincos(float x, float* s, float* c) { sincosf(x, s, c); }
    static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
    // smallest normal number (FLT_MIN)
    static __device__ __forceinline__ float tiny() { return __int_as_float(0x00800000); }
};

template <> struct lvm_math<double> {
    static __device__ __forceinline__ double exp(double x) { return ::exp(x); }
    static __device__ __forceinline__ double log(double x) { return ::log(x); }
    static __device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
    static __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
    static __device__ __forceinline__ double abs(double x) { return fabs(x); }
    static __device__ __forceinline__ void sincos(double x, double* s, double* c) {
        ::sincos(x, s, c);
    }
    static __device__ __forceinline__ double inf() {
        return __longlong_as_double(0x7ff0000000000000LL);
    }
    // smallest normal number (DBL_MIN)
    static __device__ __forceinline__ double tiny() {
        return __longlong_as_double(0x0010000000000000LL);
    }
};

// True for finite x (false for +-inf and NaN), without isfinite(): written like the Numba
// kernels' _finite_or so that every backend classifies values the same way.
template <typename T>
__device__ __forceinline__ bool lvm_is_finite(T x) {
    return (x > -lvm_math<T>::inf()) && (x < lvm_math<T>::inf());
}

// Sum over the group of W lanes; every lane of the group gets the same value.
template <typename T>
__device__ __forceinline__ T lvm_group_sum(T v, int W) {
    for (int o = W >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(LVM_FULL_MASK, v, o, W);
    return v;
}

// Index-aware maximum over the group: the larger value wins, equal values go to the lower index,
// and LVM_NO_INDEX (a lane that saw no element) loses to any index.
template <typename T>
__device__ __forceinline__ void lvm_group_argmax(T& v, long long& i, int W) {
    for (int o = W >> 1; o > 0; o >>= 1) {
        const T ov = __shfl_xor_sync(LVM_FULL_MASK, v, o, W);
        const long long oi = __shfl_xor_sync(LVM_FULL_MASK, i, o, W);
        const bool take = (oi != LVM_NO_INDEX) &&
                          (i == LVM_NO_INDEX || ov > v || (ov == v && oi < i));
        v = take ? ov : v;
        i = take ? oi : i;
    }
}

// Index-aware minimum over the group (the smaller value wins; ties and LVM_NO_INDEX as above).
template <typename T>
__device__ __forceinline__ void lvm_group_argmin(T& v, long long& i, int W) {
    for (int o = W >> 1; o > 0; o >>= 1) {
        const T ov = __shfl_xor_sync(LVM_FULL_MASK, v, o, W);
        const long long oi = __shfl_xor_sync(LVM_FULL_MASK, i, o, W);
        const bool take = (oi != LVM_NO_INDEX) &&
                          (i == LVM_NO_INDEX || ov < v || (ov == v && oi < i));
        v = take ? ov : v;
        i = take ? oi : i;
    }
}

// Group-per-row scheduling. The grid is cut into groups of W consecutive threads (a block has a
// multiple of 32 threads, so a group never straddles warps); group g takes rows g, g + ngroups,
// ... The loop runs while the *warp's* first group still has a row, so its trip count is uniform
// across the warp and the shuffles above stay legal; a group past the end is `active == false`
// and must do no memory work.
struct lvm_group {
    long long id;        // this group's index in the grid
    long long warp0;     // index of the first group of this warp
    long long count;     // groups in the grid
    int lane;            // lane within the group, 0 .. W - 1
    int W;
};

__device__ __forceinline__ lvm_group lvm_group_make(int W) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    lvm_group g;
    g.id = t / W;
    g.warp0 = (t & ~31LL) / W;
    g.count = ((long long)gridDim.x * blockDim.x) / W;
    g.lane = (int)(t % W);
    g.W = W;
    return g;
}

#endif  // LVM_COMMON_CUH
