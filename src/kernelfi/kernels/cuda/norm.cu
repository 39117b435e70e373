// kernelfi's CUDA C rendering of kernels/norm.py: PyTorch's GroupNorm forward as two launches.
// group_norm_moments: one warp per (n, group) row, Welford over elements j, j+32, ..., then a
// shuffle-down Welford combine (offsets 16..1); lane 0 stores mean and rstd. group_norm_apply:
// one thread per element, (x - mean)*rstd or fma(a, x, fma(-a, mean, beta)), a = rstd*gamma.
// Compiled only to count registers (scripts/ptxas_registers.py) and run against run in
// tests/test_cuda_renderings.py where a GPU is present.

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

struct welford { float mean, m2, nf; };

__device__ welford welford_combine(welford a, welford b)
{
    if (a.nf == 0) return b;
    if (b.nf == 0) return a;
    float delta = b.mean - a.mean;
    float count = a.nf + b.nf;
    float nb = b.nf / count;
    welford r;
    r.mean = a.mean + delta * nb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.nf * nb;
    r.nf = count;
    return r;
}

extern "C" __global__ void group_norm_moments(int row, float eps, const float *x, float *stats)
{
    int j = threadIdx.x;
    const float *base = x + (long)blockIdx.x * row;
    welford v = {0.f, 0.f, 0.f};
    int n = 0;
    for (int i = j; i < row; i += 32) {
        float d = base[i];
        ++n;
        float nf = (float)n;
        float delta = d - v.mean;
        v.mean = v.mean + delta / nf;
        v.m2 = v.m2 + delta * (d - v.mean);
        v.nf = nf;
    }
    for (int o = 16; o > 0; o >>= 1) {
        welford b;
        b.mean = __shfl_down_sync(0xffffffffu, v.mean, o);
        b.m2 = __shfl_down_sync(0xffffffffu, v.m2, o);
        b.nf = __shfl_down_sync(0xffffffffu, v.nf, o);
        v = welford_combine(v, b);
    }
    if (j == 0) {
        float var = v.m2 / v.nf;
        stats[2 * blockIdx.x] = v.mean;
        stats[2 * blockIdx.x + 1] = rsqrtf(fmaxf(var, 0.f) + eps);
    }
}

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
        float b = -a * mean + beta[c];
        y[i] = a * v + b;
    } else {
        y[i] = (v - mean) * rstd;
    }
}
