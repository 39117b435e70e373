// kernelfi's CUDA C rendering of kernels/pointwise.py: the per-element work of PyTorch's element
// kernel with a CPU scalar (add/sub/rsub/mul, and div as a multiply by the host's 1.0f/c), its
// clamp kernel (NaN propagates) and constant_pad_nd as one thread per output element.
// Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

enum scalar_ops { S_ADD = 0, S_SUB = 1, S_RSUB = 2, S_MUL = 3 };

// out[i] = x[i] op s; s is c, or 1.0f / c for div (the host computes it, op = S_MUL)
extern "C" __global__ void scalar_op(int n, int op, float s, const float *x, float *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    float v = x[i];
    float r;
    switch (op) {
    case S_ADD: r = fmaf(1.f, s, v); break;
    case S_SUB: r = fmaf(-1.f, s, v); break;
    case S_RSUB: r = fmaf(-1.f, v, s); break;
    default: r = v * s; break;
    }
    out[i] = r;
}

// clamp_scalar_kernel_impl: isnan(v) ? v : min(max(v, lo), hi)
extern "C" __global__ void clamp(int n, float lo, float hi, const float *x, float *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    float v = x[i];
    out[i] = isnan(v) ? v : fminf(fmaxf(v, lo), hi);
}

// out[c, y, x] = in[c, y - top, x - left] inside the input, else value
extern "C" __global__ void constant_pad(int n, int h, int w, int top, int left, int out_h, int out_w, float value,
                                        const float *in, float *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    int x = i % out_w;
    int q = i / out_w;
    int y = q % out_h;
    int c = q / out_h;
    int iy = y - top, ix = x - left;
    float v = value;
    if (iy >= 0 && iy < h && ix >= 0 && ix < w) v = in[(c * h + iy) * w + ix];
    out[i] = v;
}
