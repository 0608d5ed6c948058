"""Shared plumbing: the error types, the CLI conventions and atomic writes.

Every CLI is ``main(argv=None) -> int`` wrapped with :func:`cli_entry`: bad input (argparse
errors, :class:`MarginTheoryError`) prints one line ``<prog>: error: <message>`` on stderr and
exits 2; ``--json`` prints one JSON document (:func:`print_json`); files are written atomically
(:func:`atomic_path`: a temporary file beside the target, then ``os.replace``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import numbers
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

try:                                    # the TOML reader of experiment definitions and spec files
    import tomllib
except ModuleNotFoundError:             # pragma: no cover - Python 3.10: the same API as tomli
    import tomli as tomllib


class MarginTheoryError(Exception):
    """Base class of every error the toolkit raises on bad input or bad files (one line; CLIs exit 2)."""


class DataError(MarginTheoryError):
    """A dataset is unknown, missing, truncated, corrupt or unsafe."""


class CheckpointError(MarginTheoryError):
    """A checkpoint is missing, truncated, foreign or belongs to another model."""


class ConfigError(MarginTheoryError):
    """A model name, option or combination of options is invalid."""


class NonFiniteLossError(MarginTheoryError):
    """Training produced a NaN or infinite loss."""


# --- CLI conventions ---
class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message`` and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def explicit_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The ``dest`` names given on the command line ``argv`` (not left at their defaults;
    abbreviations included): for "a flag that does not apply is an error or a note"."""
    import copy
    probe = copy.deepcopy(parser)
    for a in probe._actions:
        if a.dest != "help":
            a.default, a.required = argparse.SUPPRESS, False
    return set(vars(probe.parse_args(argv)))


def fmt_number(x: Any, spec: str = ".4g") -> str:
    """``format(x, spec)``, or ``n/a`` for None, NaN and anything not a number (JSON writes NaN as null)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def is_int(v: Any) -> bool:
    """An integer that is not a bool (JSON/TOML ``true`` is not 1 here); numpy integers count."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite real number that is not a bool (an integer too large for a float is not)."""
    try:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:
        return False


def int_at_least(lo: int):
    """argparse ``type=``: an integer >= ``lo`` (one-line error otherwise)."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}: {s!r}")
        return v
    return parse


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer reads finished work."""
    if getattr(device, "type", None) == "cuda":
        import torch
        torch.cuda.synchronize(device)


def float_in(lo: float = -math.inf, hi: float | None = None, lo_open: bool = False, hi_open: bool = True):
    """argparse ``type=``: a finite float in ``[lo, hi)`` (``lo_open``: ``(lo, ...``;
    ``hi_open=False``: ``..., hi]``); ``float_in()`` is any finite float."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if not math.isfinite(v) or v < lo or (lo_open and v == lo) or \
                (hi is not None and (v > hi or (hi_open and v == hi))):
            rng = (f"{'>' if lo_open else '>='} {lo:g}" if lo > -math.inf else "") + \
                (f" and {'<' if hi_open else '<='} {hi:g}" if hi is not None else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {rng.strip()}: {s!r}".replace("  ", " "))
        return v
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


# --- Shared validators of sizes and output paths (issue 14: refuse up front) ---
#: the package's own folder; no CLI writes its outputs there
PACKAGE_DIR = Path(__file__).resolve().parent


def available_memory_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo, else the physical memory; a cgroup limit lowers it."""
    avail = None
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    if avail is None:
        avail = 1 << 62
        with contextlib.suppress(OSError, ValueError, AttributeError):   # pragma: no cover - non-POSIX
            avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError):
            raw = Path(limit_file).read_text().strip()
            if raw.isdigit():
                avail = min(avail, int(raw))
    return int(avail)


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(nbytes: float, what: str) -> None:
    """:class:`ConfigError` when ``nbytes`` exceed the available memory (before allocating)."""
    avail = available_memory_bytes()
    if not math.isfinite(nbytes) or nbytes > avail:
        raise ConfigError(f"{what} needs about {_gib(nbytes)} of memory, only {_gib(avail)} are available")


