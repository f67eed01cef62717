#!/usr/bin/env bash
# Installs what model_opt needs and skips what is there: system packages (apt-get), the virtual
# environment .venv/ with maturin, pytest, ruff, PyTorch, torchvision and matplotlib, and this project built into it.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# System packages: cmake and a C++ compiler build HiGHS (highs-sys); libclang is for bindgen.
need_pkgs=()
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
command -v g++ >/dev/null 2>&1 || need_pkgs+=(g++)
dpkg -s libclang-dev >/dev/null 2>&1 || need_pkgs+=(libclang-dev)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if ((${#need_pkgs[@]})); then
    say "installing system packages: ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { say "cargo not found: install Rust (rustup) first"; exit 1; }

# The virtual environment.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python
if ! $PY -c 'import maturin, pytest, ruff, torch, torchvision, ninja, matplotlib' >/dev/null 2>&1; then
    say "installing Python packages into .venv (PyTorch is large; this takes a few minutes once)"
    $PY -m pip install -q --upgrade pip
    $PY -m pip install -q -r requirements-dev.txt
fi

# The project itself: one release build of the crate with the Python bindings, installed editable.
# `cargo test --release` shares this profile, so HiGHS and the other dependencies are compiled once.
say "building model_opt (release)"
VIRTUAL_ENV="$ROOT/.venv" .venv/bin/maturin develop --release --quiet >&2
if ! $PY -c 'import model_opt._native' >/dev/null 2>&1; then
    say "the build did not produce an importable model_opt._native; see the output above"
    exit 1
fi
