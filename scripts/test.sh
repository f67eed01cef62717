#!/usr/bin/env bash
# Every test: set up what is missing, then the Rust tests (release profile, shared with the extension
# build so HiGHS compiles once), format and lint checks (rustfmt, clippy, ruff), and the Python tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/setup.sh"

echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy" >&2
cargo clippy --release --all-targets --quiet -- -D warnings
cargo clippy --release --features python --quiet -- -D warnings
echo "== ruff" >&2
.venv/bin/ruff check python tests benches
echo "== Rust tests" >&2
if ! cargo test --release; then
    # A property test that failed saved its seed next to its source; print it, so a failure seen only
    # in CI can be replayed: put the `cc ...` line into the same file here and run the test again.
    echo "== proptest seeds of the failures (new or changed *.proptest-regressions files)" >&2
    git status --porcelain --untracked-files=all | awk '{print $2}' | grep 'proptest-regressions' |
        while read -r f; do echo "-- $f" >&2; grep '^cc ' "$f" >&2 || true; done
    exit 1
fi
echo "== Python tests" >&2
.venv/bin/python -m pytest -q tests/python