def check_output_path(path: str | os.PathLike, *, kind: str = "file", flag: str = "--out") -> Path:
    """Validate an output ``kind`` ``"file"`` or ``"dir"`` before any work; :class:`ConfigError` for a
    folder where a file goes (or the reverse), a place below a file, one that cannot be written (probed
    with a temporary file) and the package's own folder. Returns the expanded path, creating nothing."""
    p = Path(path).expanduser()
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None
    if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
        raise ConfigError(f"{flag} {path}: refusing to write into the package source ({PACKAGE_DIR}); "
                          "choose a folder of your own")
    if kind == "file" and p.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name (e.g. {Path(path) / 'figure.png'})")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path} exists and is not a folder")
    if kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{flag} {path}: the file is not writable")
    parent = resolved if kind == "dir" else resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
    try:                      # probe: permissions, read-only mounts, also for root
        fd, probe = tempfile.mkstemp(prefix=".margin_theory-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {parent} is not writable ({exc.strerror or exc})") from None
    return p


def cli_entry(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate ``main(argv) -> int`` so toolkit errors become one line + exit 2."""

    def deco(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return int(fn(argv) or 0)
            except MarginTheoryError as exc:
                sys.stderr.write(f"{prog}: error: {one_line(exc, MAX_MESSAGE_CHARS)}\n")
                return 2
            except KeyboardInterrupt:
                sys.stderr.write(f"{prog}: interrupted\n")
                return 130
            except OSError as exc:      # disk full, permission denied ...: one line, exit 1
                where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
                sys.stderr.write(f"{prog}: error: {exc.strerror or exc}{where}\n")
                return 1
        return wrapper
    return deco


#: the longest error line a CLI prints (a hostile file must not flood the terminal)
MAX_MESSAGE_CHARS = 2000


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """An exception's message on one line (whitespace collapsed), ``clip``-ped to ``limit``."""
    msg = " ".join(str(exc).split())
    return msg if limit is None else clip(msg, limit)


def clip(text: str, limit: int = 200) -> str:
    """``text`` (from an untrusted source) cut to at most ``limit`` characters, marked ``...[N more chars]``."""
    text = str(text)
    if len(text) <= limit:
        return text
    tail = f"...[{len(text) - limit} more chars]"
    return text[:max(0, limit - len(tail))] + tail


def short_repr(obj: Any, limit: int = 120) -> str:
    """A ``repr`` bounded in length and in work (``reprlib``: 3 levels, 6 items per container), so a
    huge or self-sharing object from a hostile file cannot stall or flood an error message."""
    import reprlib
    r = reprlib.Repr()
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset = 3, 6, 6, 4, 6
    r.maxstring = r.maxother = r.maxlong = max(12, limit)
    try:
        text = r.repr(obj)
    except Exception:  # noqa: BLE001 - a repr that fails is itself reported briefly
        text = f"<{type(obj).__name__}>"
    return one_line(text, limit)


def to_jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays, paths and non-finite floats as JSON values: NaN becomes
    ``None``, +-inf the strings ``"inf"`` / ``"-inf"``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach"):          # a torch tensor
        obj = obj.detach().cpu()
    if hasattr(obj, "tolist"):          # tensors, numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


def dumps_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def print_json(obj: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(dumps_json(obj) + "\n")
    sys.stdout.flush()


# --- Atomic writes ---
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, renamed onto it on success; on an exception it is
    removed and ``path`` untouched (no reader sees a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 130) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def use_agg_backend() -> None:
    """Select matplotlib's non-interactive backend (no display on servers/CI)."""
    import matplotlib
    matplotlib.use("Agg", force=True)


# --- Progress bars ---
def progress(iterable=None, *, total=None, desc=None, quiet: bool = False, **kw):
    """A tqdm progress bar on stderr, disabled when ``quiet`` or stderr is not a terminal."""
    from tqdm.auto import tqdm
    disable = quiet or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False,
                dynamic_ncols=True, file=sys.stderr, **kw)


# --- Machine checks of the proofs (proofs/check_*.py) ---
def run_checks(checks) -> list[tuple[str, bool]]:
    """Run ``[(name, fn)]`` checks; returns ``[(name, passed)]`` (an exception counts as a failure)."""
    out = []
    for name, fn in checks:
        try:
            ok = bool(fn())
        except Exception:  # a crashing check is a failing check
            ok = False
        out.append((name, ok))
    return out


def checks_main(checks) -> int:
    """Print PASS/FAIL per check and a total; exit status 1 if any failed."""
    results = run_checks(checks)
    for name, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    failed = sum(not ok for _, ok in results)
    print(f"{len(results) - failed}/{len(results)} checks passed")
    return 1 if failed else 0
