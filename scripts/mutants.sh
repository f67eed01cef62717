#!/usr/bin/env bash
# Mutation testing of the safety core with cargo-mutants (crates.io; installed here if missing). Not
# part of CI: each mutant is a rebuild plus a test run, so a full pass takes hours on 2 cores.
#
# Usage: scripts/mutants.sh [FILE...]   (default: the safety core listed below)
#        MUTANTS_ARGS='-F REGEX' scripts/mutants.sh FILE   (more cargo-mutants options: here, only the
#        mutants whose names match REGEX, e.g. 'state.rs:(4[4-9][0-9]|[5-9][0-9]{2}):' for lines 440-999)
#
# Each file is tested only by the test targets that cover it (tests_for), in the `mutants` cargo
# profile (release code, incremental, so one mutant rebuilds in seconds); files that share their
# tests go in one cargo-mutants run, which builds a scratch copy of the tree once (HiGHS included:
# several minutes). Results go to mutants.out/<first file of the group>/ (cargo-mutants' layout:
# caught.txt, missed.txt, timeout.txt, unviable.txt) and one line per file to mutants.out/summary.txt.
# What the last runs found, and why each surviving mutant is harmless or which test now kills it:
# tests/MUTANTS.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

command -v cargo-mutants >/dev/null 2>&1 || cargo install --locked cargo-mutants

# Every runtime test target (tests/runtime_*.rs), so a new one is never left out.
RUNTIME_TESTS="--lib$(for t in tests/runtime_*.rs; do printf ' --test %s' "$(basename "$t" .rs)"; done)"
# Unit tests of the other parts are skipped for the runtime (the slowest are the placement searches).
RUNTIME_SKIP="placement:: schedule:: caching_model::"

tests_for() {
    case "$1" in
        src/runtime/* | src/ffi.rs) echo "$RUNTIME_TESTS|$RUNTIME_SKIP" ;;
        src/placement/*) echo "--lib --test placement_greedy --test placement_exact|placement::improve placement::search runtime:: schedule::" ;;
        src/schedule/*) echo "--lib --test schedule_random --test schedule_diamond|placement:: runtime::" ;;
        *) echo "--lib|" ;;
    esac
}

FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
    FILES=(src/runtime/arena.rs src/placement/validate.rs src/schedule/simulate.rs src/runtime/replay.rs
        src/ffi.rs src/runtime/fallback.rs src/runtime/device.rs src/runtime/planning.rs
        src/runtime/trace.rs src/runtime/state.rs src/runtime/signatures.rs src/placement/occupancy.rs)
fi

mkdir -p mutants.out/tmp
# cargo-mutants tests a scratch copy made under $TMPDIR; the placement tests read ../shared/data from
# the crate root, so the scratch copies get a ../shared beside them.
export TMPDIR="$ROOT/mutants.out/tmp"
[ -e "$ROOT/../shared" ] && ln -sfn "$(cd "$ROOT/../shared" && pwd)" "$TMPDIR/shared"
# Files that share their tests are mutated in one cargo-mutants run (one scratch build each).
declare -A GROUP_FILES=()
for f in "${FILES[@]}"; do
    spec="$(tests_for "$f")"
    GROUP_FILES["$spec"]+=" -f $f"
done
for spec in "${!GROUP_FILES[@]}"; do
    targets="${spec%%|*}"
    skips="${spec#*|}"
    args=()
    for t in $targets; do args+=(--cargo-test-arg="$t"); done
    args+=(--cargo-test-arg=--)
    for s in $skips; do args+=(--cargo-test-arg=--skip --cargo-test-arg="$s"); done
    # shellcheck disable=SC2206 # "-f FILE" pairs, split on purpose
    files=(${GROUP_FILES[$spec]})
    out="mutants.out/$(echo "${files[1]}" | tr / _)"
    echo "== ${files[*]}" >&2
    started=$(date +%s)
    # Exit status 2 (mutants missed) and 3 (timeouts) are results; anything else is a failure.
    rc=0
    # MUTANTS_ARGS is split into words on purpose (several options).
    # shellcheck disable=SC2086
    cargo mutants --gitignore=true --profile mutants "${files[@]}" -o "$out" \
        --no-shuffle ${MUTANTS_ARGS:-} "${args[@]}" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ] && [ "$rc" -ne 3 ]; then
        echo "cargo mutants failed (exit $rc); see $out/mutants.out/debug.log" >&2
        exit "$rc"
    fi
    d="$out/mutants.out"
    for ((i = 1; i < ${#files[@]}; i += 2)); do
        f="${files[$i]}"
        count() { grep -c "^$f:" "$d/$1.txt" 2>/dev/null || true; }
        printf '%s: caught %s, missed %s, timeout %s, unviable %s\n' "$f" "$(count caught)" \
            "$(count missed)" "$(count timeout)" "$(count unviable)" | tee -a mutants.out/summary.txt
    done
    echo "   (group took $(($(date +%s) - started)) s)" | tee -a mutants.out/summary.txt
done
