/* config.c: rvspecfit's YAML configuration file, read with libyaml's document API.
 *
 * rvspecfit (utils.py read_config) loads the file with PyYAML's safe_load, fills the keys of
 * get_default_config it lacks and lets every module pick what it uses; desi_fit.py also reads
 * lsf_sigma0_angstrom (a mapping arm -> Å, 0.5 when absent) and ccf_continuum_normalize.
 * Here the keys are checked where they are read: a wrong type or an impossible value is an error
 * naming the key, because a silently ignored typo in a velocity range would change every
 * result; unknown keys are only warned about, so rvspecfit's own files still load. Numbers may
 * be written as YAML integers or floats (also "1e-2", which PyYAML would leave a string). */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <yaml.h>

#include "base/internal.h"
#include "rvsfit/config.h"

#define MODULE "config"

enum value_kind { KIND_NUMBER, KIND_BOOL, KIND_STRING, KIND_LSF };

/* One key of the file: its name, bit, how it is read and where it goes. */
struct key_spec {
    const char *name;
    unsigned bit;
    enum value_kind kind;
    size_t offset; /* offsetof the double/int field; unused for strings and the LSF mapping */
};

static const struct key_spec key_specs[] = {
    {"template_lib", RVS_CONFIG_TEMPLATE_LIB, KIND_STRING, 0},
    {"min_vel", RVS_CONFIG_MIN_VEL, KIND_NUMBER, offsetof(struct rvs_config, min_vel)},
    {"max_vel", RVS_CONFIG_MAX_VEL, KIND_NUMBER, offsetof(struct rvs_config, max_vel)},
    {"vel_step0", RVS_CONFIG_VEL_STEP0, KIND_NUMBER, offsetof(struct rvs_config, vel_step0)},
    {"min_vel_step", RVS_CONFIG_MIN_VEL_STEP, KIND_NUMBER,
     offsetof(struct rvs_config, min_vel_step)},
    {"min_vsini", RVS_CONFIG_MIN_VSINI, KIND_NUMBER, offsetof(struct rvs_config, min_vsini)},
    {"max_vsini", RVS_CONFIG_MAX_VSINI, KIND_NUMBER, offsetof(struct rvs_config, max_vsini)},
    {"second_minimizer", RVS_CONFIG_SECOND_MINIMIZER, KIND_BOOL,
     offsetof(struct rvs_config, second_minimizer)},
    {"lsf_sigma0_angstrom", RVS_CONFIG_LSF_SIGMA0, KIND_LSF, 0},
    {"ccf_continuum_normalize", RVS_CONFIG_CCF_CONTINUUM_NORMALIZE, KIND_BOOL,
     offsetof(struct rvs_config, ccf_continuum_normalize)},
};
enum { NKEYS = sizeof key_specs / sizeof key_specs[0] };

void rvs_config_init(struct rvs_config *config)
{
    memset(config, 0, sizeof *config);
    config->min_vel = -1000;
    config->max_vel = 1000;
    config->vel_step0 = 5;
    config->min_vel_step = 0.2;
    config->min_vsini = 1e-2;
    config->max_vsini = 500;
    config->second_minimizer = 1;
    config->ccf_continuum_normalize = 1;
    for (int a = 0; a < RVS_DESI_NARMS; a++)
        config->lsf_sigma0[a] = 0.5;
}

void rvs_config_free(struct rvs_config *config)
{
    if (!config)
        return;
    free(config->template_lib);
    free(config->path);
    config->template_lib = NULL;
    config->path = NULL;
}

const char *rvs_config_key_name(unsigned key)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (key_specs[i].bit == key)
            return key_specs[i].name;
    return NULL;
}

/* ------------------------------------------------------------------ scalar values */

