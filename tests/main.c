/* Runs one suite by name: dipole-tests SUITE. Exit 77 means skipped (no OpenCL device). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* DIFF and head_dim_v (tests/test_diff.c). Declared here until testutil.h, which others are
 * editing, lists it with the other suites. */
Suite *diff_suite(void);

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        Suite *(*make)(void);
    } suites[] = {
        {"api", api_suite},
        {"forward", forward_suite},
        {"golden", golden_suite},
        {"cache", cache_suite},
        {"backward", backward_suite},
        {"backward-gemm", backward_gemm_suite},
        {"gemm", gemm_suite},
        {"gemm-large", gemm_large_suite},
        {"hardening", hardening_suite},
        {"threads", threads_suite},
        {"env", env_suite},
        {"noplatform", noplatform_suite},
        {"oclgrind-small", oclgrind_small_suite},
        {"dtype", dtype_suite},
        {"paged", paged_suite},
        {"host", host_suite},
        {"varlen", varlen_suite},
        {"diff", diff_suite},
    };
    if (argc != 2) {
        fprintf(stderr, "usage: %s SUITE\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        if (strcmp(argv[1], suites[i].name) != 0)
            continue;
        SRunner *sr = srunner_create(suites[i].make());
        /* One process keeps one context and its compiled programs across tests; it also lets
         * valgrind and the sanitizers see everything. */
        srunner_set_fork_status(sr, CK_NOFORK);
        srunner_run_all(sr, CK_NORMAL);
        int failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        tu_ctx_release();
        return failed ? 1 : 0;
    }
    fprintf(stderr, "unknown suite %s\n", argv[1]);
    return 2;
}
