// kernelfi's CUDA C rendering of kernels/deconv.py's col2im: the scatter step of a transposed
// convolution (Darknet's deconvolutional layer, PyTorch's slow_conv_transpose2d), after the
// GEMM columns = W^T * X. One thread per image element (c, h, w) gathers every column entry
// whose window covers it, rows of the column map outer and columns inner, ascending, summed
// in float32 from 0, and stores the sum (PyTorch's/Caffe's store; Darknet's kernel adds it to
// an output it zero-filled: the same value). One element per thread, so the grid-stride loop
// of the originals is an early exit here, as kernels/_sass.py's prologue_1d models it.
// Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

extern "C" __global__ void col2im(int n, const float *data_col, int height, int width, int ksize, int pad,
                                  int stride, int height_col, int width_col, float *data_im)
{
    int index = THREAD_ID;
    if (index >= n) return;
    int w_pad = index % width + pad;                 // padded coordinates of this element
    int h_pad = (index / width) % height + pad;
    int c = index / width / height;
    // the windows (h_col, w_col) covering it: kh = h_pad - h_col*stride in [0, ksize)
    int w_first = w_pad < ksize ? 0 : (w_pad - ksize) / stride + 1;
    int h_first = h_pad < ksize ? 0 : (h_pad - ksize) / stride + 1;
    int w_last = w_pad / stride + 1, h_last = h_pad / stride + 1;
    w_last = w_last < width_col ? w_last : width_col;    // min (IMNMX), spelled out for host C++
    h_last = h_last < height_col ? h_last : height_col;
    // entry (c, kh, kw, h_col, w_col) sits at ((c*k + kh)*k + kw)*hc*wc + h_col*wc + w_col;
    // with kh, kw substituted it is base + h_col*step_h + w_col*step_w
    int cells = height_col * width_col;
    int base = (c * ksize * ksize + h_pad * ksize + w_pad) * cells;
    int step_h = (1 - stride * ksize * height_col) * width_col;
    int step_w = 1 - stride * cells;
    float val = 0;
    for (int h_col = h_first; h_col < h_last; ++h_col)
        for (int w_col = w_first; w_col < w_last; ++w_col)
            val += data_col[base + h_col * step_h + w_col * step_w];
    data_im[index] = val;
}
