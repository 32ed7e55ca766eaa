/* files.h: files that appear whole or not at all (src/base/files.c); not installed. */
#ifndef RVS_BASE_FILES_H
#define RVS_BASE_FILES_H

/* Creates `dir` and its missing parents (mode 0777 less the umask). */
int rvs_file_mkdirs(const char *dir);

/* Creates the directory that will hold `path`. */
int rvs_file_mkdirs_for(const char *path);

/* Reserves a new, unique, empty file ".<basename>.<pid>.<n>.tmp" in the directory of
 * `final_path` (O_EXCL, mode 0666 less the umask); *tmp_path is allocated. */
int rvs_file_reserve_tmp(const char *final_path, char **tmp_path);

/* A temporary that is removed (not committed) is no longer the signal handler's to remove. */
void rvs_file_tmp_done(const char *tmp_path);

/* Removes every reserved, uncommitted temporary: async-signal-safe, for the signal handler. */
void rvs_file_remove_reserved(void);

/* Flushes `tmp_path` to disk and renames it to `final_path` (replacing it atomically). */
int rvs_file_commit(const char *tmp_path, const char *final_path);

#endif
