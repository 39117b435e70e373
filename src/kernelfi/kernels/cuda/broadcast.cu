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

// the OffsetCalculator's split of output element i into (c, y, x) and the two operands' loads at
// their strides (0 along a broadcast dimension)
__device__ void load_pair(int i, int out_h, int out_w, const float *a, int ac, int ay, int ax,
                          const float *b, int bc, int by, int bx, float *va, float *vb)
{
    int x = i % out_w;
    int q = i / out_w;
    int y = q % out_h;
    int c = q / out_h;
    *va = a[c * ac + y * ay + x * ax];
    *vb = b[c * bc + y * by + x * bx];
}

// out[i] = a[off_a] op b[off_b]; strides are 0 along a broadcast dimension
extern "C" __global__ void binary_op(int n, int op, int out_h, int out_w, const float *a, int ac, int ay, int ax,
                                     const float *b, int bc, int by, int bx, float *out)
{
    int i = THREAD_ID;
    if (i >= n) return;
    float va, vb;
    load_pair(i, out_h, out_w, a, ac, ay, ax, b, bc, by, bx, &va, &vb);
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
    float v, s;
    load_pair(i, out_h, out_w, x, xc, xy, xx, w, wc, wy, wx, &v, &s);
    out[i] = (v > 0) ? v : s * v;
}
