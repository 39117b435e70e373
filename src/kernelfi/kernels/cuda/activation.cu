// kernelfi's CUDA C rendering of kernels/activation.py: activate_array, one thread per element,
// a runtime switch over the activations kernelfi implements (a value outside them gives 0, the
// switch's default case). Compiled only to count registers (scripts/ptxas_registers.py).
// RELU6, TANH and SWISH are AlexeyAB's Darknet's formulas; GELU, HARDSWISH, HARDSIGMOID and
// GELU_TANH (GeluCUDAKernelImpl's approximate='tanh' branch) MISH and ELU/SELU/CELU (the elu kernel), SOFTPLUS PyTorch's CUDA element kernels'
// (opmath float); LEAKY takes its slope (Darknet's .1f or PyTorch's negative_slope).

#define THREAD_ID ((blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x)

enum activation { LINEAR = 0, RELU = 1, LEAKY = 2, LOGISTIC = 3, RELU6 = 4, TANH = 5, SWISH = 6,
                  GELU = 7, HARDSWISH = 8, HARDSIGMOID = 9, GELU_TANH = 10, MISH = 11,
                  ELU = 12, SELU = 13, CELU = 14, SOFTPLUS = 15 };

__device__ float clamp6(float y) { return fminf(fmaxf(y, 0.f), 6.f); }

__device__ float activate(float x, int a, float slope, float threshold)
{
    switch (a) {
    case LINEAR:
        return x;
    case RELU:
        return x * (x > 0);               // -inf * 0 = NaN, as kernelfi's run keeps
    case LEAKY:
        return (x > 0) ? x : slope * x;
    case LOGISTIC:
        return 1.f / (1.f + expf(-x));
    case RELU6: {
        float low = (x > 0) ? x : 0.f;
        return (low < 6) ? low : 6.f;
    }
    case TANH:
        return 2.f / (1.f + expf(-2.f * x)) - 1.f;
    case SWISH:
        return x * (1.f / (1.f + expf(-x)));
    case GELU:
        return (x * 0.5f) * (1.f + erff(x * 0.70710678118654752f));
    case HARDSWISH:
        return (x * clamp6(x + 3.f)) * (1.f / 6.f);
    case HARDSIGMOID:
        return clamp6(x + 3.f) * (1.f / 6.f);
    case GELU_TANH: {                     // kBeta = M_SQRT2 * M_2_SQRTPI * 0.5, kKappa = 0.044715
        const float kBeta = 0.7978845608028654f, kKappa = 0.044715f;
        float x_cube = x * x * x;
        float inner = kBeta * (x + kKappa * x_cube);
        return 0.5f * x * (1.f + tanhf(inner));
    }
    case MISH:                            // PyTorch's mish kernel (opmath float)
        return x * tanhf(log1pf(expf(x)));
    case ELU:                             // PyTorch's elu kernel: scale 1, input_scale 1, alpha = slope
        return (x > 0) ? x : expm1f(x) * slope;
    case SELU:                            // scale, alpha*scale as floats
        return (x > 0) ? x * 1.05070102f : expm1f(x) * 1.75809932f;
    case CELU:                            // input_scale = 1/alpha (the host's, in double)
        return (x > 0) ? x : expm1f(x * (1.f / slope)) * slope;
    case SOFTPLUS:                        // PyTorch's softplus kernel: beta = slope
        return (x * slope) > threshold ? x : log1pf(expf(x * slope)) / slope;
    }
    return 0;
}

extern "C" __global__ void activate_array(float *x, int n, int a, float slope, float threshold)
{
    int i = THREAD_ID;
    if (i >= n) return;
    x[i] = activate(x[i], a, slope, threshold);
}
