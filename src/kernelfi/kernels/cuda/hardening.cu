// kernelfi's CUDA C rendering of the selective-hardening kernels of kernels/hardening.py
// (docs/hardening.md): tmr_vote, dmr_compare, range_clamp and the four ABFT kernels of one
// gemm. Compiled only to count registers (scripts/ptxas_registers.py).
//
// The ABFT kernels read the gemm's operands through strides (A[m][k] = a[m*a_m + k*a_k], so
// one kernel covers trans_a/trans_b) and, when `virtual_b` is set, B from the image as
// im2col would write it (tap k = (channel, kh, kw), column n = (out row, out col), 0 in the
// padding): one compiled kernel per role, the virtual read a runtime branch.

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

// bitwise majority of three replicas (int32 views of float32 or int32 buffers)
extern "C" __global__ void tmr_vote(int n, const unsigned *a, const unsigned *b, const unsigned *c, unsigned *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    unsigned x = a[i], y = b[i], z = c[i];
    out[i] = (x & y) | (x & z) | (y & z);
}

// replica a where a and b agree bit for bit, else the re-execution c (read only then)
extern "C" __global__ void dmr_compare(int n, const unsigned *a, const unsigned *b, const unsigned *c, unsigned *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    unsigned x = a[i];
    out[i] = (x == b[i]) ? x : c[i];
}

// Ranger's restriction in place; fmaxf turns NaN into lo
extern "C" __global__ void range_clamp(int n, float *x, float lo, float hi)
{
    int i = THREAD_ID;
    if (i >= n) return;
    x[i] = fminf(fmaxf(x[i], lo), hi);
}

struct image {          // the im2col geometry of a virtual B
    int height, width, ksize, pad, stride, out_w;
};

__device__ float b_element(const float *b, int b_k, int b_n, int virtual_b, struct image g, int k, int n)
{
    if (!virtual_b) return b[k * b_k + n * b_n];
    int kk = g.ksize * g.ksize;
    int channel = k / kk;
    int r = k % kk;
    int h = (n / g.out_w) * g.stride - g.pad + r / g.ksize;
    int w = (n % g.out_w) * g.stride - g.pad + r % g.ksize;
    if (h < 0 || w < 0 || h >= g.height || w >= g.width) return 0;
    return b[(channel * g.height + h) * g.width + w];
}

// one thread per k: (Be)[k], (|B|e)[k], (e^T A)[k], (e^T |A|)[k] into vec[0..4K)
extern "C" __global__ void abft_vectors(int M, int N, int K, const float *a, int a_m, int a_k,
                                        const float *b, int b_k, int b_n, int virtual_b, struct image g,
                                        float *vec)
{
    int k = THREAD_ID;
    if (k >= K) return;
    float be = 0, be_abs = 0, ea = 0, ea_abs = 0;
    for (int n = 0; n < N; ++n) {
        float x = b_element(b, b_k, b_n, virtual_b, g, k, n);
        be += x;
        be_abs += fabsf(x);
    }
    for (int m = 0; m < M; ++m) {
        float x = a[m * a_m + k * a_k];
        ea += x;
        ea_abs += fabsf(x);
    }
    vec[k] = be;
    vec[K + k] = be_abs;
    vec[2 * K + k] = ea;
    vec[3 * K + k] = ea_abs;
}

// one thread per row t < M (A's row against Be) or column t - M (e^T A against B's column):
// the expected sum of C there and its tolerance gamma * sum |.|*|.|, into sums[t], sums[M+N+t]
extern "C" __global__ void abft_checksum(int M, int N, int K, const float *a, int a_m, int a_k,
                                         const float *b, int b_k, int b_n, int virtual_b, struct image g,
                                         const float *vec, float row_gamma, float col_gamma, float *sums)
{
    int t = THREAD_ID;
    if (t >= M + N) return;
    int row = t < M;
    const float *v = row ? vec : vec + 2 * K;
    const float *v_abs = row ? vec + K : vec + 3 * K;
    float expect = 0, tol = 0;
    for (int k = 0; k < K; ++k) {
        float x = row ? a[t * a_m + k * a_k] : b_element(b, b_k, b_n, virtual_b, g, k, t - M);
        expect += x * v[k];
        tol += fabsf(x) * v_abs[k];
    }
    sums[t] = expect;
    sums[M + N + t] = (row ? row_gamma : col_gamma) * tol;
}

// one thread per row or column of C (at c_offset): flag 1 where |actual - expected| > tolerance
// (NaN included)
extern "C" __global__ void abft_check(int M, int N, const float *c, const float *sums, int *flags)
{
    int t = THREAD_ID;
    if (t >= M + N) return;
    int row = t < M;
    int count = row ? N : M;
    int step = row ? 1 : N;
    const float *p = row ? c + t * N : c + (t - M);
    float sum = 0;
    for (int e = 0; e < count; ++e) sum += p[e * step];
    flags[t] = !(fabsf(sum - sums[t]) <= sums[M + N + t]);
}

// one thread, run only on a mismatch: one flagged row and one flagged column locate the
// corrupted element, recomputed from zero; any other pattern recomputes the whole block
extern "C" __global__ void abft_correct(int M, int N, int K, const float *a, int a_m, int a_k,
                                        const float *b, int b_k, int b_n, int virtual_b, struct image g,
                                        const int *flags, float *c)
{
    if (THREAD_ID != 0) return;
    int rows = 0, cols = 0, r = 0, col = 0;
    for (int f = 0; f < M + N; ++f) {
        if (!flags[f]) continue;
        if (f < M) { ++rows; r = f; } else { ++cols; col = f - M; }
    }
    int single = rows == 1 && cols == 1;
    int m0 = single ? r : 0, m1 = single ? r + 1 : M;
    int n0 = single ? col : 0, n1 = single ? col + 1 : N;
    for (int m = m0; m < m1; ++m) {
        for (int n = n0; n < n1; ++n) {
            float acc = 0;
            for (int k = 0; k < K; ++k)
                acc += a[m * a_m + k * a_k] * b_element(b, b_k, b_n, virtual_b, g, k, n);
            c[m * N + n] = acc;
        }
    }
}
