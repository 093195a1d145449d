// Reparameterized Gaussian samples with their densities, noise from Philox (philox.cuh), and the
// backward with the noise regenerated (kernels/reparam_sample.py):
//
//   z[r, j]  = mu[b, j] + exp(logvar[b, j] / 2) eps[r, j],     r = k B + b (rows of (K, B))
//   log_q[r] = -Z log(2 pi) / 2 - sum_j (logvar[b, j] + eps[r, j]^2) / 2
//   log_p[r] = -Z log(2 pi) / 2 - sum_j z[r, j]^2 / 2
//   eps[r, j] = normal of global element offset + r Z + j
//
// Forward (lvm_reparam_sample_v1): a group of W lanes per row r; the lanes take the Philox blocks
// that overlap the row's element range in turn, convert a whole block (4 float32 / 2 float64
// normals; a pair shares its log and sincos) and keep the values that fall inside the row. Blocks
// at the two ends of a row are also evaluated by the neighbouring rows' groups (at most 2 blocks
// per row of extra work). Row sums: per-lane partials in the dtype, then a butterfly.
//
// Backward (lvm_reparam_sample_backward_v1): one thread per (K-chunk kc, b, j), looping over the
// chunk's k and accumulating g = dz - dlog_p z and g sigma eps in float64 into its own slot of
// acc_mu / acc_lv (nkc, B, Z); the wrapper sums the chunks in order. Each element's normal comes
// from lvm_philox<T>::normal_at, which evaluates the same Box-Muller pair with the same code as
// the forward's block conversion, so forward and backward see bit-identical eps.
#include "philox.cuh"

template <typename T>
__global__ void lvm_reparam_sample_v1(const T* mu, const T* logvar, T* z, T* log_q, T* log_p,
                                      long long R, long long B, long long Z, long long offset,
                                      unsigned int k0, unsigned int k1, unsigned int s0,
                                      unsigned int s1, T c, int W) {
    typedef lvm_math<T> M;
    const int per = lvm_philox<T>::per;
    const lvm_key key = lvm_key_make(k0, k1, s0, s1);
    const lvm_group grp = lvm_group_make(W);
    for (long long base = grp.warp0; base < R; base += grp.count) {
        const long long r = base + (grp.id - grp.warp0);
        const bool active = r < R;
        const long long g0 = offset + (active ? r : 0) * Z;   // the row's first element
        const long long g1 = g0 + Z;
        const long long first = g0 / per;
        const long long last = active ? (g1 - 1) / per : first - 1;
        const long long b = active ? r % B : 0;
        const T* mur = mu + b * Z;
        const T* lvr = logvar + b * Z;
        T* zr = z + (active ? r : 0) * Z;
        T aq = T(0), ap = T(0);
        for (long long blk = first + grp.lane; blk <= last; blk += W) {
            T v[4];
            lvm_philox<T>::normals(lvm_philox_block(key, (unsigned long long)blk), v);
#pragma unroll
            for (int s = 0; s < per; ++s) {
                const long long j = blk * per + s - g0;
                if (j < 0 || j >= Z) continue;
                const T e = v[s];
                const T lv = lvr[j];
                const T zz = mur[j] + M::exp(lv / T(2)) * e;
                zr[j] = zz;
                aq += lv + e * e;
                ap += zz * zz;
            }
        }
        aq = lvm_group_sum(aq, W);
        ap = lvm_group_sum(ap, W);
        if (active && grp.lane == 0) {
            log_q[r] = c - aq / T(2);
            log_p[r] = c - ap / T(2);
        }
    }
}

template <typename T>
__global__ void lvm_reparam_sample_backward_v1(const T* dz, const T* dlog_p, const T* mu,
                                               const T* logvar, double* acc_mu, double* acc_lv,
                                               long long K, long long B, long long Z,
                                               long long nkc, long long offset, unsigned int k0,
                                               unsigned int k1, unsigned int s0, unsigned int s1) {
    typedef lvm_math<T> M;
    const lvm_key key = lvm_key_make(k0, k1, s0, s1);
    const long long plane = B * Z;
    const long long total = nkc * plane;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long kc = i / plane;
        const long long p = i - kc * plane;     // b * Z + j
        const long long b = p / Z;
        const long long ka = kc * K / nkc, kb = (kc + 1) * K / nkc;
        const T sigma = M::exp(logvar[p] / T(2));
        const T m = mu[p];
        double am = 0.0, al = 0.0;
        for (long long k = ka; k < kb; ++k) {
            const T e = lvm_philox<T>::normal_at(key, (unsigned long long)(offset + k * plane + p));
            const T se = sigma * e;
            const T g = dz[k * plane + p] - dlog_p[k * B + b] * (m + se);
            am += (double)g;
            al += (double)(g * se);
        }
        acc_mu[i] = am;
        acc_lv[i] = al;
    }
}

template __global__ void lvm_reparam_sample_v1<float>(const float*, const float*, float*, float*,
                                                      float*, long long, long long, long long,
                                                      long long, unsigned int, unsigned int,
                                                      unsigned int, unsigned int, float, int);
template __global__ void lvm_reparam_sample_v1<double>(const double*, const double*, double*,
                                                       double*, double*, long long, long long,
                                                       long long, long long, unsigned int,
                                                       unsigned int, unsigned int, unsigned int,
                                                       double, int);
template __global__ void lvm_reparam_sample_backward_v1<float>(
    const float*, const float*, const float*, const float*, double*, double*, long long,
    long long, long long, long long, long long, unsigned int, unsigned int, unsigned int,
    unsigned int);
template __global__ void lvm_reparam_sample_backward_v1<double>(
    const double*, const double*, const double*, const double*, double*, double*, long long,
    long long, long long, long long, long long, unsigned int, unsigned int, unsigned int,
    unsigned int);
