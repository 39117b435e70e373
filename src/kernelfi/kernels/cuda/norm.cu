// kernelfi's CUDA C rendering of kernels/norm.py: PyTorch's GroupNorm forward as two launches.
// group_norm_moments: one block per (n, group) row, Welford over elements j, j+T, ..., then a
// shuffle-down Welford combine (offsets 16..1) and, for T = 512, BlockReduce's second stage;
// thread 0 stores mean and rstd. group_norm_apply:
// one thread per element, (x - mean)*rstd or fma(a, x, fma(-a, mean, beta)), a = rstd*gamma.
// Compiled to count registers (scripts/ptxas_registers.py); tests/test_cuda_renderings.py runs
// group_norm_apply on the host against run. Its host shim runs a block's threads one after
// another, which a warp shuffle cannot be, so there the moments kernel is left out
// (KERNELFI_HOST_SHIM); kernels.norm.row_moments is its reference.

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

#ifndef KERNELFI_HOST_SHIM
struct welford { float mean, m2, nf; };

__device__ welford welford_combine(welford a, welford b)
{
    if (a.nf == 0) return b;
    if (b.nf == 0) return a;
    float delta = b.mean - a.mean;
    float count = a.nf + b.nf;
    float nb = b.nf / count;
    welford r;
    r.mean = fmaf(delta, nb, a.mean);  // nvcc's contractions, spelt out
    r.m2 = fmaf(delta * delta * a.nf, nb, a.m2 + b.m2);
    r.nf = count;
    return r;
}

// cuda_utils::WarpReduce: shuffle-down combines at offsets 16, 8, 4, 2, 1
__device__ welford warp_reduce(welford v)
{
    for (int o = 16; o > 0; o >>= 1) {
        welford b;
        b.mean = __shfl_down_sync(0xffffffffu, v.mean, o);
        b.m2 = __shfl_down_sync(0xffffffffu, v.m2, o);
        b.nf = __shfl_down_sync(0xffffffffu, v.nf, o);
        v = welford_combine(v, b);
    }
    return v;
}

// blockDim.x threads per row: 32 below 512 elements, else 512 with BlockReduce's second stage
extern "C" __global__ void group_norm_moments(int row, float eps, const float *x, float *stats)
{
    __shared__ welford shared[32];
    int j = threadIdx.x;
    const float *base = x + (long)blockIdx.x * row;
    welford v = {0.f, 0.f, 0.f};
    int n = 0;
    for (int i = j; i < row; i += blockDim.x) {
        float d = base[i];
        ++n;
        float nf = (float)n;
        float delta = d - v.mean;
        v.mean = v.mean + delta / nf;
        v.m2 = fmaf(delta, d - v.mean, v.m2);
        v.nf = nf;
    }
    v = warp_reduce(v);
    if (blockDim.x > 32) {
        __syncthreads();
        if (j % 32 == 0) shared[j / 32] = v;
        __syncthreads();
        welford id = {0.f, 0.f, 0.f};
        v = (j < (int)blockDim.x / 32) ? shared[j % 32] : id;
        if (j / 32 == 0) v = warp_reduce(v);
    }
    if (j == 0) {
        float var = v.m2 / v.nf;
        stats[2 * blockIdx.x] = v.mean;
        stats[2 * blockIdx.x + 1] = rsqrtf(fmaxf(var, 0.f) + eps);
    }
}
#endif

extern "C" __global__ void group_norm_apply(int n, int spatial, int per_group, int affine, const float *x,
                                            const float *stats, const float *gamma, const float *beta, float *y)
{
    int i = THREAD_ID;
    if (i >= n) return;
    int c = i / spatial;
    int g = c / per_group;
    float v = x[i], mean = stats[2 * g], rstd = stats[2 * g + 1];
    if (affine) {
        float a = rstd * gamma[c];
        float b = fmaf(-a, mean, beta[c]);  // the FFMAs nvcc contracts -a*mean + beta and a*v + b into
        y[i] = fmaf(a, v, b);
    } else {
        y[i] = (v - mean) * rstd;
    }
}
