/* options.h: the option table every rvsfit-cl program is driven by — getopt_long's tables, the
 * --help listing and rvs_desi_fit's underscore spellings all come from it (not installed). */
#ifndef RVS_CLI_OPTIONS_H
#define RVS_CLI_OPTIONS_H

#include <getopt.h>
#include <stddef.h>
#include <stdio.h>

/* One option: ids below 256 are also the short option letter. `group` (optional, last so that
 * tables without sections can omit it) heads a --help section when it changes. */
struct rvs_cli_option {
    const char *name;
    int has_arg;
    int id;
    const char *arg_name;
    const char *help;
    const char *group;
};

/* Fills getopt_long's tables: longopts needs n + 1 entries, shortopts 3n + 2 characters; a
 * leading ':' makes getopt report a missing argument as ':'. */
void rvs_cli_getopt_tables(const struct rvs_cli_option *options, size_t n,
                           struct option *longopts, char *shortopts);

/* "-q, --quiet", "    --device=SPEC", "    --queue-file[=LIST]" */
void rvs_cli_option_label(const struct rvs_cli_option *option, char *label, size_t size);

/* The --help listing: label padded to `width`, then the help text (sections per group). */
void rvs_cli_print_options(FILE *out, const struct rvs_cli_option *options, size_t n, int width);

/* "--log_level=X" -> "--log-level=X": only option names, never values; stops at "--". */
void rvs_cli_normalise_underscores(int argc, char **argv);

/* argv[1..argc) joined with spaces, after `prefix` and a space when prefix is not NULL;
 * arguments with blanks, quotes or shell characters single-quoted so the line can be pasted
 * back into a shell (provenance keywords: RVS_CMD, EVALCMD). malloc'ed; NULL when out of
 * memory. */
char *rvs_cli_join_arguments(const char *prefix, int argc, char **argv);

#endif
