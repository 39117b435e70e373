// kernelfi's CUDA C rendering of kernels/pool_dilated.py: PyTorch's max_pool_forward_nchw (a
// dilated MaxPool2d), one thread per output element, the argmax within the plane to indices
// (int64 in PyTorch, int32 here). Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

extern "C" __global__ void max_pool_nchw(int n, const float *bottom_data, int channels, int height, int width,
                                         int pooled_height, int pooled_width, int k, int stride, int pad,
                                         int dilation, float *top_data, int *top_mask)
{
    int index = THREAD_ID;
    if (index >= n) return;
    int pw = index % pooled_width;
    int ph = (index / pooled_width) % pooled_height;
    int c = (index / pooled_width / pooled_height) % channels;
    int b = index / pooled_width / pooled_height / channels;
    int hstart = ph * stride - pad;
    int wstart = pw * stride - pad;
    int hend = hstart + (k - 1) * dilation + 1 < height ? hstart + (k - 1) * dilation + 1 : height;
    int wend = wstart + (k - 1) * dilation + 1 < width ? wstart + (k - 1) * dilation + 1 : width;
    while (hstart < 0) hstart += dilation;
    while (wstart < 0) wstart += dilation;
    float maxval = -INFINITY;
    int maxidx = hstart * width + wstart;
    const float *plane = bottom_data + (b * channels + c) * height * width;
    for (int h = hstart; h < hend; h += dilation)
        for (int w = wstart; w < wend; w += dilation) {
            float val = plane[h * width + w];
            if ((val > maxval) || isnan(val)) {
                maxidx = h * width + w;
                maxval = val;
            }
        }
    top_data[index] = maxval;
    top_mask[index] = maxidx;
}