static int is_plain_scalar(const yaml_node_t *node)
{
    return node->type == YAML_SCALAR_NODE && node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static const char *scalar_text(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

/* "Line L, column C" of a node, for messages (libyaml counts from 0). */
static void node_where(const yaml_node_t *node, char *buf, size_t size)
{
    snprintf(buf, size, "line %lu", (unsigned long)node->start_mark.line + 1);
}

/* A YAML 1.1 null (empty, ~, null): PyYAML gives None, which no key accepts. */
static int is_null(const yaml_node_t *node)
{
    if (!is_plain_scalar(node))
        return 0;
    const char *t = scalar_text(node);
    return !*t || strcmp(t, "~") == 0 || strcmp(t, "null") == 0 || strcmp(t, "Null") == 0 ||
           strcmp(t, "NULL") == 0;
}

static int read_number(const char *path, const char *key, const yaml_node_t *node, double *out)
{
    char where[32];
    node_where(node, where, sizeof where);
    if (node->type != YAML_SCALAR_NODE || is_null(node)) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s, %s: %s needs a number, got %s", path, where, key,
                node->type != YAML_SCALAR_NODE ? "a list or mapping" : "no value");
        return RVS_ERR_FORMAT;
    }
    const char *t = scalar_text(node);
    if (!is_plain_scalar(node)) {
        rvs_log(RVS_LOG_ERROR, MODULE,
                "%s, %s: %s needs a number, got the quoted string '%s' (remove the quotes)", path,
                where, key, t);
        return RVS_ERR_FORMAT;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(t, &end);
    if (end == t || *end || errno == ERANGE || !isfinite(v)) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s, %s: %s needs a finite number, got '%s'", path, where,
                key, t);
        return RVS_ERR_FORMAT;
    }
    *out = v;
    return RVS_OK;
}

/* PyYAML's booleans (yes/no/true/false/on/off in three capitalisations) and the integers 0 and 1
 * (rvspecfit's own config.yaml writes "second_minimizer: 1"). */
static int read_bool(const char *path, const char *key, const yaml_node_t *node, int *out)
{
    static const char *const truths[] = {"yes", "Yes", "YES", "true", "True", "TRUE",
                                         "on",  "On",  "ON",  "1"};
    static const char *const lies[] = {"no",    "No",    "NO", "false", "False",
                                       "FALSE", "off",   "Off", "OFF",  "0"};
    char where[32];
    node_where(node, where, sizeof where);
    if (is_plain_scalar(node)) {
        const char *t = scalar_text(node);
        for (size_t i = 0; i < sizeof truths / sizeof truths[0]; i++)
            if (strcmp(t, truths[i]) == 0) {
                *out = 1;
                return RVS_OK;
            }
        for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++)
            if (strcmp(t, lies[i]) == 0) {
                *out = 0;
                return RVS_OK;
            }
    }
    rvs_log(RVS_LOG_ERROR, MODULE, "%s, %s: %s needs true or false (or 1 or 0), got %s%s%s", path,
            where, key, node->type == YAML_SCALAR_NODE ? "'" : "",
            node->type == YAML_SCALAR_NODE ? scalar_text(node) : "a list or mapping",
            node->type == YAML_SCALAR_NODE ? "'" : "");
    return RVS_ERR_FORMAT;
}

static int read_string(const char *path, const char *key, const yaml_node_t *node, char **out)
{
    char where[32];
    node_where(node, where, sizeof where);
    if (node->type != YAML_SCALAR_NODE || is_null(node) || !*scalar_text(node)) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s, %s: %s needs a directory name, got %s", path, where,
                key, node->type != YAML_SCALAR_NODE ? "a list or mapping" : "nothing");
        return RVS_ERR_FORMAT;
    }
    char *copy = rvs_strdup(scalar_text(node));
    if (!copy)
        return RVS_ERR_NOMEM;
    free(*out);
    *out = copy;
    return RVS_OK;
}

