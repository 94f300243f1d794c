# Sourced by the recipe scripts (reproduce_mtmt.sh, finetune_tsav.sh, train_emma.sh) before env.sh:
#   take_paths NAME ... -- "$@"; set -- "${REST[@]}"
# The leading arguments that are not flags fill the variables NAME ... in order (a variable set in the
# environment is kept when its argument is absent); a path given relative to the caller's folder, as an
# argument or a variable, is made absolute, since env.sh then changes to the repository. The arguments left
# (the flags appended to train.py's) are in REST.
take_paths() {
  local here=$PWD names=() name value
  while [[ $1 != -- ]]; do names+=("$1"); shift; done
  shift
  for name in "${names[@]}"; do
    if [[ $# -gt 0 && $1 != -* ]]; then printf -v "$name" '%s' "$1"; shift; fi
    value=${!name:-}
    if [[ -n $value && $value != /* ]]; then printf -v "$name" '%s' "$here/$value"; fi
  done
  REST=("$@")
}
