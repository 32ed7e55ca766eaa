/* rvsfit/physics.h: physical constants shared by every module, with rvspecfit's values. */
#ifndef RVSFIT_PHYSICS_H
#define RVSFIT_PHYSICS_H

/* Speed of light in km/s (rvspecfit spec_fit.py SPEED_OF_LIGHT). */
#define RVS_SPEED_OF_LIGHT_KMS 299792.458

#endif
