#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted input (libFuzzer; README "Fuzzing").
#
#   scripts/fuzz.sh                      build, then fuzz every target for 60 s (the CI run)
#   scripts/fuzz.sh classify redact      only these targets
#   scripts/fuzz.sh --list               the targets
#   scripts/fuzz.sh --replay [target...] run Fuzz/regressions/<target>/* and Fuzz/corpus/<target>/* once
#   scripts/fuzz.sh --build-only         build the harness only
#
# Environment:
#   CONCIERGE_FUZZ_SECONDS=60     how long each target runs (-max_total_time)
#   CONCIERGE_FUZZ_JOBS=N         targets fuzzed at once (default: the number of cores)
#   CONCIERGE_FUZZ_TIMEOUT=10     seconds one input may take before it counts as a hang (-timeout)
#   CONCIERGE_FUZZ_RSS_MB=2048    memory limit of one fuzzer process (-rss_limit_mb)
#   CONCIERGE_FUZZ_NICE=10        niceness of the fuzzers (the machine may be shared)
#   CONCIERGE_FUZZ_OUT=DIR        where each target's log, grown corpus and crashing inputs go
#                                 (default: a new folder under /tmp, printed)
#   CONCIERGE_FUZZ_FLAGS="..."    more libFuzzer flags for every target (e.g. -seed=1)
#
# Each target starts from a copy of its committed seed corpus (Fuzz/corpus/<target>/) in the output
# folder, with its dictionary (Fuzz/dict/<target>.dict) if there is one: nothing is written into the
# repository. The fuzzers run in a network namespace of their own when `unshare -n` works (the
# admin target may register targets by host name, which the proxy resolves). Exits non-zero when
# any target crashed, hung, leaked or ran out of memory; the input is kept and the command that
# reproduces it printed. A fixed crash's input belongs in Fuzz/regressions/<target>/ (replayed by
# `--replay` and by the unit tests, Tests/FuzzRegressionTests).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECONDS_PER_TARGET=${CONCIERGE_FUZZ_SECONDS:-60}
JOBS=${CONCIERGE_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
TIMEOUT=${CONCIERGE_FUZZ_TIMEOUT:-10}
RSS_MB=${CONCIERGE_FUZZ_RSS_MB:-2048}
NICE=${CONCIERGE_FUZZ_NICE:-10}
read -r -a EXTRA_FLAGS <<<"${CONCIERGE_FUZZ_FLAGS:-}"
SCRATCH=.build-fuzz

mode=fuzz
targets=()
for arg in "$@"; do
    case "$arg" in
        --replay) mode=replay ;;
        --build-only) mode=build ;;
        --list) mode=list ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $arg" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done

