// kernelfi's CUDA C rendering of kernels/layout.py: PyTorch's elementwise copy of a transposed
// (g, C/g) channel view (ShuffleNet's channel shuffle), one thread per output element computing
// its source offset from the permuted strides (the TensorIterator OffsetCalculator's divmods).
// pixel_shuffle / pixel_unshuffle: the same copy of a 5-D permuted view, four divmods.
// reflection_pad2d / replication_pad2d: PyTorch's reflect and replicate pads.
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

// out[i] = in[sum_k idx_k * stride_k]: i split over the output's dims (sizes d0..d3 innermost
// first, the quotient the fifth); sizes and input strides are kernel arguments (OffsetCalculator)
extern "C" __global__ void pixel_shuffle(int n, int d0, int d1, int d2, int d3, int s0, int s1, int s2, int s3,
                                         int s4, const float *in, float *out)
{
    int k = THREAD_ID;
    if (k >= n) return;
    int q = k;
    int off = (q % d0) * s0;
    q /= d0;
    off += (q % d1) * s1;
    q /= d1;
    off += (q % d2) * s2;
    q /= d2;
    off += (q % d3) * s3;
    q /= d3;
    out[k] = in[off + q * s4];
}

// ReplicationPadding.cu's helpers
__device__ __forceinline__ int imin(int a, int b) { return a > b ? b : a; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// get_index_mapping2d's input column (or row) of output column o: pad p before an extent n
struct reflect_index {
    __device__ __forceinline__ int operator()(int o, int p, int n) const { return abs(o - p) - abs(o - (n + p - 1)) - o + p + n - 1; }
};
// replication_pad_forward_kernel2d's
struct replicate_index {
    __device__ __forceinline__ int operator()(int o, int p, int n) const { return imin(imax(o, p), n + p - 1) - p; }
};

// one thread per output element of plane blockIdx.y (both kernels' body)
template <typename Index>
__device__ __forceinline__ void pad_plane(int h, int w, int top, int left, int out_h, int out_w, const float *in,
                                          float *out, Index index)
{
    int xy = threadIdx.x + blockIdx.x * blockDim.x;
    int plane = blockIdx.y;
    if (xy >= out_h * out_w) return;
    int ox = xy % out_w, oy = xy / out_w;
    int ix = index(ox, left, w), iy = index(oy, top, h);
    out[(plane * out_h + oy) * out_w + ox] = in[(plane * h + iy) * w + ix];
}

// reflection_pad2d_out_kernel (get_index_mapping2d, pads >= 0): one thread per output element of
// plane blockIdx.y
extern "C" __global__ void reflection_pad2d(int h, int w, int top, int left, int out_h, int out_w,
                                            const float *in, float *out)
{
    pad_plane(h, w, top, left, out_h, out_w, in, out, reflect_index());
}

// replication_pad_forward_kernel2d (pads >= 0)
extern "C" __global__ void replication_pad2d(int h, int w, int top, int left, int out_h, int out_w,
                                             const float *in, float *out)
{
    pad_plane(h, w, top, left, out_h, out_w, in, out, replicate_index());
}
