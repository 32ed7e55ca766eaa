/* rvsfit.h: public API of librvsfit, the library the rvsfit-cl command is built on. */
#ifndef RVSFIT_H
#define RVSFIT_H

#include "rvsfit/opencl.h"
#include "rvsfit/status.h"
#include "rvsfit/log.h"
#include "rvsfit/device.h"
#include "rvsfit/context.h"
#include "rvsfit/gemm.h"
#include "rvsfit/resolution.h"
#include "rvsfit/nn.h"
#include "rvsfit/spline.h"
#include "rvsfit/desi.h"
#include "rvsfit/select.h"
#include "rvsfit/prepare.h"
#include "rvsfit/output.h"
#include "rvsfit/rotation.h"
#include "rvsfit/chisq.h"
#include "rvsfit/train.h"
#include "rvsfit/train_io.h"
#include "rvsfit/synth.h"
#include "rvsfit/mkgrid.h"
#include "rvsfit/library.h"
#include "rvsfit/engine.h"
#include "rvsfit/fit.h"
#include "rvsfit/config.h"
#include "rvsfit/run.h"
#include "rvsfit/figures.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version string, e.g. "0.1.0". */
const char *rvs_version(void);

#ifdef __cplusplus
}
#endif

#endif
