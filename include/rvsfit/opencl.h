/* rvsfit/opencl.h: the one place that fixes the OpenCL API level (1.2) before CL/cl.h is seen. */
#ifndef RVSFIT_OPENCL_H
#define RVSFIT_OPENCL_H

/* OpenCL C 1.2 is the newest NVIDIA compiles, so the host API stays at 1.2 as well. */
#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifndef CL_USE_DEPRECATED_OPENCL_1_2_APIS
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#endif
#include <CL/cl.h>

#endif
