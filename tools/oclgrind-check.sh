#!/usr/bin/env bash
# Runs a test under oclgrind and fails it on any oclgrind report (out-of-bounds access, data
# race, uninitialised value, API misuse): oclgrind itself only prints them.
# -cl-opt-disable: oclgrind 21.10's uninitialised-value checker cannot interpret the LLVM
# `freeze` instruction that the optimiser emits, and aborts on it.
set -u
log=$(mktemp /tmp/dipole-oclgrind-XXXXXX.log)
oclgrind --build-options "-cl-opt-disable" --data-races --uninitialized --check-api \
    --log "$log" "$@"
rc=$?
if [ -s "$log" ]; then
    echo "oclgrind reported errors:" >&2
    head -c 20000 "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
exit $rc
