// lvm_mixture_logprob_{forward,dz,dparams}_v1: the log-density of each row of z (N, Z) under a
// mixture of C diagonal Gaussians and its backward (kernels/mixture_logprob.py).
//
// The means and inverse variances come transposed, muT and ivT (Z, C), so that lanes over the
// components read consecutive addresses; cst (C,) = log w_c - 1/2 (sum_j logvar_cj + Z log 2 pi).
//
// forward: a group of W lanes per row (W = 32 for C >= 32, the next power of two >= C below).
// Lane l forms a[c] = cst[c] - 1/2 sum_j (z_j - mu_jc)^2 iv_jc for c = l, l + W, ... into the
// row of resp, then a group maximum (shuffles), exp(a - shift) with the lane's partial sum in
// float64, a group sum, log_p = log(sum) + shift, and the scale by 1 / sum. The shift is 0 when
// the row maximum is not finite (every component -inf): log_p = -inf, resp = 0, no NaN. Each
// element of resp is written and re-read by the same lane.
//
// dz: the same groups; for each j a lane sums g_c (z_j - mu_jc) iv_jc over its components
// (g_c = dlog_p resp[n, c]) and the group sum gives dz[n, j] = -sum.
//
// dparams: one thread per (j, c) (t = j C + c, so a warp reads 32 consecutive components of a
// row of resp), looping over the N rows in a fixed order with float64 sums: dmu, dlogvar written
// (C, Z), dlog_weights by the j = 0 threads. Deterministic: no atomics.
#include "common.cuh"

// Maximum over the group of W lanes; every lane gets the same value. NaN never wins (it cannot
// reach here: the wrapper refuses non-finite input).
template <typename T>
__device__ __forceinline__ T lvm_mix_group_max(T v, int W) {
    for (int o = W >> 1; o > 0; o >>= 1) {
        const T u = __shfl_xor_sync(LVM_FULL_MASK, v, o, W);
        v = u > v ? u : v;
    }
    return v;
}

template <typename T>
__global__ void lvm_mixture_logprob_forward_v1(const T* z, const T* muT, const T* ivT,
                                               const T* cst, T* log_p, T* resp, long long N,
                                               long long C, long long Z, int W) {
    typedef lvm_math<T> M;
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long n = base + (grp.id - grp.warp0);
        const bool active = n < N;
        const long long cn = active ? C : 0;
        const T* zr = z + (active ? n : 0) * Z;
        T* ar = resp + (active ? n : 0) * C;
        T m = -M::inf();
        for (long long c = grp.lane; c < cn; c += W) {
            T a = cst[c];
            for (long long j = 0; j < Z; ++j) {
                const T d = zr[j] - muT[j * C + c];
                a -= T(0.5) * d * d * ivT[j * C + c];
            }
            ar[c] = a;
            m = a > m ? a : m;
        }
        m = lvm_mix_group_max(m, W);
        const T shift = lvm_is_finite(m) ? m : T(0);
        double s = 0.0;
        for (long long c = grp.lane; c < cn; c += W) {
            const T e = M::exp(ar[c] - shift);
            ar[c] = e;
            s += (double)e;
        }
        s = lvm_group_sum(s, W);
        const T inv = s != 0.0 ? (T)(1.0 / s) : T(0);
        if (active && grp.lane == 0) log_p[n] = s != 0.0 ? (T)(::log(s) + (double)shift) : -M::inf();
        for (long long c = grp.lane; c < cn; c += W) ar[c] = ar[c] * inv;
    }
}

template <typename T>
__global__ void lvm_mixture_logprob_dz_v1(const T* dlog_p, const T* z, const T* muT,
                                          const T* ivT, const T* resp, T* dz, long long N,
                                          long long C, long long Z, int W) {
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long n = base + (grp.id - grp.warp0);
        const bool active = n < N;
        const long long cn = active ? C : 0;
        const long long r = active ? n : 0;
        const T dn = active ? dlog_p[r] : T(0);
        for (long long j = 0; j < Z; ++j) {  // Z is uniform across the warp: shuffles stay legal
            const T zj = active ? z[r * Z + j] : T(0);
            T acc = T(0);
            for (long long c = grp.lane; c < cn; c += W) {
                acc += dn * resp[r * C + c] * (zj - muT[j * C + c]) * ivT[j * C + c];
            }
            acc = lvm_group_sum(acc, W);
            if (active && grp.lane == 0) dz[r * Z + j] = -acc;
        }
    }
}

template <typename T>
__global__ void lvm_mixture_logprob_dparams_v1(const T* dlog_p, const T* z, const T* muT,
                                               const T* ivT, const T* resp, T* dmu, T* dlogvar,
                                               T* dlw, long long N, long long C, long long Z) {
    const long long work = C * (Z > 0 ? Z : 1);
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < work;
         t += (long long)gridDim.x * blockDim.x) {
        const long long j = t / C, c = t % C;
        const bool has_j = j < Z;
        const double mu = has_j ? (double)muT[t] : 0.0;
        const double iv = has_j ? (double)ivT[t] : 0.0;
        double s1 = 0.0, s2 = 0.0, sg = 0.0;
        for (long long n = 0; n < N; ++n) {
            const double g = (double)dlog_p[n] * (double)resp[n * C + c];
            sg += g;
            if (has_j) {
                const double d = (double)z[n * Z + j] - mu;
                const double u = g * d * iv;
                s1 += u;
                s2 += u * d;
            }
        }
        if (has_j) {
            dmu[c * Z + j] = (T)s1;
            dlogvar[c * Z + j] = (T)(0.5 * (s2 - sg));
        }
        if (j == 0) dlw[c] = (T)sg;
    }
}

#define LVM_MIX_INSTANTIATE(T)                                                                  \
    template __global__ void lvm_mixture_logprob_forward_v1<T>(                                 \
        const T*, const T*, const T*, const T*, T*, T*, long long, long long, long long, int);  \
    template __global__ void lvm_mixture_logprob_dz_v1<T>(const T*, const T*, const T*,         \
                                                          const T*, const T*, T*, long long,    \
                                                          long long, long long, int);           \
    template __global__ void lvm_mixture_logprob_dparams_v1<T>(                                 \
        const T*, const T*, const T*, const T*, const T*, T*, T*, T*, long long, long long,     \
        long long);

LVM_MIX_INSTANTIATE(float)
LVM_MIX_INSTANTIATE(double)
