// kernelfi's CUDA C rendering of kernels/pool.py: forward_maxpool and forward_avgpool.
// Compiled only to count registers (scripts/ptxas_registers.py).

#include <math_constants.h>

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

// One thread per output element: the max of a size x size window whose origin is -pad/2
// (C division), out-of-bounds taps read -inf, the max replaced only when val > max (NaN
// never wins), the argmax stored as the flat input index (-1 when nothing beat -inf).
// ceil_h/ceil_w: rows/columns past the far (bottom/right) edge that PyTorch's ceil_mode adds
// to the output extents (0 in Darknet's kernel; entry forward_maxpool_ceil takes them).
static __device__ __forceinline__ void maxpool_thread(int n, int in_h, int in_w, int in_c, int stride, int size,
                                                      int pad, int ceil_h, int ceil_w, const float *input,
                                                      float *output, int *indexes)
{
    int h = (in_h + pad + ceil_h - size) / stride + 1;
    int w = (in_w + pad + ceil_w - size) / stride + 1;
    int c = in_c;
    int id = THREAD_ID;
    if (id >= n) return;
    int j = id % w;
    id /= w;
    int i = id % h;
    id /= h;
    int k = id % c;
    id /= c;
    int b = id;
    int w_offset = -pad / 2;
    int h_offset = -pad / 2;
    int out_index = j + w * (i + h * (k + c * b));
    float max = -CUDART_INF_F;
    int max_i = -1;
    for (int l = 0; l < size; ++l) {
        for (int m = 0; m < size; ++m) {
            int cur_h = h_offset + i * stride + l;
            int cur_w = w_offset + j * stride + m;
            int index = cur_w + in_w * (cur_h + in_h * (k + b * in_c));
            int valid = (cur_h >= 0 && cur_h < in_h && cur_w >= 0 && cur_w < in_w);
            float val = valid ? input[index] : -CUDART_INF_F;
            max_i = (val > max) ? index : max_i;
            max = (val > max) ? val : max;
        }
    }
    output[out_index] = max;
    indexes[out_index] = max_i;
}

extern "C" __global__ void forward_maxpool(int n, int in_h, int in_w, int in_c, int stride, int size,
                                           int pad, const float *input, float *output, int *indexes)
{
    maxpool_thread(n, in_h, in_w, in_c, stride, size, pad, 0, 0, input, output, indexes);
}

extern "C" __global__ void forward_maxpool_ceil(int n, int in_h, int in_w, int in_c, int stride, int size,
                                                int pad, int ceil_h, int ceil_w, const float *input,
                                                float *output, int *indexes)
{
    maxpool_thread(n, in_h, in_w, in_c, stride, size, pad, ceil_h, ceil_w, input, output, indexes);
}

// Global average pooling, one thread per channel: the plane summed left to right into the
// output element, then divided by (float)(w*h).
extern "C" __global__ void forward_avgpool(int n, int w, int h, int c, const float *input, float *output)
{
    int id = THREAD_ID;
    if (id >= n) return;
    int k = id % c;
    id /= c;
    int b = id;
    int out_index = k + c * b;
    output[out_index] = 0;
    for (int i = 0; i < w * h; ++i) {
        int in_index = i + h * w * (k + b * c);
        output[out_index] += input[in_index];
    }
    output[out_index] /= w * h;
}
