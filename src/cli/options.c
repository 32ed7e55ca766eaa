/* options.c: getopt tables, --help listing and underscore spellings from one option table. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

void rvs_cli_getopt_tables(const struct rvs_cli_option *options, size_t n,
                           struct option *longopts, char *shortopts)
{
    size_t k = 0;
    shortopts[k++] = ':';
    for (size_t i = 0; i < n; i++) {
        longopts[i] = (struct option){options[i].name, options[i].has_arg, NULL, options[i].id};
        if (options[i].id < 256) {
            shortopts[k++] = (char)options[i].id;
            if (options[i].has_arg == required_argument)
                shortopts[k++] = ':';
            else if (options[i].has_arg == optional_argument) {
                shortopts[k++] = ':';
                shortopts[k++] = ':';
            }
        }
    }
    shortopts[k] = '\0';
    memset(&longopts[n], 0, sizeof longopts[n]);
}

void rvs_cli_option_label(const struct rvs_cli_option *o, char *label, size_t size)
{
    const char *eq = o->has_arg == optional_argument ? "[=" : o->arg_name ? "=" : "";
    const char *close = o->has_arg == optional_argument ? "]" : "";
    const char *arg = o->arg_name ? o->arg_name : "";
    if (o->id < 256)
        snprintf(label, size, "-%c, --%s%s%s%s", o->id, o->name, eq, arg, close);
    else
        snprintf(label, size, "    --%s%s%s%s", o->name, eq, arg, close);
}

void rvs_cli_print_options(FILE *out, const struct rvs_cli_option *options, size_t n, int width)
{
    const char *group = NULL;
    for (size_t i = 0; i < n; i++) {
        char label[96];
        if (options[i].group && options[i].group != group) {
            group = options[i].group;
            fprintf(out, "\n%s:\n", group);
        }
        rvs_cli_option_label(&options[i], label, sizeof label);
        fprintf(out, "  %-*s %s\n", width, label, options[i].help);
    }
}

void rvs_cli_normalise_underscores(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strncmp(argv[i], "--", 2) != 0)
            continue;
        for (char *p = argv[i] + 2; *p && *p != '='; p++)
            if (*p == '_')
                *p = '-';
    }
}

char *rvs_cli_join_arguments(const char *prefix, int argc, char **argv)
{
    size_t size = (prefix ? strlen(prefix) + 1 : 0) + 1;
    for (int i = 1; i < argc; i++)
        size += 4 * strlen(argv[i]) + 3;
    char *line = malloc(size);
    if (!line)
        return NULL;
    char *p = line;
    if (prefix)
        p += sprintf(p, "%s", prefix);
    for (int i = 1; i < argc; i++) {
        if (p > line)
            *p++ = ' ';
        int quote = !*argv[i] || strpbrk(argv[i], " \t\n'\"\\$*?") != NULL;
        if (quote)
            *p++ = '\'';
        for (const char *c = argv[i]; *c; c++) {
            if (*c == '\'') {
                memcpy(p, "'\\''", 4);
                p += 4;
            } else
                *p++ = *c;
        }
        if (quote)
            *p++ = '\'';
    }
    *p = '\0';
    return line;
}
