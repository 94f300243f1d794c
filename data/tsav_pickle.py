"""TSAV's alignment pickles, read without letting them run code.

A pickle may name any importable function, and unpickling calls it: ``pickle.load`` of a crafted
``<track>.pkl`` runs ``os.system``. TSAV's files only hold a dict of lists of numpy arrays (or None),
so the unpickler here resolves exactly the globals that such data needs and refuses every other one
with one line naming the file. The globals numpy arrays, dtypes and scalars pickle as:

- ``numpy.ndarray``, ``numpy.dtype`` (every numpy version and pickle protocol);
- ``numpy.core.multiarray._reconstruct`` / ``.scalar`` (numpy 1.x), ``numpy._core.multiarray.*`` (numpy 2.x);
- ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``: arrays at pickle protocol 5;
- ``_codecs.encode``: how protocols 0-2 store an array's raw bytes (as a latin-1 string); only the
  latin-1 codec is admitted.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np


def _numpy_core(module: str):
    """``numpy._core.<module>`` (numpy 2; also a stub in numpy 1.26), else ``numpy.core.<module>`` (older)."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as old protocols use it for array bytes: latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} (only latin-1 is admitted)")
    return codecs.encode(text, "latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], object]:
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x names of the same functions
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class UnsafePickleError(ValueError):
    """A pickle that names a global outside TSAV's format (it could run code): refused, never called."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings, numbers, None and numpy arrays; nothing else."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None


def load_data_pickle(path: str | Path):
    """Unpickle a file that may hold only plain data and numpy arrays; one-line errors naming ``path``."""
    try:
        with open(path, "rb") as fh:
            return _DataOnlyUnpickler(fh).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: refused to unpickle: it calls {e}, which TSAV's alignment format does "
                                "not need (only dicts, lists, numbers and numpy arrays); it could run code, so "
                                "nothing from it was used") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle: many exception types
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _entries(path: str | Path, value: object, key: str, size: int) -> list[np.ndarray | None]:
    """A per-frame list of ``key``: each entry None or ``size`` numbers, as float64 arrays."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"{path}: '{key}' is a {type(value).__name__}, expected a list with one entry per frame")
    out: list[np.ndarray | None] = []
    for i, entry in enumerate(value):
        if entry is None:
            out.append(None)
            continue
        try:
            a = np.asarray(entry, np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.size != size:
            raise ValueError(f"{path}: '{key}' entry {i} is not None or {size} numbers")
        out.append(a)
    return out


def load_tsav_alignment(path: str | Path) -> tuple[list, list]:
    """TSAV's pickle: {'frame': [2x3 frame→crop affine or None per frame], 'mask': [68x2 crop landmarks or None]}.

    Returns (affines, landmarks) as per-frame lists of float64 arrays or None.
    """
    d = load_data_pickle(path)
    if not isinstance(d, dict) or "frame" not in d or "mask" not in d:
        raise ValueError(f"{path}: not a TSAV alignment pickle (expected a dict with keys 'frame' and 'mask')")
    return _entries(path, d["frame"], "frame", 6), _entries(path, d["mask"], "mask", 68 * 2)
