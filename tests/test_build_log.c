/* test_build_log.c: compiler logs that ignore #line ("<kernel>:N:", NVIDIA's form) are mapped
 * back to the kernel file and common.clh. */
#include <config.h>

#include <string.h>

#include "base/internal.h"
#include "testutil.h"

int main(void)
{
    /* common.clh on composed lines 2..41, the kernel file from composed line 43 */
    struct rvs_source_lines lines = {41, 43};
    const char *log = "<kernel>:77:72: error: expected expression\n"
                      "<kernel>:3:1: warning: in common\n"
                      "<kernel>:1:1: note: the #line directive\n"
                      "plain line without a reference <kernel>:x\n";
    const char *want = "selftest.cl:35:72: error: expected expression\n"
                       "common.clh:2:1: warning: in common\n"
                       "<kernel>:1:1: note: the #line directive\n"
                       "plain line without a reference <kernel>:x\n";
    char *got = rvs_program_translate_log(log, "selftest", &lines);
    CHECK(got && strcmp(got, want) == 0, "translated log:\n%s\nwant:\n%s", got ? got : "(null)",
          want);
    free(got);
    got = rvs_program_translate_log("", "selftest", &lines);
    CHECK(got && *got == '\0', "empty log stays empty");
    free(got);
    return test_finish("test_build_log");
}
