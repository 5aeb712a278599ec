#!/usr/bin/env bash
# Install what storscp needs on a fresh Debian machine: a venv in .venv with
# the project (and, with --test, its test tools), plus DCMTK when the tests
# need it and it is missing. Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: storscp needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.storscp-installed
extras=""
[ "$want_test" = 1 ] && extras="[test]"
if [ ! -f "$stamp$extras" ] || [ setup.cfg -nt "$stamp$extras" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".$extras"
    touch "$stamp$extras"
fi

# Debian packages the tests need: "command package" pairs, installed when the
# command is missing (a path instead of a command: when that file is missing).
# The tests run these real programs; none is mocked. LazyFS (vendor/, the
# power-loss tests) is compiled by the tests from the FUSE, spdlog and toml11
# packages, and mounted with fuse3's fusermount3.
TEST_DEBS=(
    "storescu dcmtk"
    "Orthanc orthanc"
    "prometheus prometheus"
    "/usr/sbin/haproxy haproxy"  # not on a non-root PATH
    "cmake cmake"
    "g++ g++"
    "fusermount3 fuse3"
    "/usr/include/fuse3/fuse.h libfuse3-dev"
    "/usr/include/spdlog/spdlog.h libspdlog-dev"
    "/usr/include/toml.hpp libtoml11-dev"
)

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

if [ "$want_test" = 1 ]; then
    missing=()
    for pair in "${TEST_DEBS[@]}"; do
        read -r cmd pkg <<<"$pair"
        if [[ "$cmd" == /* ]]; then
            [ -e "$cmd" ] || missing+=("$pkg")
        else
            # /usr/sbin (Orthanc) may be missing from an ordinary account's PATH.
            command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "bootstrap: the tests need Debian packages ${missing[*]}; install them as root" >&2
            exit 1
        fi
        echo "bootstrap: installing Debian packages ${missing[*]}"
        apt_install "${missing[@]}"
    fi
fi

# The privilege tests run storscp as real unprivileged accounts. When the
# venv's interpreter lives where they cannot read it (pyenv under /root, or
# this checkout in root's 0700 home), they use the system's interpreter of
# the same version with the venv's packages (copied where they can read them
# if need be: tests/support/users.py), so that one must exist.
if [ "$want_test" = 1 ] && [ "$(id -u)" = 0 ]; then
    pyver=$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    if ! runuser -u nobody -- .venv/bin/python -c '' >/dev/null 2>&1 \
        && [ ! -x "/usr/bin/python$pyver" ]; then
        echo "bootstrap: installing python$pyver (Debian) for the tests that run as another account"
        apt_install "python$pyver" \
            || echo "bootstrap: python$pyver is not available here; the privilege tests will say so" >&2
    fi
fi
