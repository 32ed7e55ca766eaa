/* rvsfit/log.h: leveled messages to stderr (or a log file) with a [module] prefix. */
#ifndef RVSFIT_LOG_H
#define RVSFIT_LOG_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Same numbers as Python's logging module, so rvs_desi_fit's --log-level names carry over. */
enum rvs_log_level {
    RVS_LOG_DEBUG = 10,
    RVS_LOG_INFO = 20,
    RVS_LOG_WARNING = 30,
    RVS_LOG_ERROR = 40,
    RVS_LOG_CRITICAL = 50
};

/* Messages below this level are dropped (default RVS_LOG_WARNING). */
void rvs_log_set_level(int level);
int rvs_log_get_level(void);
/* Parses DEBUG/INFO/WARNING/ERROR/CRITICAL (any case); returns 0, or RVS_ERR_INVALID_ARGUMENT. */
int rvs_log_parse_level(const char *name, int *level);
/* A tag after the program name ("rvsfit-cl[rank 3]: ..."), e.g. the MPI rank; NULL or "" for
 * none. Set it before threads log. */
void rvs_log_set_tag(const char *tag);
/* Where messages go (NULL restores stderr); the caller keeps ownership of the stream. */
void rvs_log_set_stream(FILE *stream);

#if defined(__GNUC__)
#define RVS_PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define RVS_PRINTF_LIKE(f, a)
#endif

/* Writes "rvsfit-cl: LEVEL [module] message\n" when level passes the threshold. Thread-safe. */
void rvs_log(int level, const char *module, const char *fmt, ...) RVS_PRINTF_LIKE(3, 4);

#ifdef __cplusplus
}
#endif

#endif
