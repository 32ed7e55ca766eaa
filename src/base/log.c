/* log.c: leveled, [module]-prefixed messages, Python-logging level names. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <strings.h>

#include "rvsfit/log.h"
#include "rvsfit/status.h"

static int log_threshold = RVS_LOG_WARNING;
static FILE *log_stream;

struct level_name {
    int level;
    const char *name;
};

static const struct level_name level_names[] = {
    {RVS_LOG_DEBUG, "DEBUG"},     {RVS_LOG_INFO, "INFO"},         {RVS_LOG_WARNING, "WARNING"},
    {RVS_LOG_ERROR, "ERROR"},     {RVS_LOG_CRITICAL, "CRITICAL"},
};

void rvs_log_set_level(int level) { log_threshold = level; }

int rvs_log_get_level(void) { return log_threshold; }

void rvs_log_set_stream(FILE *stream) { log_stream = stream; }

int rvs_log_parse_level(const char *name, int *level)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
        if (name && strcasecmp(name, level_names[i].name) == 0) {
            *level = level_names[i].level;
            return RVS_OK;
        }
    return RVS_ERR_INVALID_ARGUMENT;
}

static const char *level_label(int level)
{
    const char *label = "DEBUG";
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++)
        if (level >= level_names[i].level)
            label = level_names[i].name;
    return label;
}

/* "rvsfit-cl[TAG]: " instead of "rvsfit-cl: " (MPI ranks: whose message it is) */
static char log_tag[32];

void rvs_log_set_tag(const char *tag)
{
    snprintf(log_tag, sizeof log_tag, "%s", tag ? tag : "");
}

void rvs_log(int level, const char *module, const char *fmt, ...)
{
    if (level < log_threshold)
        return;
    FILE *out = log_stream ? log_stream : stderr;
    va_list ap;
    va_start(ap, fmt);
    /* One locked write per message keeps lines whole when several threads log. */
    flockfile(out);
    if (log_tag[0])
        fprintf(out, "rvsfit-cl[%s]: %s [%s] ", log_tag, level_label(level), module);
    else
        fprintf(out, "rvsfit-cl: %s [%s] ", level_label(level), module);
    vfprintf(out, fmt, ap);
    fputc('\n', out);
    fflush(out);
    funlockfile(out);
    va_end(ap);
}
