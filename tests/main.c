/* Runs one suite by name: dipole-tests SUITE. Exit 77 means skipped (no OpenCL device). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/lsan_interface.h>
#define DP_HAVE_LSAN 1
#endif
#endif

/* Under LeakSanitizer, the leak check runs here, before the libraries' destructors and while
 * PoCL's worker threads are idle: at exit its tracer crashed in CI ("Tracer caught signal 11")
 * after every check had passed, a leak check that never ran. The exit-time check is then
 * skipped. */
static void dp_leak_check_now(void)
{
#ifdef DP_HAVE_LSAN
    __lsan_do_leak_check();
#endif
}

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
        dp_leak_check_now();
        return failed ? 1 : 0;
    }
    fprintf(stderr, "unknown suite %s\n", argv[1]);
    return 2;
}
