/* Runs one suite of dipole-bench's unit tests by name: dipole-bench-tests SUITE. */
#include <stdio.h>
#include <string.h>

#include "bench_tests.h"

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        Suite *(*make)(void);
    } suites[] = {
        {"args", bench_args_suite},
        {"metrics", bench_metrics_suite},
        {"reports", bench_reports_suite},
        {"validate", bench_validate_suite},
        {"tune", bench_tune_suite},
    };
    if (argc != 2) {
        fprintf(stderr, "usage: %s SUITE\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        if (strcmp(argv[1], suites[i].name) != 0)
            continue;
        SRunner *sr = srunner_create(suites[i].make());
        srunner_run_all(sr, CK_NORMAL);
        const int failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? 1 : 0;
    }
    fprintf(stderr, "unknown suite %s\n", argv[1]);
    return 2;
}
