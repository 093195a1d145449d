// lvm_importance_weights_v1: per column b of log_w (K, B), B contiguous, the bound
// log (1/K) sum_k exp(lw[k, b]) and the weights softmax_k(lw[:, b])
// (kernels/importance_weights.py).
//
// A block is 32 columns x TY row-slices (blockDim = (32, TY)): thread (tx, ty) owns column
// b0 + tx and rows ty, ty + TY, ... A warp is one row-slice of 32 adjacent columns, so every
// load is one coalesced 128-byte (float32) row segment; TY > 1 only adds parallelism when B is
// small (TY = 1 would be one thread per column). The TY partial maxima and sums of a column meet
// in shared memory and are combined in a fixed order, so results do not depend on the grid.
// Three passes over the column: max, sum of exp(lw - shift) in float64, weights. For the sizes
// the engine uses (K B of a few MB) the second and third read hit L2.
//
// Special values as the Numba kernels: shift = the column max if finite, else 0 (so an all -inf
// column gives sum 0, bound -inf, weights 0; +inf gives bound +inf and NaN weights at the +inf
// entries; NaN never wins the max but reaches the sum through exp, so a NaN column is all NaN).
// Weights below the smallest normal number are returned as 0 (no subnormals for the backward).
// In place (weights == log_w) is safe: each element is read, then written, by the same thread.
#include "common.cuh"

#define LVM_IW_MAX_TY 32

template <typename T>
__global__ void lvm_importance_weights_v1(const T* log_w, T* weights, T* bound, long long K,
                                          long long B, double log_k) {
    typedef lvm_math<T> M;
    __shared__ T smax[LVM_IW_MAX_TY][32];
    __shared__ double ssum[LVM_IW_MAX_TY][32];
    const int tx = threadIdx.x, ty = threadIdx.y, TY = blockDim.y;
    // Block-uniform loop over groups of 32 columns (the __syncthreads below need every thread).
    for (long long b0 = (long long)blockIdx.x * 32; b0 < B; b0 += (long long)gridDim.x * 32) {
        const long long b = b0 + tx;
        const long long k_end = b < B ? K : 0;  // threads past the last column read nothing
        T m = -M::inf();
        for (long long k = ty; k < k_end; k += TY) {
            const T v = log_w[k * B + b];
            m = v > m ? v : m;                  // NaN never wins
        }
        smax[ty][tx] = m;
        __syncthreads();
        m = -M::inf();
        for (int j = 0; j < TY; ++j) m = smax[j][tx] > m ? smax[j][tx] : m;
        const T shift = lvm_is_finite(m) ? m : T(0);
        double s = 0.0;
        for (long long k = ty; k < k_end; k += TY) s += (double)M::exp(log_w[k * B + b] - shift);
        ssum[ty][tx] = s;
        __syncthreads();
        s = 0.0;
        for (int j = 0; j < TY; ++j) s += ssum[j][tx];
        const T inv = s != 0.0 ? (T)(1.0 / s) : T(0);
        if (b < B && ty == 0) bound[b] = (T)(::log(s) + (double)shift - log_k);
        for (long long k = ty; k < k_end; k += TY) {
            const T v = M::exp(log_w[k * B + b] - shift) * inv;
            weights[k * B + b] = v < M::tiny() ? T(0) : v;  // NaN stays NaN
        }
        __syncthreads();  // smax / ssum are reused by the next group of columns
    }
}

template __global__ void lvm_importance_weights_v1<float>(const float*, float*, float*, long long,
                                                          long long, double);
template __global__ void lvm_importance_weights_v1<double>(const double*, double*, double*,
                                                           long long, long long, double);
