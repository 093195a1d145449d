// Gumbel-Softmax samples, their backward, and Gumbel-max sampling (kernels/gumbel_softmax.py):
//
//   s[n, c] = logits[n, c] + g[n, c],   g = Gumbel of global element offset + n C + c
//   y[n]    = exp((s[n] - max s[n]) / tau) / sum(...)          (soft)
//   y[n]    = one_hot(argmax s[n])                              (hard; ties: lowest index)
//
// lvm_gumbel_softmax_v1 / lvm_gumbel_max_v1: a group of W lanes per row. Pass 1: the lanes take
// the Philox blocks overlapping the row in turn, convert whole blocks to Gumbels, form s for the
// elements inside the row (stored in the soft output as scratch when a soft sample is wanted)
// and keep a running (max, first argmax); a butterfly combines the lanes (larger value, else
// lower index). Pass 2: e = exp((s - max) / tau) (max subtracted before dividing, so nothing
// overflows for any tau > 0), summed per lane and combined; pass 3 divides. Lanes re-read in
// pass 2 what other lanes wrote in pass 1, hence the __syncwarp between them.
//
// lvm_gumbel_softmax_backward_v1: a group per row; pass 1 sum_c dy y; pass 2 dlogits =
// y (dy - sum) / tau and the row's share of dtau, sum_c dlogits a (a = the given softmax argument,
// or log y on y > 0), accumulated in float64 into partial[n]; the wrapper sums the rows in order.
#include "philox.cuh"

template <typename T>
__global__ void lvm_gumbel_softmax_v1(const T* logits, T* y, T* soft_out, long long N,
                                      long long C, long long offset, unsigned int k0,
                                      unsigned int k1, unsigned int s0, unsigned int s1, T tau,
                                      int hard, int soft, int W) {
    typedef lvm_math<T> M;
    const int per = lvm_philox<T>::per;
    const lvm_key key = lvm_key_make(k0, k1, s0, s1);
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long n = base + (grp.id - grp.warp0);
        const bool active = n < N;
        const long long g0 = offset + (active ? n : 0) * C;
        const long long first = g0 / per;
        const long long last = active ? (g0 + C - 1) / per : first - 1;
        const long long cend = active ? C : 0;
        const T* lr = logits + (active ? n : 0) * C;
        T* sr = soft_out + (active ? n : 0) * C;
        T m = -M::inf();
        long long am = LVM_NO_INDEX;
        for (long long blk = first + grp.lane; blk <= last; blk += W) {
            T v[4];
            lvm_philox<T>::gumbels(lvm_philox_block(key, (unsigned long long)blk), v);
#pragma unroll
            for (int s = 0; s < per; ++s) {
                const long long j = blk * per + s - g0;
                if (j < 0 || j >= C) continue;
                const T sv = lr[j] + v[s];
                if (soft) sr[j] = sv;
                if (am == LVM_NO_INDEX || sv > m) {  // strict: the lowest index wins ties
                    m = sv;
                    am = j;
                }
            }
        }
        lvm_group_argmax(m, am, W);
        if (hard) {
            T* yr = y + (active ? n : 0) * C;
            for (long long j = grp.lane; j < cend; j += W) yr[j] = j == am ? T(1) : T(0);
        }
        if (soft) {
            __syncwarp();
            T acc = T(0);
            for (long long j = grp.lane; j < cend; j += W) {
                const T e = M::exp((sr[j] - m) / tau);   // <= 1; 0 for masked (-inf) entries
                sr[j] = e;
                acc += e;
            }
            acc = lvm_group_sum(acc, W);                 // >= 1: the argmax term is exp(0)
            for (long long j = grp.lane; j < cend; j += W) sr[j] = sr[j] / acc;  // own j only
        }
    }
}

template <typename T>
__global__ void lvm_gumbel_max_v1(const T* logits, long long* index, long long N, long long C,
                                  long long offset, unsigned int k0, unsigned int k1,
                                  unsigned int s0, unsigned int s1, int W) {
    typedef lvm_math<T> M;
    const int per = lvm_philox<T>::per;
    const lvm_key key = lvm_key_make(k0, k1, s0, s1);
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long n = base + (grp.id - grp.warp0);
        const bool active = n < N;
        const long long g0 = offset + (active ? n : 0) * C;
        const long long first = g0 / per;
        const long long last = active ? (g0 + C - 1) / per : first - 1;
        const T* lr = logits + (active ? n : 0) * C;
        T m = -M::inf();
        long long am = LVM_NO_INDEX;
        for (long long blk = first + grp.lane; blk <= last; blk += W) {
            T v[4];
            lvm_philox<T>::gumbels(lvm_philox_block(key, (unsigned long long)blk), v);
#pragma unroll
            for (int s = 0; s < per; ++s) {
                const long long j = blk * per + s - g0;
                if (j < 0 || j >= C) continue;
                const T sv = lr[j] + v[s];
                if (am == LVM_NO_INDEX || sv > m) {
                    m = sv;
                    am = j;
                }
            }
        }
        lvm_group_argmax(m, am, W);
        if (active && grp.lane == 0) index[n] = am;
    }
}

template <typename T>
__global__ void lvm_gumbel_softmax_backward_v1(const T* dy, const T* y, const T* a, T* dlogits,
                                               double* partial, long long N, long long C, T tau,
                                               int has_a, int W) {
    typedef lvm_math<T> M;
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long n = base + (grp.id - grp.warp0);
        const bool active = n < N;
        const long long cend = active ? C : 0;
        const long long o = (active ? n : 0) * C;
        T sd = T(0);
        for (long long j = grp.lane; j < cend; j += W) sd += dy[o + j] * y[o + j];
        sd = lvm_group_sum(sd, W);
        double acc = 0.0;
        for (long long j = grp.lane; j < cend; j += W) {
            const T yv = y[o + j];
            const T dl = yv * (dy[o + j] - sd) / tau;
            dlogits[o + j] = dl;
            // only where y > 0: a masked category's a is -inf, and 0 * -inf is NaN
            const T av = yv > T(0) ? (has_a ? a[o + j] : M::log(yv)) : T(0);
            acc += (double)(dl * av);
        }
        acc = lvm_group_sum(acc, W);
        if (active && grp.lane == 0) partial[n] = acc;
    }
}

template __global__ void lvm_gumbel_softmax_v1<float>(const float*, float*, float*, long long,
                                                      long long, long long, unsigned int,
                                                      unsigned int, unsigned int, unsigned int,
                                                      float, int, int, int);
template __global__ void lvm_gumbel_softmax_v1<double>(const double*, double*, double*,
                                                       long long, long long, long long,
                                                       unsigned int, unsigned int, unsigned int,
                                                       unsigned int, double, int, int, int);
template __global__ void lvm_gumbel_max_v1<float>(const float*, long long*, long long, long long,
                                                  long long, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, int);
template __global__ void lvm_gumbel_max_v1<double>(const double*, long long*, long long,
                                                   long long, long long, unsigned int,
                                                   unsigned int, unsigned int, unsigned int, int);
template __global__ void lvm_gumbel_softmax_backward_v1<float>(const float*, const float*,
                                                               const float*, float*, double*,
                                                               long long, long long, float, int,
                                                               int);
template __global__ void lvm_gumbel_softmax_backward_v1<double>(const double*, const double*,
                                                                const double*, double*, double*,
                                                                long long, long long, double,
                                                                int, int);
