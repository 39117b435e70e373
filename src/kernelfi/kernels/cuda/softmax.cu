// kernelfi's CUDA C rendering of kernels/softmax.py: one thread per score vector walks it three
// times (largest, exponentials and their sum, division). The running largest goes through an
// int, as kernelfi's run keeps it (scores truncated, saturating, NaN -> 0). Compiled only to
// count registers (scripts/ptxas_registers.py).

#include <math_constants.h>

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

__device__ void softmax_vector(int n, const float *input, float temp, float *output)
{
    float sum = 0;
    float largest = -CUDART_INF_F;
    for (int i = 0; i < n; ++i) {
        int val = input[i];
        largest = (val > largest) ? val : largest;
    }
    for (int i = 0; i < n; ++i) {
        float e = expf(input[i] / temp - largest / temp);
        sum += e;
        output[i] = e;
    }
    for (int i = 0; i < n; ++i) {
        output[i] /= sum;
    }
}

extern "C" __global__ void softmax(int n, int offset, int batch, const float *input, float temp, float *output)
{
    int b = THREAD_ID;
    if (b >= batch) return;
    softmax_vector(n, input + b * offset, temp, output + b * offset);
}
