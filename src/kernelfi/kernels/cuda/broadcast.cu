// kernelfi's CUDA C rendering of kernels/broadcast.py: AlexeyAB Darknet's scale_channels (the
// squeeze-and-excitation multiply) and the per-element work of PyTorch's broadcasting binary
// kernel for add/sub/mul, and PyTorch's prelu (the same kernel, x > 0 ? x : w*x, the slope the
// broadcast operand). Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

// out[i] = in[i] * scales[i / channel_size] (scale_wh = 0)
extern "C" __global__ void scale_channels(const float *in_w_h_c, int size, int channel_size,
                                          const float *scales_c, float *out)
{
    int i = THREAD_ID;
    if (i >= size) return;
    out[i] = in_w_h_c[i] * scales_c[i / channel_size];
}

enum binary { ADD = 0, SUB = 1, MUL = 2 };

// the OffsetCalculator's split of output element i into (c, y, x)
__device__ void split_index(int i, int out_h, int out_w, int *c, int *y, int *x)
{
    *x = i % out_w;
    int q = i / out_w;
    *y = q % out_h;
    *c = q / out_h;
}

// out[i] = a[off_a] op b[off_b]; strides are 0 along a broadcast dimension
extern "C" __global__ void binary_op(int n, int op, int out_h, int out_w, const float *a, int ac, int ay, int ax,
                                     const float *b, int bc, int by, int bx, float *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    int c, y, x;
    split_index(i, out_h, out_w, &c, &y, &x);
    float va = a[c * ac + y * ay + x * ax];
    float vb = b[c * bc + y * by + x * bx];
    float r;
    switch (op) {
    case ADD: r = va + vb; break;
    case SUB: r = fmaf(-1.f, vb, va); break;
    default: r = va * vb; break;
    }
    out[i] = r;
}

// out[i] = x > 0 ? x : w*x, w the slope of x's channel (its strides 0 but along c when per channel)
extern "C" __global__ void prelu(int n, int out_h, int out_w, const float *x, int xc, int xy, int xx,
                                 const float *w, int wc, int wy, int wx, float *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    int c, iy, ix;
    split_index(i, out_h, out_w, &c, &iy, &ix);
    float v = x[c * xc + iy * xy + ix * xx];
    float s = w[c * wc + iy * wy + ix * wx];
    out[i] = (v > 0) ? v : s * v;
}
