/* output_files.h: file-system helpers of the output writers (not installed): directories,
 * reserved temporary names beside the destination, the final rename. */
#ifndef RVS_OUTPUT_FILES_H
#define RVS_OUTPUT_FILES_H

/* Creates `dir` and its missing parents (mode 0777 less the umask). */
int rvs_output_mkdirs(const char *dir);

/* Creates the directory that will hold `path`. */
int rvs_output_mkdirs_for(const char *path);

/* Reserves a new, unique, empty file ".<basename>.<pid>.<n>.tmp" in the directory of
 * `final_path` (O_EXCL, mode 0666 less the umask); *tmp_path is allocated. */
int rvs_output_reserve_tmp(const char *final_path, char **tmp_path);

/* A temporary that is removed (not committed) is no longer the signal handler's to remove. */
void rvs_output_tmp_done(const char *tmp_path);

/* Flushes `tmp_path` to disk and renames it to `final_path` (replacing it atomically). */
int rvs_output_commit(const char *tmp_path, const char *final_path);

/* What ties an rvtab to its rvmod and both to their input (RVS_PAIR, RVS_INID keywords): a
 * token unique to one write, and the input's size and modification time. */
struct rvs_output_pair_id {
    char pair[64];
    char input[64];
};
int rvs_output_pair_id_make(const char *input_path, struct rvs_output_pair_id *id);

#endif
