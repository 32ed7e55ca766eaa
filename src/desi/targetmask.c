/* targetmask.c: desitarget's desi_mask bit tables (YAML, read with libyaml) and the --objtypes
 * name matching of rvspecfit's filter_fibermap (regular expressions matched at the start of each
 * bit name, matching bits OR-ed together).
 *
 * The tables are data/desitarget/ YAML files (desitarget, BSD-3; see data/desitarget/LICENSE). Each
 * mask is a mapping key ("desi_mask", "sv3_desi_mask", "cmx_mask") whose value is a sequence of
 * [NAME, bit, "description", {extra}] sequences; only NAME and bit are used here. */
#include <config.h>

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "desi/desi_internal.h"
#include "rvsfit/select.h"

struct targetmask_entry {
    char name[64];
    int bit;
};

struct rvs_targetmask {
    size_t count;
    struct targetmask_entry *entries;
};

static yaml_node_t *mapping_value(yaml_document_t *doc, yaml_node_t *map, const char *key)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        if (k && k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

int rvs_targetmask_load(const char *survey, const char *datadir, struct rvs_targetmask **mask)
{
    int status = RVS_OK;
    char path[4096], key[64];
    FILE *fp = NULL;
    yaml_parser_t parser;
    yaml_document_t doc;
    int parser_ok = 0, doc_ok = 0;
    struct rvs_targetmask *m = NULL;
    *mask = NULL;
    if (!datadir)
        datadir = rvs_data_dir();

    if (!survey || strcmp(survey, "main") == 0) {
        snprintf(path, sizeof path, "%s/desitarget/targetmask.yaml", datadir);
        snprintf(key, sizeof key, "desi_mask");
    } else if (strcmp(survey, "cmx") == 0) {
        snprintf(path, sizeof path, "%s/desitarget/cmx_targetmask.yaml", datadir);
        snprintf(key, sizeof key, "cmx_mask");
    } else if (strcmp(survey, "sv1") == 0 || strcmp(survey, "sv2") == 0 ||
               strcmp(survey, "sv3") == 0) {
        snprintf(path, sizeof path, "%s/desitarget/%s_targetmask.yaml", datadir, survey);
        snprintf(key, sizeof key, "%s_desi_mask", survey);
    } else {
        rvs_log(RVS_LOG_ERROR, "targetmask",
                "no desitarget bit table for survey '%s' (known: main, sv1, sv2, sv3, cmx)",
                survey);
        return RVS_ERR_FORMAT;
    }

    fp = fopen(path, "rb");
    if (!fp) {
        rvs_log(RVS_LOG_ERROR, "targetmask",
                "cannot open %s: %s (install rvsfit-cl's data, or point RVSFIT_CL_DATADIR at a "
                "directory holding desitarget/)",
                path, strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    if (!yaml_parser_initialize(&parser)) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    parser_ok = 1;
    yaml_parser_set_input_file(&parser, fp);
    if (!yaml_parser_load(&parser, &doc)) {
        rvs_log(RVS_LOG_ERROR, "targetmask", "%s:%zu: YAML error: %s", path,
                parser.problem_mark.line + 1, parser.problem ? parser.problem : "unknown");
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    doc_ok = 1;
    yaml_node_t *seq = mapping_value(&doc, yaml_document_get_root_node(&doc), key);
    if (!seq || seq->type != YAML_SEQUENCE_NODE) {
        rvs_log(RVS_LOG_ERROR, "targetmask", "%s: no '%s' list of bits", path, key);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    size_t n = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
    m = rvs_calloc(1, sizeof *m);
    if (!m || !(m->entries = rvs_calloc(n, sizeof *m->entries))) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(&doc, seq->data.sequence.items.start[i]);
        yaml_node_t *name = NULL, *bit = NULL;
        if (item && item->type == YAML_SEQUENCE_NODE &&
            item->data.sequence.items.top - item->data.sequence.items.start >= 2) {
            name = yaml_document_get_node(&doc, item->data.sequence.items.start[0]);
            bit = yaml_document_get_node(&doc, item->data.sequence.items.start[1]);
        }
        char *end = NULL;
        long b = -1;
        if (bit && bit->type == YAML_SCALAR_NODE) {
            errno = 0;
            b = strtol((char *)bit->data.scalar.value, &end, 10);
            if (errno || *end)
                b = -1;
        }
        if (!name || name->type != YAML_SCALAR_NODE || b < 0 || b > 63 ||
            name->data.scalar.length >= sizeof m->entries[0].name) {
            rvs_log(RVS_LOG_ERROR, "targetmask",
                    "%s: entry %zu of %s is not [NAME, bit 0..63, ...]", path, i + 1, key);
            status = RVS_ERR_FORMAT;
            goto cleanup;
        }
        snprintf(m->entries[i].name, sizeof m->entries[i].name, "%s",
                 (char *)name->data.scalar.value);
        m->entries[i].bit = (int)b;
    }
    m->count = n;
    *mask = m;
    m = NULL;
cleanup:
    if (doc_ok)
        yaml_document_delete(&doc);
    if (parser_ok)
        yaml_parser_delete(&parser);
    if (fp)
        fclose(fp);
    rvs_targetmask_destroy(&m);
    return status;
}

void rvs_targetmask_destroy(struct rvs_targetmask **mask)
{
    if (!mask || !*mask)
        return;
    free((*mask)->entries);
    free(*mask);
    *mask = NULL;
}

size_t rvs_targetmask_count(const struct rvs_targetmask *mask) { return mask->count; }

const char *rvs_targetmask_entry(const struct rvs_targetmask *mask, size_t i, int *bit)
{
    if (i >= mask->count)
        return NULL;
    if (bit)
        *bit = mask->entries[i].bit;
    return mask->entries[i].name;
}

int rvs_targetmask_bit(const struct rvs_targetmask *mask, const char *name)
{
    for (size_t i = 0; i < mask->count; i++)
        if (strcmp(mask->entries[i].name, name) == 0)
            return mask->entries[i].bit;
    return -1;
}

int rvs_targetmask_match(const struct rvs_targetmask *mask, const char *objtypes,
                         uint64_t *bits)
{
    int status = RVS_OK;
    char *copy = NULL, *pattern = NULL;
    uint64_t acc = 0;
    *bits = 0;
    if (!objtypes) {
        rvs_log(RVS_LOG_ERROR, "targetmask", "--objtypes: no expression given");
        return RVS_ERR_INVALID_ARGUMENT;
    }
    copy = rvs_strdup(objtypes);
    pattern = rvs_malloc(strlen(objtypes) + 8);
    if (!copy || !pattern) {
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    /* Python's str.split(','): every comma separates, empty pieces included. An empty
     * expression matches every name in rvspecfit; that is kept, with a warning. */
    char *piece = copy;
    for (;;) {
        char *comma = strchr(piece, ',');
        if (comma)
            *comma = '\0';
        if (!*piece)
            rvs_log(RVS_LOG_WARNING, "targetmask",
                    "--objtypes '%s' has an empty expression, which matches every bit name",
                    objtypes);
        /* re.match anchors at the start only: "^(expr)"; the group keeps "A|B" anchored. */
        if (*piece)
            sprintf(pattern, "^(%s)", piece);
        else
            sprintf(pattern, "^");
        regex_t re;
        int rc = regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char msg[256];
            regerror(rc, &re, msg, sizeof msg);
            rvs_log(RVS_LOG_ERROR, "targetmask",
                    "--objtypes: '%s' is not a valid regular expression: %s", piece, msg);
            status = RVS_ERR_INVALID_ARGUMENT;
            goto cleanup;
        }
        for (size_t i = 0; i < mask->count; i++)
            if (regexec(&re, mask->entries[i].name, 0, NULL, 0) == 0)
                acc |= (uint64_t)1 << mask->entries[i].bit;
        regfree(&re);
        if (!comma)
            break;
        piece = comma + 1;
    }
    if (!acc) {
        /* rvspecfit fails here (OR over an empty list); say what happened instead. */
        rvs_log(RVS_LOG_ERROR, "targetmask",
                "--objtypes '%s' matches no target bit name (examples: MWS_ANY, STD_FAINT)",
                objtypes);
        status = RVS_ERR_INVALID_ARGUMENT;
        goto cleanup;
    }
    *bits = acc;
cleanup:
    free(copy);
    free(pattern);
    return status;
}
