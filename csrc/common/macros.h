#pragma once
// Functions in common/ are compiled by both the host compiler and nvcc.
#if defined(__CUDACC__)
#define FLEXOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLEXOPS_HOST_DEVICE inline
#endif
