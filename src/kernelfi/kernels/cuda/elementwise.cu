// kernelfi's CUDA C rendering of the one-element-per-thread kernels of kernels/elementwise.py:
// fill, copy, add_bias, scale_bias, normalize, shortcut (docs/kernels.md §5 gives their
// semantics). Compiled only to learn the registers ptxas allocates on sm_50
// (scripts/ptxas_registers.py); the Python kernels are what kernelfi runs.

// Darknet's 1-D launch: cuda_gridsize() folds large grids into y.
#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

extern "C" __global__ void fill(int n, float value, float *x, int incx)
{
    int i = THREAD_ID;
    if (i >= n) return;
    x[i * incx] = value;
}

// route and shortcut layers: y[i*incy + offy] = x[i*incx + offx]
extern "C" __global__ void copy(int n, const float *x, int offx, int incx, float *y, int offy, int incy)
{
    int i = THREAD_ID;
    if (i >= n) return;
    y[i * incy + offy] = x[i * incx + offx];
}

// grid (spatial blocks, channels, batch): the channel is blockIdx.y, no division needed
extern "C" __global__ void add_bias(float *output, const float *biases, int channels, int spatial)
{
    int offset = blockIdx.x * blockDim.x + threadIdx.x;
    int channel = blockIdx.y;
    int lane = blockIdx.z;
    if (offset >= spatial) return;
    output[(lane * channels + channel) * spatial + offset] += biases[channel];
}

extern "C" __global__ void scale_bias(float *output, const float *scales, int channels, int spatial)
{
    int offset = blockIdx.x * blockDim.x + threadIdx.x;
    int channel = blockIdx.y;
    int lane = blockIdx.z;
    if (offset >= spatial) return;
    output[(lane * channels + channel) * spatial + offset] *= scales[channel];
}

// batch norm with the rolling statistics: x = (x - mean[f]) / sqrtf(var[f] + eps)
extern "C" __global__ void normalize(int n, float *x, const float *mean, const float *variance,
                                     int channels, int spatial, float eps)
{
    int i = THREAD_ID;
    if (i >= n) return;
    int f = (i / spatial) % channels;
    x[i] = (x[i] - mean[f]) / sqrtf(variance[f] + eps);
}

// out += add over the smaller extent of the two shapes: the added map (w1, h1, c1) is read
// every `stride`-th pixel, the output (w2, h2, c2) written every `sample`-th; s1 = s2 = 1
extern "C" __global__ void shortcut(int size, int minw, int minh, int minc, int stride, int sample,
                                    int batch, int w1, int h1, int c1, const float *add,
                                    int w2, int h2, int c2, float s1, float s2, float *out)
{
    int id = THREAD_ID;
    if (id >= size) return;
    int i = id % minw;
    id /= minw;
    int j = id % minh;
    id /= minh;
    int k = id % minc;
    id /= minc;
    int b = id % batch;
    int o = i * sample + w2 * (j * sample + h2 * (k + c2 * b));
    int a = i * stride + w1 * (j * stride + h1 * (k + c1 * b));
    out[o] = s1 * out[o] + s2 * add[a];
}
