#pragma once
// Functions in common/ are compiled by both the host compiler and nvcc.
#if defined(__CUDACC__)
#define FLEXOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLEXOPS_HOST_DEVICE inline
#endif

// A CPU loop that also gets an AVX2 build, picked at load time where the CPU has it (GCC/Clang
// function multi-versioning, an ELF ifunc): x86-64 Linux only; elsewhere the build's own
// instruction set.
#if defined(__x86_64__) && defined(__linux__) && !defined(__CUDACC__)
#define FLEXOPS_ALSO_AVX2 __attribute__((target_clones("avx2", "default")))
#else
#define FLEXOPS_ALSO_AVX2
#endif
