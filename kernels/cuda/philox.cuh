// Philox4x32-10 and its uniform / normal / Gumbel conversions: the CUDA port of kernels/philox.py.
//
// The mapping is philox.py's, word for word (its docstring is normative):
//   key     = (seed & 0xffffffff, seed >> 32)                 -> (k0, k1)
//   counter = (b & 0xffffffff, b >> 32, s0, s1),  (s0, s1) = (stream & 0xffffffff, stream >> 32)
//   element g lives in block b = g / E at slot g % E; E = 4 (float32), 2 (float64)
//   U32(w)    = (float(w >> 9) + 0.5f) * 2^-23                               (exact)
//   U64(a, b) = (double(((a << 32) | b) >> 12) + 0.5) * 2^-52               (exact)
//   float32 normals: (U32(w0), U32(w1)) -> slots 0, 1; (U32(w2), U32(w3)) -> slots 2, 3
//   float64 normals: (U64(w0, w1), U64(w2, w3)) -> slots 0, 1
//   Box-Muller: r = sqrt(-2 log u1), t = 2pi u2 (2pi rounded to the dtype), z0 = r cos t,
//   z1 = r sin t; Gumbel: -log(-log u). All arithmetic in the output dtype.
//
// The words and the uniforms are bit-identical to philox.py: the conversions are exact, and
// they are written with __fadd_rn / __fmul_rn (__dadd_rn / __dmul_rn), which the compiler never
// contracts into an FMA. Normals and Gumbels go through logf / sincosf (float32) and log / sincos
// (float64) of the CUDA math library, so they agree with NumPy's to a few ulp only.
//
// Forward and backward kernels that regenerate the same noise must both call the functions
// below (lvm_philox<T>::normals / ::normal_at use the same lvm_box_muller), so that the two
// passes see bit-identical noise.
#ifndef LVM_PHILOX_CUH
#define LVM_PHILOX_CUH

#include "common.cuh"

struct lvm_words {
    unsigned int w0, w1, w2, w3;
};

// Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1) (Salmon et al. 2011; the rounds
// of philox.philox4x32_10: mulhilo, xor with the other counter words and the key, key bumped by
// the Weyl increments before rounds 2..10).
__device__ __forceinline__ lvm_words lvm_philox4x32_10(unsigned int c0, unsigned int c1,
                                                      unsigned int c2, unsigned int c3,
                                                      unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned int hi0 = __umulhi(0xD2511F53u, c0);
        const unsigned int lo0 = 0xD2511F53u * c0;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c2);
        const unsigned int lo1 = 0xCD9E8D57u * c2;
        const unsigned int n0 = hi1 ^ c1 ^ k0;
        const unsigned int n2 = hi0 ^ c3 ^ k1;
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
    }
    lvm_words w;
    w.w0 = c0;
    w.w1 = c1;
    w.w2 = c2;
    w.w3 = c3;
    return w;
}

// The key and stream words of one (seed, stream) pair (philox.key_words on the host).
struct lvm_key {
    unsigned int k0, k1, s0, s1;
};

__device__ __forceinline__ lvm_key lvm_key_make(unsigned int k0, unsigned int k1,
                                               unsigned int s0, unsigned int s1) {
    lvm_key k;
    k.k0 = k0;
    k.k1 = k1;
    k.s0 = s0;
    k.s1 = s1;
    return k;
}

// Output words of block b.
__device__ __forceinline__ lvm_words lvm_philox_block(const lvm_key& key, unsigned long long b) {
    return lvm_philox4x32_10((unsigned int)(b & 0xffffffffull), (unsigned int)(b >> 32),
                             key.s0, key.s1, key.k0, key.k1);
}

// U32: 23 bits, in [2^-24, 1 - 2^-24]; every step exact.
__device__ __forceinline__ float lvm_u01_f32(unsigned int w) {
    return __fmul_rn(__fadd_rn((float)(w >> 9), 0.5f), 1.1920928955078125e-07f);  // 2^-23
}

// U64: 52 bits, in [2^-53, 1 - 2^-53]; a supplies the high bits; every step exact.
__device__ __forceinline__ double lvm_u01_f64(unsigned int a, unsigned int b) {
    const unsigned long long x = (((unsigned long long)a << 32) | (unsigned long long)b) >> 12;
    return __dmul_rn(__dadd_rn((double)x, 0.5), 2.220446049250313080847263336181640625e-16);
}

template <typename T> struct lvm_two_pi;
template <> struct lvm_two_pi<float> {
    static __device__ __forceinline__ float value() { return 6.28318530717958647692f; }
};
template <> struct lvm_two_pi<double> {
    static __device__ __forceinline__ double value() { return 6.28318530717958647692; }
};

// Box-Muller in the dtype T: (u1, u2) -> (z0, z1) = r (cos t, sin t).
template <typename T>
__device__ __forceinline__ void lvm_box_muller(T u1, T u2, T* z0, T* z1) {
    const T r = lvm_math<T>::sqrt(T(-2) * lvm_math<T>::log(u1));
    const T t = lvm_two_pi<T>::value() * u2;
    T s, c;
    lvm_math<T>::sincos(t, &s, &c);
    *z0 = r * c;
    *z1 = r * s;
}

template <typename T>
__device__ __forceinline__ T lvm_gumbel_of(T u) {
    return -lvm_math<T>::log(-lvm_math<T>::log(u));
}

// Per-dtype slot layout. `per` values per block; the *_block functions convert one block's words
// into its `per` values in slot order (v has room for 4); the *_at functions give the value of
// one global element g (they evaluate the block of g, and for normals the pair its slot belongs
// to, with the same code as the *_block functions).
template <typename T> struct lvm_philox;

template <> struct lvm_philox<float> {
    static const int per = 4;

    static __device__ __forceinline__ void uniforms(const lvm_words& w, float* v) {
        v[0] = lvm_u01_f32(w.w0);
        v[1] = lvm_u01_f32(w.w1);
        v[2] = lvm_u01_f32(w.w2);
        v[3] = lvm_u01_f32(w.w3);
    }
    static __device__ __forceinline__ void gumbels(const lvm_words& w, float* v) {
        v[0] = lvm_gumbel_of(lvm_u01_f32(w.w0));
        v[1] = lvm_gumbel_of(lvm_u01_f32(w.w1));
        v[2] = lvm_gumbel_of(lvm_u01_f32(w.w2));
        v[3] = lvm_gumbel_of(lvm_u01_f32(w.w3));
    }
    static __device__ __forceinline__ void normals(const lvm_words& w, float* v) {
        lvm_box_muller(lvm_u01_f32(w.w0), lvm_u01_f32(w.w1), &v[0], &v[1]);
        lvm_box_muller(lvm_u01_f32(w.w2), lvm_u01_f32(w.w3), &v[2], &v[3]);
    }
    static __device__ __forceinline__ unsigned int word(const lvm_words& w, int s) {
        return s == 0 ? w.w0 : (s == 1 ? w.w1 : (s == 2 ? w.w2 : w.w3));
    }
    static __device__ __forceinline__ float uniform_at(const lvm_key& key, unsigned long long g) {
        return lvm_u01_f32(word(lvm_philox_block(key, g >> 2), (int)(g & 3)));
    }
    static __device__ __forceinline__ float gumbel_at(const lvm_key& key, unsigned long long g) {
        return lvm_gumbel_of(uniform_at(key, g));
    }
    static __device__ __forceinline__ float normal_at(const lvm_key& key, unsigned long long g) {
        const lvm_words w = lvm_philox_block(key, g >> 2);
        const int s = (int)(g & 3);
        float z0, z1;
        if (s < 2) {
            lvm_box_muller(lvm_u01_f32(w.w0), lvm_u01_f32(w.w1), &z0, &z1);
        } else {
            lvm_box_muller(lvm_u01_f32(w.w2), lvm_u01_f32(w.w3), &z0, &z1);
        }
        return (s & 1) ? z1 : z0;
    }
};

template <> struct lvm_philox<double> {
    static const int per = 2;

    static __device__ __forceinline__ void uniforms(const lvm_words& w, double* v) {
        v[0] = lvm_u01_f64(w.w0, w.w1);
        v[1] = lvm_u01_f64(w.w2, w.w3);
    }
    static __device__ __forceinline__ void gumbels(const lvm_words& w, double* v) {
        v[0] = lvm_gumbel_of(lvm_u01_f64(w.w0, w.w1));
        v[1] = lvm_gumbel_of(lvm_u01_f64(w.w2, w.w3));
    }
    static __device__ __forceinline__ void normals(const lvm_words& w, double* v) {
        lvm_box_muller(lvm_u01_f64(w.w0, w.w1), lvm_u01_f64(w.w2, w.w3), &v[0], &v[1]);
    }
    static __device__ __forceinline__ double uniform_at(const lvm_key& key, unsigned long long g) {
        const lvm_words w = lvm_philox_block(key, g >> 1);
        return (g & 1) ? lvm_u01_f64(w.w2, w.w3) : lvm_u01_f64(w.w0, w.w1);
    }
    static __device__ __forceinline__ double gumbel_at(const lvm_key& key, unsigned long long g) {
        return lvm_gumbel_of(uniform_at(key, g));
    }
    static __device__ __forceinline__ double normal_at(const lvm_key& key, unsigned long long g) {
        const lvm_words w = lvm_philox_block(key, g >> 1);
        double z0, z1;
        lvm_box_muller(lvm_u01_f64(w.w0, w.w1), lvm_u01_f64(w.w2, w.w3), &z0, &z1);
        return (g & 1) ? z1 : z0;
    }
};

#endif  // LVM_PHILOX_CUH
