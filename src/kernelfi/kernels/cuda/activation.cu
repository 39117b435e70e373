// kernelfi's CUDA C rendering of kernels/activation.py: activate_array, one thread per element,
// a runtime switch over the activations kernelfi implements (a value outside them gives 0, the
// switch's default case). Compiled only to count registers (scripts/ptxas_registers.py).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

enum activation { LINEAR = 0, RELU = 1, LEAKY = 2, LOGISTIC = 3 };

__device__ float activate(float x, int a)
{
    switch (a) {
    case LINEAR:
        return x;
    case RELU:
        return x * (x > 0);               // -inf * 0 = NaN, as kernelfi's run keeps
    case LEAKY:
        return (x > 0) ? x : .1f * x;
    case LOGISTIC:
        return 1.f / (1.f + expf(-x));
    }
    return 0;
}

extern "C" __global__ void activate_array(float *x, int n, int a)
{
    int i = THREAD_ID;
    if (i >= n) return;
    x[i] = activate(x[i], a);
}
