// lvm_philox_fill_v1: uniforms, normals or Gumbels of the (seed, stream) sequence into a flat
// array, elements offset .. offset + n - 1 (kernels/philox.py's *_ref fills, on the GPU).
//
// One thread per Philox block (grid-stride): the block's E values (4 float32 / 2 float64) are
// computed together (a normal pair shares its log and sincos) and written to the slots that fall
// inside [offset, offset + n). Each output element belongs to exactly one block, so there is no
// shared write.
#include "philox.cuh"

// kind: 0 uniform, 1 normal, 2 Gumbel (the codes of kernels/philox.py).
template <typename T>
__global__ void lvm_philox_fill_v1(T* out, long long n, long long offset, unsigned int k0,
                                   unsigned int k1, unsigned int s0, unsigned int s1, int kind) {
    const int per = lvm_philox<T>::per;
    const lvm_key key = lvm_key_make(k0, k1, s0, s1);
    const long long first = offset / per;
    const long long nblocks = (offset + n - 1) / per - first + 1;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < nblocks;
         i += (long long)gridDim.x * blockDim.x) {
        const long long b = first + i;
        const lvm_words w = lvm_philox_block(key, (unsigned long long)b);
        T v[4];
        if (kind == 0) {
            lvm_philox<T>::uniforms(w, v);
        } else if (kind == 1) {
            lvm_philox<T>::normals(w, v);
        } else {
            lvm_philox<T>::gumbels(w, v);
        }
#pragma unroll
        for (int s = 0; s < per; ++s) {
            const long long j = b * per + s - offset;
            if (j >= 0 && j < n) out[j] = v[s];
        }
    }
}

template __global__ void lvm_philox_fill_v1<float>(float*, long long, long long, unsigned int,
                                                   unsigned int, unsigned int, unsigned int, int);
template __global__ void lvm_philox_fill_v1<double>(double*, long long, long long, unsigned int,
                                                    unsigned int, unsigned int, unsigned int, int);
