"""Reading checkpoint files, in every format the systems of this codebase meet, without running their pickles.

Formats understood by ``state_dict_of`` / ``state_dicts_of``:

- a raw state dict ``{name: tensor}`` (torchvision, timm exports);
- a state dict under ``'state_dict'`` (TSAV), ``'model'`` (MAE, our train.py) or ``'model_state_dict'``
  (DAN);
- several state dicts in a list under one key (``'state_dicts'``: co-trained peers);

each with or without the ``module.`` prefix DataParallel/DDP adds. Files are read with
``torch.load(weights_only=True)``: plain containers of tensors and numbers load, anything else is refused
with a message naming the file, unless ``safe_globals`` allow-lists a class (e.g. the
``argparse.Namespace`` an MAE checkpoint keeps under 'args') or the caller passes ``trust_pickle=True``
for a file it trusts.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
STATE_DICT_LIST_KEYS = ("state_dicts",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def read_checkpoint(path: str | Path, trust_pickle: bool = False, safe_globals: Sequence[type] = ()):
    """The unpickled object of a checkpoint file; only plain tensor containers (+ ``safe_globals``) unless
    ``trust_pickle``. ``trust_pickle=True`` lets any pickle run: only for files you trust."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a valid file that stores other Python objects
            raise CheckpointError(f"{path}: holds objects other than tensors ({_unpickling_detail(e)}); pass "
                                  "trust_pickle=True only if you trust the file") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_unpickling_detail(e)})") from None
    except Exception as e:  # torch.load raises many types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


def _unpickling_detail(e: BaseException) -> str:
    # torch wraps the real cause in a long multi-line advice text (which suggests weights_only=False): keep
    # only the cause, the line naming the refused global when there is one.
    lines = [line.strip() for line in str(e).split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
    cause = next((line for line in lines if "global" in line.lower()), lines[0] if lines else type(e).__name__)
    return f"unpickling failed: {cause}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def strip_module_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _clean(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {strip_module_prefix(k): v for k, v in state.items()}


def state_dict_of(obj, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """The one state dict inside a loaded checkpoint object (raw or under a known key), 'module.' removed."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return _clean(obj[key])
    if _is_state_dict(obj):
        return _clean(obj)
    if isinstance(obj, Mapping) and any(isinstance(obj.get(k), list | tuple) for k in STATE_DICT_LIST_KEYS):
        raise CheckpointError(f"{path}: holds several state dicts (under {STATE_DICT_LIST_KEYS[0]!r}), not one")
    raise CheckpointError(f"{path}: no state dict of tensors found (raw, or under "
                          f"{', '.join(repr(k) for k in STATE_DICT_KEYS)})")


def state_dicts_of(obj, path: str | Path = "checkpoint") -> list[dict[str, Tensor]]:
    """Every state dict of a loaded checkpoint: the list under 'state_dicts', else the one ``state_dict_of`` finds."""
    if isinstance(obj, Mapping):
        for key in STATE_DICT_LIST_KEYS:
            items = obj.get(key)
            if isinstance(items, list | tuple):
                if not items or not all(_is_state_dict(s) for s in items):
                    raise CheckpointError(f"{path}: {key!r} is not a list of state dicts of tensors")
                return [_clean(s) for s in items]
    return [state_dict_of(obj, path)]


def read_state_dict(path: str | Path, trust_pickle: bool = False,
                    safe_globals: Sequence[type] = ()) -> dict[str, Tensor]:
    """Tensors of a checkpoint file holding one state dict (any format above), without 'module.'."""
    return state_dict_of(read_checkpoint(path, trust_pickle, safe_globals), path)


def check_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], path: str | Path, what: str) -> None:
    """CheckpointError listing missing, unexpected and wrong-shape keys of ``state`` against ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})")
    if problems:
        raise CheckpointError(f"{path}: does not fit {what}: {'; '.join(problems)}")
