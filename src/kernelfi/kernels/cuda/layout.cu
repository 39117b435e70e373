// kernelfi's CUDA C rendering of kernels/layout.py: PyTorch's elementwise copy of a transposed
// (g, C/g) channel view (ShuffleNet's channel shuffle), one thread per output element computing
// its source offset from the permuted strides (the TensorIterator OffsetCalculator's divmods).
// Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

// out[j*g + i, s] = in[i*(C/g) + j, s]; stride_g = (C/g)*H*W, the transposed dim's input stride (host)
extern "C" __global__ void channel_shuffle(int n, int hw, int g, int stride_g, const float *in, float *out)
{
    int k = THREAD_ID;
    if (k >= n) return;
    int s = k % hw;
    int co = k / hw;
    int i = co % g;
    int j = co / g;
    out[k] = in[s + i * stride_g + j * hw];
}
