/* output_files.h: what ties an rvtab to its rvmod and their input (not installed). The writing
 * itself (directories, reserved temporaries, the final rename) is src/base/files.h. */
#ifndef RVS_OUTPUT_FILES_H
#define RVS_OUTPUT_FILES_H

/* What ties an rvtab to its rvmod and both to their input (RVS_PAIR, RVS_INID keywords): a
 * token unique to one write, and the input's size and modification time. */
struct rvs_output_pair_id {
    char pair[64];
    char input[64];
};
int rvs_output_pair_id_make(const char *input_path, struct rvs_output_pair_id *id);

#endif