/* lsf_sigma0_angstrom: {b: 0.5, r: 0.5, z: 0.5}; arms may be left out (0.5 then). */
static int read_lsf(const char *path, yaml_document_t *doc, const yaml_node_t *node,
                    struct rvs_config *config)
{
    char where[32];
    node_where(node, where, sizeof where);
    if (node->type != YAML_MAPPING_NODE) {
        rvs_log(RVS_LOG_ERROR, MODULE,
                "%s, %s: lsf_sigma0_angstrom needs a mapping of arms to Gaussian sigmas in "
                "Angstrom, like {b: 0.5, r: 0.5, z: 0.5}",
                path, where);
        return RVS_ERR_FORMAT;
    }
    for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(doc, p->key);
        yaml_node_t *v = yaml_document_get_node(doc, p->value);
        if (!k || !v)
            return RVS_ERR_FORMAT;
        int arm = -1;
        if (k->type == YAML_SCALAR_NODE)
            for (int a = 0; a < RVS_DESI_NARMS; a++)
                if (strcmp(scalar_text(k), rvs_desi_arm_name(a)) == 0)
                    arm = a;
        if (arm < 0) {
            node_where(k, where, sizeof where);
            rvs_log(RVS_LOG_ERROR, MODULE,
                    "%s, %s: lsf_sigma0_angstrom: unknown arm '%s' (the arms are b, r and z)",
                    path, where, k->type == YAML_SCALAR_NODE ? scalar_text(k) : "?");
            return RVS_ERR_FORMAT;
        }
        char key[64];
        snprintf(key, sizeof key, "lsf_sigma0_angstrom.%s", rvs_desi_arm_name(arm));
        double sigma;
        int status = read_number(path, key, v, &sigma);
        if (status != RVS_OK)
            return status;
        if (sigma < 0) {
            node_where(v, where, sizeof where);
            rvs_log(RVS_LOG_ERROR, MODULE, "%s, %s: %s must be >= 0 Angstrom, got %g", path,
                    where, key, sigma);
            return RVS_ERR_FORMAT;
        }
        config->lsf_sigma0[arm] = sigma;
        config->lsf_sigma0_arms |= 1u << arm;
    }
    return RVS_OK;
}

/* Checks between keys, naming the keys involved. */
static int check_values(const char *path, const struct rvs_config *c)
{
    const char *problem = NULL;
    char text[200];
    if (!(c->min_vel < c->max_vel)) {
        snprintf(text, sizeof text, "min_vel (%g) must be below max_vel (%g)", c->min_vel,
                 c->max_vel);
        problem = text;
    } else if (!(c->vel_step0 > 0) || !(c->vel_step0 < c->max_vel - c->min_vel)) {
        snprintf(text, sizeof text, "vel_step0 (%g) must be > 0 and below max_vel - min_vel",
                 c->vel_step0);
        problem = text;
    } else if (!(c->min_vel_step > 0)) {
        snprintf(text, sizeof text, "min_vel_step (%g) must be > 0", c->min_vel_step);
        problem = text;
    } else if (!(c->min_vsini > 0)) {
        /* rvspecfit fits log(vsini), so the lower bound must be positive */
        snprintf(text, sizeof text, "min_vsini (%g) must be > 0", c->min_vsini);
        problem = text;
    } else if (!(c->max_vsini > c->min_vsini)) {
        snprintf(text, sizeof text, "max_vsini (%g) must be above min_vsini (%g)", c->max_vsini,
                 c->min_vsini);
        problem = text;
    }
    if (problem) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s: %s", path, problem);
        return RVS_ERR_FORMAT;
    }
    return RVS_OK;
}

