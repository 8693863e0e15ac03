/* Check suites for dipole-bench's pure parts (no device needed). */
#ifndef DIPOLE_BENCH_TESTS_H
#define DIPOLE_BENCH_TESTS_H

#include <check.h>

#include "bench.h"

Suite *bench_args_suite(void);
Suite *bench_metrics_suite(void);
Suite *bench_reports_suite(void);
Suite *bench_validate_suite(void);
Suite *bench_tune_suite(void);

/* A small run with one ok row and one unsupported row, for the writers. */
void bt_sample_run(bench_run *run);

#endif