all_targets=()
for dir in Fuzz/corpus/*/; do all_targets+=("$(basename "$dir")"); done
if [[ $mode == list ]]; then printf '%s\n' "${all_targets[@]}"; exit 0; fi
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    [[ -d Fuzz/corpus/$t ]] || { echo "fuzz.sh: no target $t (targets: ${all_targets[*]})" >&2; exit 2; }
done

# ---- build ----
# Release (-O) with AddressSanitizer and libFuzzer's coverage instrumentation (what
# -sanitize=fuzzer turns on) on every Swift module, the project's and its dependencies'; libFuzzer
# itself is linked without its main (SwiftPM links the executable's own main, which hands over to
# LLVMFuzzerRunDriver). -enable-testing for the admin target's @testable import.
CLANG_RT=$(dirname "$(command -v swiftc)")/../lib/clang
FUZZER_LIB=$(ls "$CLANG_RT"/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null | head -n 1 || true)
[[ -n $FUZZER_LIB ]] || { echo "fuzz.sh: libclang_rt.fuzzer_no_main not found under $CLANG_RT" >&2; exit 1; }
BUILD_FLAGS=(-c release --scratch-path "$SCRATCH" --product ConciergeFuzz
    -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp,indirect-calls
    -Xswiftc -enable-testing -Xlinker "$FUZZER_LIB" -Xlinker -lstdc++)
build_started=$(date +%s)
echo "==== build: CONCIERGE_FUZZ=1 swift build ${BUILD_FLAGS[*]} ===="
CONCIERGE_FUZZ=1 swift build "${BUILD_FLAGS[@]}" 2>&1 | grep -v '^\[[0-9]*/[0-9]*\] \(Compiling\|Emitting\|Write\)' || true
BIN=$(CONCIERGE_FUZZ=1 swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/ConciergeFuzz
[[ -x $BIN ]] || { echo "fuzz.sh: the build did not produce $BIN" >&2; exit 1; }
echo "built $BIN in $(($(date +%s) - build_started)) s"
[[ $mode == build ]] && exit 0

# A network namespace of our own (no interfaces up: no lookup or connection leaves the process).
ISOLATE=()
if unshare -n true 2>/dev/null; then
    ISOLATE=(unshare -n)
else
    echo "note: 'unshare -n' is not available: the fuzzers share the machine's network"
fi
# LeakSanitizer: Swift's runtime keeps metadata caches alive on purpose; only real leaks of
# the targets' objects are reported.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:handle_abort=1}
# A trap (a failed property, a precondition) is reported by libFuzzer and ASan with the stack;
# Swift's own backtracer would read the stack in a way ASan reports as a second error.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}

OUT=${CONCIERGE_FUZZ_OUT:-$(mktemp -d /tmp/concierge-fuzz.XXXXXX)}
mkdir -p "$OUT"
echo "output: $OUT"

# ---- replay ----
if [[ $mode == replay ]]; then
    failed=()
    for t in "${targets[@]}"; do
        files=()
        for f in Fuzz/regressions/"$t"/* Fuzz/corpus/"$t"/*; do [[ -f $f ]] && files+=("$f"); done
        ((${#files[@]})) || continue
        if CONCIERGE_FUZZ_TARGET=$t "${ISOLATE[@]}" "$BIN" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB" "${files[@]}" \
            >"$OUT/$t.replay.log" 2>&1; then
            echo "replay $t: ${#files[@]} inputs ok"
        else
            echo "replay $t: FAILED (log: $OUT/$t.replay.log)"
            tail -n 30 "$OUT/$t.replay.log"
            failed+=("$t")
        fi
    done
    echo "replay: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
    ((${#failed[@]} == 0))
    exit
fi

# ---- fuzz ----
run_target() {
    local t=$1 work=$OUT/$1
    rm -rf "$work"
    mkdir -p "$work/corpus"
    cp Fuzz/corpus/"$t"/* "$work/corpus/"
    local flags=(-max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB"
        -print_final_stats=1 -artifact_prefix="$work/" -close_fd_mask=1)
    [[ -f Fuzz/dict/$t.dict ]] && flags+=(-dict="$ROOT/Fuzz/dict/$t.dict")
    local rc=0
    CONCIERGE_FUZZ_TARGET=$t nice -n "$NICE" "${ISOLATE[@]}" "$BIN" "${flags[@]}" "${EXTRA_FLAGS[@]}" "$work/corpus" \
        >"$work/log" 2>&1 || rc=$?
    echo "$rc" >"$work/rc"
}

started=$(date +%s)
echo "==== fuzzing ${targets[*]}: $SECONDS_PER_TARGET s each, $JOBS at once ===="
running=0
for t in "${targets[@]}"; do
    if ((running >= JOBS)); then wait -n || true; running=$((running - 1)); fi
    echo "start $t"
    run_target "$t" &
    running=$((running + 1))
done
wait || true

stat() { grep -m1 "^stat::$2:" "$OUT/$1/log" | awk '{print $2}'; }
failures=0
printf '\n%-11s %8s %12s %8s %14s %8s %8s  %s\n' target seconds executions exec/s corpus cov ft result
for t in "${targets[@]}"; do
    work=$OUT/$t
    rc=$(cat "$work/rc" 2>/dev/null || echo "?")
    execs=$(stat "$t" number_of_executed_units || true)
    per_second=$(stat "$t" average_exec_per_sec || true)
    # libFuzzer's last status line (DONE at the end of a clean run) and how long it ran.
    done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED|NEW|REDUCE|pulse|RELOAD)' "$work/log" | tail -n 1 || true)
    ran=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$work/log" | tail -n 1)
    cov=$(sed -n 's/.*cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    ft=$(sed -n 's/.*ft: \([0-9]*\).*/\1/p' <<<"$done_line")
    corpus=$(sed -n 's/.*corp: \([0-9]*\/[0-9]*[KMG]*b\).*/\1/p' <<<"$done_line")
    [[ -n $corpus ]] || corpus=$(find "$work/corpus" -type f | wc -l)
    artifacts=$(find "$work" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \) | sort)
    result=ok
    if [[ $rc != 0 || -n $artifacts ]]; then
        result="FAILED (exit $rc)"
        failures=$((failures + 1))
    fi
    printf '%-11s %8s %12s %8s %14s %8s %8s  %s\n' "$t" "${ran:-<$SECONDS_PER_TARGET}" "${execs:--}" "${per_second:--}" "$corpus" "${cov:--}" "${ft:--}" "$result"
done

for t in "${targets[@]}"; do
    work=$OUT/$t
    rc=$(cat "$work/rc" 2>/dev/null || echo "?")
    artifacts=$(find "$work" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'leak-*' -o -name 'oom-*' \) | sort)
    [[ $rc == 0 && -z $artifacts ]] && continue
    echo
    echo "==== $t failed (exit $rc); log: $work/log ===="
    grep -E -m 20 'ERROR: libFuzzer|ERROR: AddressSanitizer|ERROR: LeakSanitizer|Fatal error|fuzz property violated|deadly signal|timeout after|out-of-memory' "$work/log" || tail -n 40 "$work/log"
    for a in $artifacts; do
        echo "input: $a"
        echo "reproduce: CONCIERGE_FUZZ_TARGET=$t $BIN $a"
        echo "minimize:  CONCIERGE_FUZZ_TARGET=$t $BIN -minimize_crash=1 -runs=100000 -exact_artifact_path=$a.min $a"
    done
done
echo
echo "fuzzed ${#targets[@]} targets in $(($(date +%s) - started)) s; output in $OUT"
# The plain closing line CI reads: targets that ran clean, targets that crashed, hung or leaked.
echo "fuzz: $((${#targets[@]} - failures)) passed, $failures failed"
((failures == 0))
