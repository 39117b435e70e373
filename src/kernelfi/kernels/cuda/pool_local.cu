// kernelfi's CUDA C rendering of kernels/pool_local.py: AlexeyAB Darknet's
// forward_local_avgpool (average over size x size windows, divided by the valid taps, by
// PyTorch's count_include_pad window, or by its divisor_override) and upsample (nearest, integer stride, forward).
// Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

// ceil_h/ceil_w: rows/columns past the far edge that PyTorch's ceil_mode adds to the output
// extents (0 in AlexeyAB's kernel; entry forward_local_avgpool_ceil takes them). The
// count_include_pad divisor still clips to the padded input (in + pad/2), as PyTorch's does.
static __device__ __forceinline__ void local_avgpool_thread(int n, int in_h, int in_w, int in_c, int stride,
                                                            int size, int pad, int ceil_h, int ceil_w,
                                                            int count_include_pad, int divisor, const float *input,
                                                            float *output)
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
    float avg = 0;
    int counter = 0;
    for (int l = 0; l < size; ++l) {
        for (int m = 0; m < size; ++m) {
            int cur_h = h_offset + i * stride + l;
            int cur_w = w_offset + j * stride + m;
            int index = cur_w + in_w * (cur_h + in_h * (k + b * in_c));
            int valid = (cur_h >= 0 && cur_h < in_h && cur_w >= 0 && cur_w < in_w);
            if (valid) {
                counter++;
                avg += input[index];
            }
        }
    }
    if (count_include_pad) {   // PyTorch's avg_pool2d divisor: the window clipped to the padded input
        int side = pad / 2;
        int hs = h_offset + i * stride, ws = w_offset + j * stride;
        int he = hs + size < in_h + side ? hs + size : in_h + side;
        int we = ws + size < in_w + side ? ws + size : in_w + side;
        counter = (he - hs) * (we - ws);
    }
    if (divisor) counter = divisor;   // PyTorch's divisor_override (entry forward_local_avgpool_divisor)
    output[out_index] = avg / counter;
}

extern "C" __global__ void forward_local_avgpool(int n, int in_h, int in_w, int in_c, int stride, int size,
                                                 int pad, int count_include_pad, const float *input, float *output)
{
    local_avgpool_thread(n, in_h, in_w, in_c, stride, size, pad, 0, 0, count_include_pad, 0, input, output);
}

extern "C" __global__ void forward_local_avgpool_ceil(int n, int in_h, int in_w, int in_c, int stride, int size,
                                                      int pad, int ceil_h, int ceil_w, int count_include_pad,
                                                      const float *input, float *output)
{
    local_avgpool_thread(n, in_h, in_w, in_c, stride, size, pad, ceil_h, ceil_w, count_include_pad, 0, input, output);
}

// AvgPool2d(divisor_override=k): PyTorch's avg_pool2d divides the sum by k (ceil_h/ceil_w 0 unless ceil_mode
// needs them); launched only where divisor_override is given
extern "C" __global__ void forward_local_avgpool_divisor(int n, int in_h, int in_w, int in_c, int stride, int size,
                                                         int pad, int ceil_h, int ceil_w, int divisor,
                                                         const float *input, float *output)
{
    local_avgpool_thread(n, in_h, in_w, in_c, stride, size, pad, ceil_h, ceil_w, 0, divisor, input, output);
}

extern "C" __global__ void upsample(int N, const float *x, int w, int h, int c, int batch, int stride,
                                    float scale, float *out)
{
    int i = THREAD_ID;
    if (i >= N) return;
    int out_index = i;
    int out_w = i % (w * stride);
    i = i / (w * stride);
    int out_h = i % (h * stride);
    i = i / (h * stride);
    int out_c = i % c;
    i = i / c;
    int b = i % batch;
    int in_w = out_w / stride;
    int in_h = out_h / stride;
    int in_c = out_c;
    int in_index = b * w * h * c + in_c * w * h + in_h * w + in_w;
    out[out_index] += scale * x[in_index];
}

// PyTorch's adaptive_average_pool, one thread per output element (PyTorch strides a block's
// threads over a plane's outputs: the same work per output)
#define START_IND(a, b, c) (int)floorf((float)((a) * (c)) / (b))
#define END_IND(a, b, c) (int)ceilf((float)(((a) + 1) * (c)) / (b))

extern "C" __global__ void adaptive_avgpool(int n, const float *input, float *output, int isizeH, int isizeW,
                                            int osizeH, int osizeW)
{
    int id = THREAD_ID;
    if (id >= n) return;
    int ow = id % osizeW;
    int q = id / osizeW;
    int oh = q % osizeH;
    int plane = q / osizeH;
    int istartH = START_IND(oh, osizeH, isizeH), iendH = END_IND(oh, osizeH, isizeH);
    int istartW = START_IND(ow, osizeW, isizeW), iendW = END_IND(ow, osizeW, isizeW);
    int kH = iendH - istartH, kW = iendW - istartW;
    const float *ptr = input + plane * isizeH * isizeW + istartH * isizeW + istartW;
    float sum = 0;
    for (int ih = 0; ih < kH; ++ih)
        for (int iw = 0; iw < kW; ++iw)
            sum += ptr[ih * isizeW + iw];
    output[id] = sum / kH / kW;
}

// PyTorch's adaptivemaxpool, one thread per output element: the adaptive_avgpool windows, max
// from -inf, a tap taken when val > max or val is NaN; the argmax within the plane to indices
// (int64 in PyTorch, int32 here).
extern "C" __global__ void adaptive_maxpool(int n, const float *input, float *output, int *indices, int isizeH,
                                            int isizeW, int osizeH, int osizeW)
{
    int id = THREAD_ID;
    if (id >= n) return;
    int ow = id % osizeW;
    int q = id / osizeW;
    int oh = q % osizeH;
    int plane = q / osizeH;
    int istartH = START_IND(oh, osizeH, isizeH), iendH = END_IND(oh, osizeH, isizeH);
    int istartW = START_IND(ow, osizeW, isizeW), iendW = END_IND(ow, osizeW, isizeW);
    int kH = iendH - istartH, kW = iendW - istartW;
    const float *ptr = input + plane * isizeH * isizeW + istartH * isizeW + istartW;
    int argmax = istartH * isizeW + istartW;
    float mx = -INFINITY;
    for (int ih = 0; ih < kH; ++ih)
        for (int iw = 0; iw < kW; ++iw) {
            float val = ptr[ih * isizeW + iw];
            if ((val > mx) || isnan(val)) {
                mx = val;
                argmax = (ih + istartH) * isizeW + iw + istartW;
            }
        }
    output[id] = mx;
    indices[id] = argmax;
}
