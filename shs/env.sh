# Sourced by the shs/*.sh scripts: use the active virtualenv/conda env if there is one, otherwise
# create .venv and install the requirements into it. A change of requirements rebuilds .venv so a
# stale environment never hides a missing requirement; CI always starts from a fresh .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REQ=${REQ:-requirements-dev.txt}
if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
  PY=python
  $PY -m pip install -q -r "$REQ"
else
  stamp=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
  if [[ "${CI:-}" == "true" || ! -f .venv/.stamp || "$(cat .venv/.stamp)" != "$stamp" ]]; then
    echo "creating .venv and installing $REQ (first run: torch + torchvision are a few GB)"
    rm -rf .venv
    python3 -m venv .venv
    .venv/bin/python -m pip install -q -U pip
    .venv/bin/python -m pip install -q -r requirements-dev.txt
    echo "$stamp" > .venv/.stamp
  fi
  PY=.venv/bin/python
fi
export PY
