// lvm_bernoulli_loglik_v1: loglik[r] = sum_d x l - softplus(l) and, with GRAD, the gradient row
// x - sigmoid(l), for logits (N, D) against x[r % B] (kernels/bernoulli_loglik.py).
//
// A group of W lanes per row (W = 32 for D >= 32; the next power of two >= D otherwise). Lanes
// walk the row at a stride of W, so a warp reads and writes W consecutive elements at a time,
// and keep one partial sum each in the data dtype; a butterfly over the group adds the partials.
// Error of the float32 sum: each lane adds about D / W terms, then log2(W) levels, all terms
// <= 0 (no cancellation): about (D / 32 + 5) ulp in the worst case, 1.8e-6 relative at D = 784.
// In place (grad == logits) is safe: each element is read, then written, by the same lane.
// With BIAS every formula reads l = logits[r, d] + bias[d] (added in T, as the decoder would).
#include "common.cuh"

template <typename T, bool GRAD, bool BIAS>
__global__ void lvm_bernoulli_loglik_v1(const T* logits, const T* x, const T* bias, T* grad,
                                        T* loglik, long long N, long long D, long long B,
                                        int W) {
    typedef lvm_math<T> M;
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long r = base + (grp.id - grp.warp0);
        const bool active = r < N;
        const long long n = active ? D : 0;
        const T* lr = logits + (active ? r : 0) * D;
        const T* xr = x + (active ? r % B : 0) * D;
        T* gr = grad + (active ? r : 0) * D;
        T acc = T(0);
        for (long long d = grp.lane; d < n; d += W) {
            const T l = BIAS ? lr[d] + bias[d] : lr[d];
            const T xv = xr[d];
            const T t = M::exp(-M::abs(l));                 // in [0, 1]: nothing overflows
            const T softplus = (l > T(0) ? l : T(0)) + M::log1p(t);
            acc += xv * l - softplus;
            if (GRAD) gr[d] = xv - (l >= T(0) ? T(1) : t) / (T(1) + t);
        }
        acc = lvm_group_sum(acc, W);
        if (active && grp.lane == 0) loglik[r] = acc;
    }
}

#define LVM_BERNOULLI_INSTANTIATE(T, GRAD, BIAS)                                                \
    template __global__ void lvm_bernoulli_loglik_v1<T, GRAD, BIAS>(                            \
        const T*, const T*, const T*, T*, T*, long long, long long, long long, int);

LVM_BERNOULLI_INSTANTIATE(float, true, true)
LVM_BERNOULLI_INSTANTIATE(float, true, false)
LVM_BERNOULLI_INSTANTIATE(float, false, true)
LVM_BERNOULLI_INSTANTIATE(float, false, false)
LVM_BERNOULLI_INSTANTIATE(double, true, true)
LVM_BERNOULLI_INSTANTIATE(double, true, false)
LVM_BERNOULLI_INSTANTIATE(double, false, true)
LVM_BERNOULLI_INSTANTIATE(double, false, false)
