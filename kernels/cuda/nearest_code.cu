// lvm_nearest_code_v1: the search step of kernels/nearest_code.py for one tile of queries.
//
// The wrapper computes S = x[n0:n0+nt] @ codebook.T (nt, M) with cuBLAS into a reused buffer;
// this kernel takes one group of W lanes per query row r:
//   score[m] = ||e_m||^2 - (S[r, m] + S[r, m])      (the row's ||x||^2 is common to all m)
//   k = argmin_m score[m], the lowest m among equal scores (lanes visit m in increasing order
//       and replace on a strict <; the butterfly keeps the lower index on ties)
//   dist2 = sum_e (x[r, e] - codebook[k, e])^2, recomputed in float64 and rounded once, so it is
//       the distance to the chosen code to one rounding and never negative.
// The full N x M score matrix never exists: only the tile's (nt, M) block.
#include "common.cuh"

template <typename T>
__global__ void lvm_nearest_code_v1(const T* S, const T* cn, const T* x, const T* cb,
                                    long long* index, T* dist2, long long nt, long long M,
                                    long long E, int W) {
    typedef lvm_math<T> Mt;
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < nt; base += grp.count) {
        const long long r = base + (grp.id - grp.warp0);
        const bool active = r < nt;
        const long long mend = active ? M : 0;
        const T* sr = S + (active ? r : 0) * M;
        // As the Numba kernel: best starts at +inf and only a strict < replaces it, so a row
        // whose scores are all +inf or NaN (overflow, reported by the wrapper) gets index 0.
        T best = Mt::inf();
        long long bi = LVM_NO_INDEX;
        for (long long m = grp.lane; m < mend; m += W) {
            const T s = sr[m];
            const T v = cn[m] - (s + s);                 // s + s: exact, no promotion
            if (v < best) {
                best = v;
                bi = m;
            }
        }
        lvm_group_argmin(best, bi, W);
        const long long k = (bi == LVM_NO_INDEX || !active) ? 0 : bi;
        const long long eend = active ? E : 0;
        const T* xr = x + (active ? r : 0) * E;
        const T* ck = cb + k * E;
        double acc = 0.0;
        for (long long e = grp.lane; e < eend; e += W) {
            const double d = (double)xr[e] - (double)ck[e];
            acc += d * d;
        }
        acc = lvm_group_sum(acc, W);
        if (active && grp.lane == 0) {
            index[r] = k;
            dist2[r] = (T)acc;
        }
    }
}

template __global__ void lvm_nearest_code_v1<float>(const float*, const float*, const float*,
                                                    const float*, long long*, float*, long long,
                                                    long long, long long, int);
template __global__ void lvm_nearest_code_v1<double>(const double*, const double*, const double*,
                                                     const double*, long long*, double*,
                                                     long long, long long, long long, int);