int rvs_config_read(const char *path, struct rvs_config *config)
{
    int status = RVS_OK;
    FILE *fp = NULL;
    int parser_ready = 0, doc_ready = 0;
    yaml_parser_t parser;
    yaml_document_t doc;
    unsigned seen = 0;

    fp = fopen(path, "rb");
    if (!fp) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot open configuration file %s: %s", path,
                strerror(errno));
        status = RVS_ERR_IO;
        goto cleanup;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && !S_ISREG(st.st_mode)) {
        /* a directory opens, and libyaml then reports only "input error" */
        rvs_log(RVS_LOG_ERROR, MODULE, "configuration file %s is %s, not a YAML file: give the "
                "path of the file (--config)", path,
                S_ISDIR(st.st_mode) ? "a directory" : "not a regular file");
        status = RVS_ERR_IO;
        goto cleanup;
    }
    if (!yaml_parser_initialize(&parser)) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s: cannot initialise the YAML parser", path);
        status = RVS_ERR_NOMEM;
        goto cleanup;
    }
    parser_ready = 1;
    yaml_parser_set_input_file(&parser, fp);
    if (!yaml_parser_load(&parser, &doc)) {
        rvs_log(RVS_LOG_ERROR, MODULE, "%s, line %lu, column %lu: not valid YAML: %s%s%s", path,
                (unsigned long)parser.problem_mark.line + 1,
                (unsigned long)parser.problem_mark.column + 1,
                parser.problem ? parser.problem : "syntax error",
                parser.context ? " " : "", parser.context ? parser.context : "");
        status = RVS_ERR_FORMAT;
        goto cleanup;
    }
    doc_ready = 1;
    if (ferror(fp)) {
        rvs_log(RVS_LOG_ERROR, MODULE, "cannot read configuration file %s", path);
        status = RVS_ERR_IO;
        goto cleanup;
    }

    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || is_null(root)) {
        rvs_log(RVS_LOG_WARNING, MODULE, "configuration file %s is empty; using the defaults",
                path);
    } else if (root->type != YAML_MAPPING_NODE) {
        rvs_log(RVS_LOG_ERROR, MODULE,
                "%s: the configuration must be a mapping of keys to values (key: value lines)",
                path);
        status = RVS_ERR_FORMAT;
        goto cleanup;
    } else {
        for (yaml_node_pair_t *p = root->data.mapping.pairs.start;
             p < root->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(&doc, p->key);
            yaml_node_t *v = yaml_document_get_node(&doc, p->value);
            if (!k || !v || k->type != YAML_SCALAR_NODE) {
                rvs_log(RVS_LOG_ERROR, MODULE, "%s: a key that is not a plain name", path);
                status = RVS_ERR_FORMAT;
                goto cleanup;
            }
            const char *name = scalar_text(k);
            const struct key_spec *spec = NULL;
            for (size_t i = 0; i < NKEYS; i++)
                if (strcmp(name, key_specs[i].name) == 0)
                    spec = &key_specs[i];
            char where[32];
            node_where(k, where, sizeof where);
            if (!spec) {
                rvs_log(RVS_LOG_WARNING, MODULE,
                        "%s, %s: unknown key '%s' ignored (known: template_lib, min_vel, "
                        "max_vel, vel_step0, min_vel_step, min_vsini, max_vsini, "
                        "second_minimizer, lsf_sigma0_angstrom, ccf_continuum_normalize)",
                        path, where, name);
                continue;
            }
            if (seen & spec->bit) /* PyYAML keeps the last value without a word */
                rvs_log(RVS_LOG_WARNING, MODULE, "%s, %s: key '%s' given twice; the last wins",
                        path, where, name);
            seen |= spec->bit;
            switch (spec->kind) {
            case KIND_NUMBER:
                RVS_TRY(read_number(path, name, v, (double *)((char *)config + spec->offset)));
                break;
            case KIND_BOOL:
                RVS_TRY(read_bool(path, name, v, (int *)((char *)config + spec->offset)));
                break;
            case KIND_STRING:
                RVS_TRY(read_string(path, name, v, &config->template_lib));
                break;
            case KIND_LSF:
                RVS_TRY(read_lsf(path, &doc, v, config));
                break;
            }
            config->set |= spec->bit;
        }
    }
    RVS_TRY(check_values(path, config));

    char *absolute = realpath(path, NULL);
    free(config->path);
    config->path = absolute ? absolute : rvs_strdup(path);
    if (!config->path)
        status = RVS_ERR_NOMEM;
cleanup:
    if (doc_ready)
        yaml_document_delete(&doc);
    if (parser_ready)
        yaml_parser_delete(&parser);
    if (fp)
        fclose(fp);
    return status;
}
