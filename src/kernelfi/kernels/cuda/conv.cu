// kernelfi's CUDA C rendering of kernels/conv.py's im2col (gemm is not rendered here: its
// template is modelled on cuBLAS' SGEMM, docs/kernels.md §6). One thread per (channel, output
// row, output column) writes the ksize_h x ksize_w column entries of its window, 0 in the padding
// (Darknet's square ksize/pad/stride are ksize_h = ksize_w etc.).
// The host offsets `im` to the group's first channel. Compiled only to count registers
// (scripts/ptxas_registers.py).

extern "C" __global__ void im2col(int n, const float *im, int height, int width, int ksize_h, int ksize_w,
                                  int pad_h, int pad_w, int stride_h, int stride_w, int height_col, int width_col,
                                  float *col)
{
    int index = blockIdx.x * blockDim.x + threadIdx.x;
    for (; index < n; index += blockDim.x * gridDim.x) {
        int w_out = index % width_col;
        int h_index = index / width_col;
        int h_out = h_index % height_col;
        int channel_in = h_index / height_col;
        int channel_out = channel_in * ksize_h * ksize_w;
        int h_in = h_out * stride_h - pad_h;
        int w_in = w_out * stride_w - pad_w;
        float *col_ptr = col + (channel_out * height_col + h_out) * width_col + w_out;
        const float *im_ptr = im + (channel_in * height + h_in) * width + w_in;
        for (int i = 0; i < ksize_h; ++i) {
            for (int j = 0; j < ksize_w; ++j) {
                int h = h_in + i;
                int w = w_in + j;
                *col_ptr = (h >= 0 && w >= 0 && h < height && w < width) ? im_ptr[i * width + j] : 0;
                col_ptr += height_col * width_col;
            }
        }
    }
}
