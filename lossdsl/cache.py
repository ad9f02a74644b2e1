"""Disk cache of the pipeline's results, so a second process skips parsing tables, SymPy work and codegen.

Entries are pickles keyed by a SHA-256 of what determines them: the caller's parts (the loss text and
declarations) plus `fingerprint()`, which covers the lossdsl version, the generator's own source files
(`lossdsl/*.py` but the post-pipeline modules of NOT_GENERATOR, the grammar) and the stdlib texts a loss
may inline. Editing any of them changes
every key, so a stale entry is never read; nothing is ever invalidated in place.

The directory is `$LOSSDSL_CACHE_DIR`, else `$XDG_CACHE_HOME/lossdsl`, else `~/.cache/lossdsl`;
`LOSSDSL_CACHE=0` turns the cache off. Writes are atomic (temp file + rename), so concurrent processes
at worst both compute an entry; an unreadable entry counts as a miss.

A LossIR is stored in two parts: its plain fields (names, kinds, axes, parameters) and a nested pickle of
its SymPy-valued fields, decoded on first access (`_LazyIR`). Unpickling SymPy re-runs its constructors
(Max/Min zero-finding, relational evaluation, assumptions), which costs more than everything else on a hit;
building a module needs only the plain fields and the generated source.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import io
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import passes
from .ir import LossIR

T = TypeVar("T")
PACKAGE_DIR = Path(__file__).parent
ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    explicit = os.environ.get("LOSSDSL_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lossdsl"


def enabled() -> bool:
    return os.environ.get("LOSSDSL_CACHE", "1").lower() not in ("0", "false", "off", "no")


# Modules that run after the pipeline (modes, wrappers, tools) and cannot change a cached parse or Loss;
# every other module counts as the generator's own source, so a new pass module is covered by default.
NOT_GENERATOR = frozenset({"cache.py", "compiled.py", "fused.py", "gradient.py", "functional.py", "nn.py",
                           "stdlib.py", "verify.py", "latex_in.py", "latex_emit.py", "cli.py"})


@functools.cache
def fingerprint() -> str:
    """Hash of everything besides the caller's key parts that can change a pipeline result."""
    from . import __version__

    h = hashlib.sha256(__version__.encode())
    modules = [p for p in sorted(PACKAGE_DIR.glob("*.py")) if p.name not in NOT_GENERATOR]
    files = [*modules, *sorted((ROOT / "grammar").glob("*.lark")), *sorted((ROOT / "stdlib").glob("*.loss"))]
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def key(*parts: str) -> str:
    h = hashlib.sha256(fingerprint().encode())
    for part in (_pipeline(), *parts):
        h.update(b"\0" + part.encode())
    return h.hexdigest()


def _pipeline() -> str:
    """The registered passes, read at each key: a pass a user registers at run time (passes.register) changes
    every lowering after it, which the package's files (fingerprint) do not show. A pass from outside the
    package is identified by its source, or by its object (never reused across processes) without one."""
    parts = []
    for name, fn in passes.PIPELINE:
        module = getattr(fn, "__module__", "") or ""
        parts.append(f"{name}={module}.{getattr(fn, '__qualname__', '')}")
        if not module.startswith("lossdsl."):
            try:
                parts.append(hashlib.sha256(inspect.getsource(fn).encode()).hexdigest())
            except (OSError, TypeError):
                parts.append(f"object {id(fn)} of process {os.getpid()}")
    return "|".join(parts)


def entry_path(k: str, kind: str = "ir") -> Path:
    return cache_dir() / kind / k[:2] / f"{k}.pkl"


def load(k: str, kind: str = "ir") -> object | None:
    """The cached value, or None on a miss (absent, unreadable or written by an incompatible version)."""
    path = entry_path(k, kind)
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
        return None


class _LazyIR(LossIR):
    """A LossIR read from the cache: its SymPy-valued fields are unpickled on first access, after which
    it is a plain LossIR (its class is switched back, so equality and replace() behave as usual)."""

    def _decode(self) -> None:
        self.__dict__.update(pickle.loads(self.__dict__.pop("_lazy")))
        self.__class__ = LossIR

    def __getattribute__(self, name: str):
        """A field not yet decoded decodes them all first. Not __getattr__: a field with a default (reduce_weight,
        doc) is a class attribute of LossIR, so reading it would answer the default, not the cached value."""
        d = object.__getattribute__(self, "__dict__")
        if "_lazy" in d and name not in d and name in _FIELDS:
            object.__getattribute__(self, "_decode")()
        return object.__getattribute__(self, name)

    def __eq__(self, other: object) -> bool:
        self._decode()
        return self == other

    __hash__ = None  # type: ignore[assignment]  # as LossIR's (a mutable dataclass)


_FIELDS = frozenset(f.name for f in dataclasses.fields(LossIR))


def _restore_ir(plain: dict, blob: bytes) -> _LazyIR:
    obj = object.__new__(_LazyIR)
    obj.__dict__.update(plain, _lazy=blob)
    return obj


def _plain(v: object) -> bool:
    """Whether v unpickles without constructing SymPy objects."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return True
    if isinstance(v, (tuple, list)):
        return all(map(_plain, v))
    if isinstance(v, dict):
        return all(_plain(x) for kv in v.items() for x in kv)
    return dataclasses.is_dataclass(v) and not isinstance(v, type) and all(
        _plain(getattr(v, f.name)) for f in dataclasses.fields(v))


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if not isinstance(obj, LossIR):
            return NotImplemented
        values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        heavy = {k: v for k, v in values.items() if not _plain(v)}
        plain = {k: v for k, v in values.items() if k not in heavy}
        return _restore_ir, (plain, pickle.dumps(heavy, protocol=pickle.HIGHEST_PROTOCOL))


def dumps(value: object) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buf.getvalue()


def store(k: str, value: object, kind: str = "ir") -> bool:
    """Writes atomically; a value that cannot be pickled or a read-only disk just means no caching."""
    path = entry_path(k, kind)
    try:
        data = dumps(value)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return False
    return True


def memo(parts: tuple[str, ...], build: Callable[[], T], kind: str = "ir") -> T:
    """build() once per distinct `parts` (and fingerprint) across processes."""
    if not enabled():
        return build()
    k = key(*parts)
    hit = load(k, kind)
    if hit is not None:
        return hit  # type: ignore[return-value]
    value = build()
    store(k, value, kind)
    return value


def lark_path(grammar: str) -> str | None:
    """Where Lark keeps its analysed grammar tables (they cost ~0.2 s to rebuild); None when off."""
    if not enabled():
        return None
    import lark

    digest = hashlib.sha256(f"{lark.__version__}\0{grammar}".encode()).hexdigest()[:32]
    path = cache_dir() / "lark" / f"{digest}.lark"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(path)


def clear() -> int:
    """Removes every entry (not the directory's other contents); returns how many were removed."""
    removed = 0
    for kind in ("ir", "lark", "auto"):
        for path in (cache_dir() / kind).rglob("*"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed
