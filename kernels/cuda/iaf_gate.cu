// lvm_iaf_gate_v1: the gated update of an IAF step (kernels/iaf_gate.py). For row r of the MADE
// output y (N, 2, Z) (m = y[r, 0], s_raw = y[r, 1]) and the input z (N, Z), with t = s_raw + fb:
//   s = sigmoid(t), oms = sigmoid(-t), z_new = s z + oms m, logdet[r] = sum_j log_sigmoid(t_j).
//
// A group of W lanes per row (W = 32 for Z >= 32; the next power of two >= Z otherwise). Lanes
// walk the row at a stride of W, so a warp reads and writes W consecutive elements at a time;
// each keeps a partial sum of its log-sigmoid terms (all <= 0, no cancellation), and a butterfly
// over the group adds the partials: a fixed order for a given Z.
//
// One exp per element: e = exp(-|t|) <= 1, s and oms are 1 / (1 + e) and e / (1 + e) in the order
// the sign of t says (never 1 - the other), log_sigmoid(t) = min(t, 0) - log1p(e). With CuPy's
// -ftz=true a float32 e that would be subnormal is 0, so s and oms are 0, 1 or normal.
#include "common.cuh"

template <typename T>
__global__ void lvm_iaf_gate_v1(const T* y, const T* z, T fb, T* z_new, T* s, T* oms, T* logdet,
                                long long N, long long Z, int W) {
    typedef lvm_math<T> M;
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < N; base += grp.count) {
        const long long r = base + (grp.id - grp.warp0);
        const bool active = r < N;
        const long long n = active ? Z : 0;
        const long long row = active ? r : 0;
        const T* mr = y + row * 2 * Z;
        const T* tr = mr + Z;
        const T* zr = z + row * Z;
        T acc = T(0);
        for (long long j = grp.lane; j < n; j += W) {
            const T t = tr[j] + fb;
            const T e = M::exp(-M::abs(t));  // in [0, 1]: nothing overflows
            const T d = T(1) + e;
            const T p = T(1) / d;  // sigmoid(|t|)
            const T q = e / d;     // sigmoid(-|t|)
            const bool pos = t >= T(0);
            const T sj = pos ? p : q;
            const T oj = pos ? q : p;
            s[row * Z + j] = sj;
            oms[row * Z + j] = oj;
            z_new[row * Z + j] = sj * zr[j] + oj * mr[j];
            acc += (t < T(0) ? t : T(0)) - M::log1p(e);
        }
        acc = lvm_group_sum(acc, W);
        if (active && grp.lane == 0) logdet[r] = acc;
    }
}

template __global__ void lvm_iaf_gate_v1<float>(const float*, const float*, float, float*, float*,
                                                float*, float*, long long, long long, int);
template __global__ void lvm_iaf_gate_v1<double>(const double*, const double*, double, double*,
                                                 double*, double*, double*, long long, long long,
                                                 int);
