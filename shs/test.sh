#!/usr/bin/env bash
# The test suite on CPU. Extra arguments go to pytest, e.g. `bash shs/test.sh -m "not slow"`.
source "$(dirname "$0")/env.sh"
$PY -m ruff check .
$PY -m pytest -q "$@" tests
