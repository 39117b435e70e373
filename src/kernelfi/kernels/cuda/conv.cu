// kernelfi's CUDA C rendering of kernels/conv.py's im2col and of the gemm template
// (kernels/sgemm.py: cuBLAS's Maxwell SGEMM as maxas reconstructed it, docs/kernels.md §6).
// im2col: one thread per (channel, output row, output column) writes the ksize_h x ksize_w
// column entries of its window, 0 in the padding (Darknet's square ksize/pad/stride are
// ksize_h = ksize_w etc.).
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

// im2col_dilated: the same thread for dilated launches (dilation_h or dilation_w > 1), as
// PyTorch's/Caffe's im2col_kernel walks a dilated window: tap (i, j) reads the pixel at
// (h_in + i*dilation_h, w_in + j*dilation_w), i.e. im_ptr[i*dilation_h*width + j*dilation_w].
// Undilated launches keep im2col above (Darknet's kernel, its own register count).
extern "C" __global__ void im2col_dilated(int n, const float *im, int height, int width, int ksize_h, int ksize_w,
                                          int pad_h, int pad_w, int stride_h, int stride_w, int dilation_h,
                                          int dilation_w, int height_col, int width_col, float *col)
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
                int h = h_in + i * dilation_h;
                int w = w_in + j * dilation_w;
                *col_ptr = (h >= 0 && w >= 0 && h < height && w < width)
                    ? im_ptr[i * dilation_h * width + j * dilation_w] : 0;
                col_ptr += height_col * width_col;
            }
        }
    }
}

// gemm: C (M x N, row-major, Darknet's) = alpha*A(MxK)*B(KxN) + beta*C with a T x T tile per
// block of T*T/64 threads (entry gemm: T = 128, entry gemm_64: T = 64). In cuBLAS's terms x
// runs along Darknet's N and y along its M; thread tid owns columns x0+i, x0+T/2+i and rows
// y0+j, y0+T/2+j (i, j < 4). Per 8-step K block the first half of the threads loads 8 lines of
// B (x), the other half 8 lines of A (y), 256/T float4 each, into one of two shared buffers;
// per k the thread reads 8 x and 8 y operands (four float4) and issues 64 FMAs. A is read with
// lda = M (transposed as stored, the layout cuBLAS's NN kernel loads with its own indexing).
// Compiled by nvcc only: its barriers and shared buffers need real thread blocks, which the
// sequential host shim of tests/test_cuda_renderings.py does not give.
#ifdef __CUDACC__
#define SGEMM(NAME, T)                                                                          \
extern "C" __global__ void __launch_bounds__(T * T / 64) NAME(                                  \
    int M, int N, int K, float alpha, const float *__restrict__ A, int lda,                     \
    const float *__restrict__ B, int ldb, float beta, float *C, int ldc)                        \
{                                                                                               \
    enum { THREADS = T * T / 64, HALF = THREADS / 2, QUADS = T / 4, LOADS = 256 / T,            \
           STEP = 8 / LOADS };                                                                  \
    __shared__ float4 smem[2][2][8][QUADS];  /* [buffer][0 = x (B), 1 = y (A)][line][quad] */   \
    const int tid = threadIdx.x;                                                                \
    const int side = tid >= HALF;                                                               \
    const int blk = side ? blockIdx.y : blockIdx.x;                                             \
    const int ld = side ? lda : ldb;                                                            \
    const float *src = side ? A : B;                                                            \
    const int limit = side ? M : N;                                                             \
    const int t = tid % HALF, quad = t % QUADS, line = t / QUADS;                               \
    const int col = blk * T + 4 * quad;                                                         \
    int track[LOADS];                                                                           \
    _Pragma("unroll") for (int j = 0; j < LOADS; ++j) track[j] = (line + j * STEP) * ld + col;  \
    const int ax = ((tid >> 1) & 7) | (T == 128 ? (tid & 128) >> 4 : 0);                        \
    const int by = (((tid >> 4) & (T == 128 ? 7 : 3)) << 1) | (tid & 1);                        \
    float acc[8][8];                                                                            \
    _Pragma("unroll") for (int j = 0; j < 8; ++j)                                               \
        _Pragma("unroll") for (int i = 0; i < 8; ++i) acc[j][i] = 0.0f;                         \
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);                                    \
    float4 l[LOADS];                                                                            \
    _Pragma("unroll") for (int j = 0; j < LOADS; ++j) {                                         \
        l[j] = (line + j * STEP < K && col < limit) ? *(const float4 *)(src + track[j]) : zero; \
        smem[0][side][line + j * STEP][quad] = l[j];                                            \
    }                                                                                           \
    __syncthreads();                                                                            \
    int buf = 0;                                                                                \
    for (int k0 = 0; k0 < K; k0 += 8) {                                                         \
        const int next = k0 + 8 < K;                                                            \
        if (next) {                                                                             \
            _Pragma("unroll") for (int j = 0; j < LOADS; ++j) {                                 \
                track[j] += 8 * ld;                                                             \
                l[j] = (k0 + 8 + line + j * STEP < K && col < limit)                            \
                    ? *(const float4 *)(src + track[j]) : zero;                                 \
            }                                                                                   \
        }                                                                                       \
        _Pragma("unroll") for (int kk = 0; kk < 8; ++kk) {                                      \
            float4 a0 = smem[buf][0][kk][ax], a1 = smem[buf][0][kk][ax + QUADS / 2];            \
            float4 b0 = smem[buf][1][kk][by], b1 = smem[buf][1][kk][by + QUADS / 2];            \
            float xv[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};                     \
            float yv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};                     \
            _Pragma("unroll") for (int j = 0; j < 8; ++j)                                       \
                _Pragma("unroll") for (int i = 0; i < 8; ++i)                                   \
                    acc[j][i] = fmaf(yv[j], xv[i], acc[j][i]);                                  \
        }                                                                                       \
        if (next) {                                                                             \
            _Pragma("unroll") for (int j = 0; j < LOADS; ++j)                                   \
                smem[buf ^ 1][side][line + j * STEP][quad] = l[j];                              \
            __syncthreads();                                                                    \
            buf ^= 1;                                                                           \
        }                                                                                       \
    }                                                                                           \
    const int cx = blockIdx.x * T + 4 * ax;                                                     \
    const int cy = blockIdx.y * T + 4 * by;                                                     \
    _Pragma("unroll") for (int j = 0; j < 8; ++j) {                                             \
        const int row = cy + (j & 3) + (j >> 2) * (T / 2);                                      \
        _Pragma("unroll") for (int i = 0; i < 8; ++i) {                                         \
            const int c = cx + (i & 3) + (i >> 2) * (T / 2);                                    \
            if (row < M && c < N)                                                               \
                C[row * ldc + c] = alpha * acc[j][i] + beta * C[row * ldc + c];                 \
        }                                                                                       \
    }                                                                                           \
}

SGEMM(gemm, 128)
SGEMM(gemm_64, 64)
#endif
