"""A notebook cell's global names, carried to the next cell of its workspace in a fresh container.

Sent with the job and run by the notebook runner inside the sandbox only: the server keeps a
state as opaque bytes and never unpickles one (a state is written by sandboxed code, so loading
it anywhere else would run that code there). Standard library and ``dill`` (baked into every
image profile): ``dill`` pickles what a notebook defines (functions, lambdas, classes, closures)
by value, and a function defined in the cell keeps the live namespace as its globals after a
restore, where ``cloudpickle`` would give each one a frozen copy of the globals it used.

Each name is pickled on its own, so one that cannot be pickled, or cannot be restored under
another image (a DataFrame where pandas is missing, code of another Python version), costs only
that name. An object another name already holds is pickled as a reference to that name, which
keeps ``isinstance(obj, Class)`` and shared lists true; classes go first, then functions, then
the rest, so references only ever point back. Modules are saved as the name to import again.
What cannot be carried (open files, sockets, generators, threads, locks, processes) is dropped
by type, with a way to recreate it: a pickle of such a thing would not be the same thing.
"""

import importlib
import io
import json
import os
import pickle
import sys

# In every image; imported before the program's folder is on sys.path, so never a dill.py of its own.
import dill  # type: ignore[import-untyped]

TYPE_CHECKING = False  # typing.TYPE_CHECKING, which mypy honours by name, without importing typing
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1
ALL_NAMES = "(every name)"  # how a state that cannot be read at all is reported
ModuleType = type(sys)
FunctionType = type(lambda: None)
# Objects a pickle would not make the same again, by the (module, name) of a class in their MRO.
_NOT_CARRIED = {
    ("_io", "_IOBase"): "an open file or stream: open it again in the next call (files in /work are kept)",
    ("io", "IOBase"): "an open file or stream: open it again in the next call (files in /work are kept)",
    ("socket", "socket"): "a socket: connect again in the next call",
    ("_socket", "socket"): "a socket: connect again in the next call",
    ("builtins", "generator"): "a generator, partway through: call the function that made it again",
    ("builtins", "coroutine"): "a coroutine: call the async function again",
    ("builtins", "async_generator"): "an async generator: call the function that made it again",
    ("threading", "Thread"): "a thread: nothing runs between calls; start it again",
    ("_thread", "lock"): "a lock: create a new one",
    ("_thread", "RLock"): "a lock: create a new one",
    ("threading", "Condition"): "a synchronisation object: create a new one",
    ("threading", "Event"): "a synchronisation object: create a new one",
    ("threading", "Semaphore"): "a synchronisation object: create a new one",
    ("subprocess", "Popen"): "a running process: nothing runs between calls; start it again",
    ("builtins", "frame"): "a stack frame: it ended with the call",
    ("builtins", "traceback"): "a traceback: it ended with the call",
}
_ATOMS = (int, float, complex, str, bytes, bool, type(None))  # never shared by reference


def restore(data: bytes, namespace: "dict[str, Any]") -> "tuple[list[list[str]], list[Any]]":
    """Put the saved names back into ``namespace``: those that could not be restored, each with
    why, and their saved entries (kept for a later run that can restore them)."""
    if not data:
        return [], []
    try:
        state = pickle.loads(data)  # in the sandbox only: a state is as trusted as the program
        entries = state["entries"] if state.get("format") == FORMAT else None
    except Exception as exc:
        return [[ALL_NAMES, f"the saved state cannot be read ({type(exc).__name__}); it is dropped"]], []
    if entries is None:
        why = f"the saved state has format {state.get('format')!r}, not {FORMAT}; it is dropped"
        return [[ALL_NAMES, why]], []
    saved_under = ".".join(map(str, state.get("python", ())))
    running = ".".join(map(str, sys.version_info[:3]))
    other_python = (
        f" (saved under Python {saved_under}; this image runs {running})" if saved_under != running else ""
    )
    restored: set[str] = set()
    failed: list[list[str]] = []
    kept: list[Any] = []

    class _Unpickler(dill.Unpickler):  # type: ignore[misc]
        def persistent_load(self, pid: str) -> object:
            if pid not in restored:
                raise LookupError(f"it refers to {pid!r}, which could not be restored")
            return namespace[pid]

    for entry in entries:
        name, kind, payload = entry
        try:
            if kind == "import":
                namespace[name] = importlib.import_module(payload)
            else:
                namespace[name] = _Unpickler(io.BytesIO(payload)).load()
        except Exception as exc:
            failed.append([name, _why_not_restored(exc) + other_python])
            kept.append(entry)
        else:
            restored.add(name)
    return failed, kept


