// kernelfi's CUDA C rendering of kernels/interp.py: PyTorch's upsample_bilinear2d_out_frame
// (UpSampleBilinear2d.cu), bilinear upsampling, one thread per output pixel looping over the
// planes. The contractions nvcc makes of PyTorch's expressions (-fmad=true: the source index's
// scale*(dst + 0.5) - 0.5, each row's w0*x0 + w1*x1, the output's h0*top + h1*bottom) are
// written as fmaf so that a host build (tests/test_cuda_renderings.py) rounds as the GPU does.
// Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

// area_pixel_compute_source_index (linear, not cubic)
static __device__ __forceinline__ float bilinear_source(float scale, int dst, int align_corners)
{
    if (align_corners) return scale * dst;
    float src = fmaf((float)dst + 0.5f, scale, -0.5f);
    return src < 0.f ? 0.f : src;
}

extern "C" __global__ void upsample_bilinear(int n, float rheight, float rwidth, int align_corners,
                                             const float *idata, float *odata, int channels, int height1,
                                             int width1, int height2, int width2)
{
    int index = THREAD_ID;
    if (index >= n) return;
    int w2 = index % width2;
    int h2 = index / width2;
    float h1r = bilinear_source(rheight, h2, align_corners);
    int h1 = (int)h1r;
    int h1p = (h1 < height1 - 1) ? 1 : 0;
    float h1lambda = h1r - h1;
    float h0lambda = 1.f - h1lambda;
    float w1r = bilinear_source(rwidth, w2, align_corners);
    int w1 = (int)w1r;
    int w1p = (w1 < width1 - 1) ? 1 : 0;
    float w1lambda = w1r - w1;
    float w0lambda = 1.f - w1lambda;
    for (int c = 0; c < channels; ++c) {
        const float *x = idata + c * height1 * width1;
        float top = fmaf(w0lambda, x[h1 * width1 + w1], w1lambda * x[h1 * width1 + w1 + w1p]);
        float bottom = fmaf(w0lambda, x[(h1 + h1p) * width1 + w1], w1lambda * x[(h1 + h1p) * width1 + w1 + w1p]);
        odata[(c * height2 + h2) * width2 + w2] = fmaf(h0lambda, top, h1lambda * bottom);
    }
}
