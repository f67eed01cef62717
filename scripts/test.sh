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
cargo test --release
echo "== Python tests" >&2
.venv/bin/python -m pytest -q tests/python