def save(namespace: "dict[str, Any]", carried: "list[Any]", max_bytes: int) -> "tuple[dict[str, Any], bytes]":
    """The report (kept names, dropped ones with why, size) and the state for the next run.
    ``carried`` holds saved entries this run could not restore: kept unless the cell bound the
    name itself. Dunder names (``__builtins__``, ``__file__``) are the runner's, never saved."""
    entries: list[Any] = []
    dropped: list[list[str]] = []
    shared: dict[int, str] = {}
    total = 0
    names = [name for name in namespace if not (name.startswith("__") and name.endswith("__"))]
    for name in _in_order(names, namespace):
        value = namespace[name]
        entry, why = _entry(name, value, shared)
        if entry is not None and total + len(entry[2]) > max_bytes:
            size = len(entry[2])
            why = (
                f"too big to keep: {size // 1024} KiB, and the state may hold {max_bytes // 1024} KiB "
                "in all; save it as a file in /work (e.g. df.to_parquet) and load it in the next call"
            )
            entry = None
        if entry is None:
            dropped.append([name, why or "it cannot be kept"])
            continue
        total += len(entry[2])
        entries.append(entry)
        if not isinstance(value, _ATOMS):
            shared[id(value)] = name
    for entry in carried:
        if entry[0] not in namespace and total + len(entry[2]) <= max_bytes:
            total += len(entry[2])
            entries.append(entry)
    data = pickle.dumps({"format": FORMAT, "python": list(sys.version_info[:3]), "entries": entries}, 5)
    report = {"kept": [entry[0] for entry in entries], "dropped": dropped, "bytes": len(data)}
    return report, data


def write(fd: int, report: "dict[str, Any]", data: bytes) -> None:
    """The report as one JSON line, then the state: what the launcher sends to the host."""
    with os.fdopen(fd, "wb") as out:
        out.write(json.dumps(report).encode() + b"\n")
        out.write(data)


def _in_order(names: "list[str]", namespace: "dict[str, Any]") -> "list[str]":
    """Classes, then functions, then the rest: what others refer to is saved first."""

    def rank(name: str) -> int:
        value = namespace[name]
        return 0 if isinstance(value, type) else 1 if isinstance(value, FunctionType) else 2

    return sorted(names, key=rank)  # stable: the cell's own order within each kind


def _entry(name: str, value: object, shared: "dict[int, str]") -> "tuple[Any, str | None]":
    """The saved form of one name, or None and why it cannot be kept."""
    if isinstance(value, ModuleType):
        module_name = getattr(value, "__name__", None)
        if isinstance(module_name, str) and sys.modules.get(module_name) is value:
            return (name, "import", module_name), None
        return None, "a module made while the cell ran, not imported: make it again in the next call"
    for cls in type(value).__mro__:
        why = _NOT_CARRIED.get((getattr(cls, "__module__", ""), cls.__qualname__))
        if why:
            return None, why
    buffer = io.BytesIO()
    pickler = dill.Pickler(buffer, protocol=5)
    pickler.persistent_id = lambda obj: None if obj is value else shared.get(id(obj))
    try:
        pickler.dump(value)
    except Exception as exc:
        why = f"it cannot be pickled ({type(exc).__name__}: {_short(exc)}): recreate it in the next call"
        return None, why
    return (name, "value", buffer.getvalue()), None


def _why_not_restored(exc: Exception) -> str:
    """Why a name could not be restored; a missing module in the words the server looks for."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"needs the module {exc.name!r}, which this image does not have"
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
