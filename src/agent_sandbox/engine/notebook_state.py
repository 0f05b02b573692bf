"""A notebook cell's global names, carried to the next cell of its workspace in a fresh container.

Sent with the job and run by the notebook runner inside the sandbox only: the server keeps a
state as opaque bytes and never unpickles one (a state is written by sandboxed code, so loading
it anywhere else would run that code there). Standard library and ``dill`` (baked into every
image profile): ``dill`` pickles what a notebook defines (functions, lambdas, classes, closures)
by value, and a function defined in the cell keeps the live namespace as its globals after a
restore, where ``cloudpickle`` would give each one a frozen copy of the globals it used.

Modules are saved as the name to import again; the classes and functions the cell defined
(its definitions) one by one, first; then the rest. Names that share an object (a list held by a
dict and by an instance) are pickled together, so they still share it after a restore; every
other name on its own, so one that cannot be pickled, or cannot be restored under another image
(a DataFrame where pandas is missing, code of another Python version), costs only itself. A
module or a definition another value holds is pickled as a reference to its name, which keeps
``isinstance(obj, Class)`` true. Plain data goes through the standard library's C pickler (20
times dill's speed); what only dill can pickle through dill. What cannot be carried (open files,
sockets, generators, threads, locks, processes) is dropped by type, with a way to recreate it: a
pickle of such a thing would not be the same thing.

What the runner sends the launcher: the state (one pickle of the entries), a newline, then the
report as one line of JSON, last: a cell that dies while saving leaves no report, and no state.
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
_ATOMS = (int, float, complex, str, bytes, bool, type(None))
MAX_REPORT_BYTES = 60_000  # under the launcher's REPORT_BYTES: lists are cut to fit
MAX_NAME_CHARS, MAX_WHY_CHARS = 100, 300
# Objects two names may hold alike without having to stay one object after a restore.
_NEVER_SHARED = (*_ATOMS, tuple, frozenset, type, ModuleType, FunctionType, type(len))


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
    other_python = ""
    if saved_under != running:
        other_python = f" (saved under Python {saved_under}; this image runs {running})"
    # Bytecode is a minor version's own: a function dill saved under 3.11 crashes 3.13 (SIGSEGV)
    # when called, so what dill saved is loaded under that minor version only. An entry carried
    # past a run of another version names its version in its kind ("dill:3.11").
    saved_minor = ".".join(map(str, state.get("python", ())[:2]))
    running_minor = ".".join(map(str, sys.version_info[:2]))
    restored: set[str] = set()
    failed: list[list[str]] = []
    kept: list[Any] = []

    def referred(pid: str) -> object:
        if pid not in restored:
            raise LookupError(f"it refers to {pid!r}, which could not be restored")
        return namespace[pid]

    for entry in entries:
        names, kind, payload = entry
        kind, _, code_minor = kind.partition(":")
        code_minor = code_minor or saved_minor
        try:
            if kind == "dill" and code_minor != running_minor:
                entry = (names, f"dill:{code_minor}", payload)
                raise _OtherBytecode(f"its code is Python {code_minor}'s, which this Python cannot run")
            if kind == "import":
                values = {names[0]: importlib.import_module(payload)}
            else:
                unpickler: Any = (dill.Unpickler if kind == "dill" else pickle.Unpickler)(io.BytesIO(payload))
                unpickler.persistent_load = referred
                loaded = unpickler.load()
                values = loaded if len(names) > 1 else {names[0]: loaded}  # a group: a dict of them
        except Exception as exc:
            why = _why_not_restored(exc) + other_python
            failed += [[name, why + _together(name, names)] for name in names]
            kept.append(entry)
        else:
            namespace.update(values)
            restored.update(names)
    return failed, kept


def save(
    namespace: "dict[str, Any]", carried: "list[Any]", max_bytes: int
) -> "tuple[dict[str, Any], list[Any]]":
    """The report (kept names, dropped ones with why) and the entries to write for the next run.
    ``carried`` holds saved entries this run could not restore: kept unless the cell bound one of
    their names itself. Dunder names (``__builtins__``, ``__file__``) are the runner's, never saved."""
    names = [name for name in namespace if not (name[:2] == name[-2:] == "__")]
    dropped: list[list[str]] = []
    units: list[Any] = []  # [names, kind, payload, names referred to]
    by_name: dict[int, str] = {}  # a module or a definition, by id: what values refer to by name
    for name in names:
        value = namespace[name]
        if isinstance(value, ModuleType):
            module_name = getattr(value, "__name__", None)
            if isinstance(module_name, str) and sys.modules.get(module_name) is value:
                units.append([(name,), "import", module_name, set()])
                by_name[id(value)] = name
            else:
                dropped.append([name, "a module made while the cell ran, not imported: make it again"])
    definitions = sorted(
        (name for name in names if isinstance(namespace[name], (type, FunctionType))),
        key=lambda name: not isinstance(namespace[name], type),  # classes first: functions use them
    )
    for name in definitions:
        unit, why = _unit(name, namespace[name], by_name, max_bytes)
        if unit is None:
            dropped.append([name, why])
            continue
        units.append(unit[:4])
        by_name[id(namespace[name])] = name
    data: list[Any] = []
    for name in names:
        value = namespace[name]
        if isinstance(value, (ModuleType, type, FunctionType)):
            continue  # saved above, or dropped saying why
        unit, why = _unit(name, value, by_name, max_bytes)
        if unit is None:
            dropped.append([name, why])
        else:
            data.append(unit)
    units += _joined(data, namespace, by_name, max_bytes, dropped)
    entries: list[Any] = []
    gone: set[str] = set()
    total = _STATE_OVERHEAD
    for unit_names, kind, payload, refs in units:
        size = _size(unit_names, payload)
        lost = sorted(refs & gone)
        if lost:
            why = f"it refers to {lost[0]!r}, which was dropped"
        elif total + size > max_bytes:
            why = _too_big(size, max_bytes)
        else:
            total += size
            entries.append((unit_names, kind, payload))
            continue
        gone.update(unit_names)
        dropped += [[name, why + _together(name, unit_names)] for name in unit_names]
    for entry in carried:
        size = _size(entry[0], entry[2])
        if not any(name in namespace for name in entry[0]) and total + size <= max_bytes:
            total += size
            entries.append(entry)
    kept = [name for entry in entries for name in entry[0]]
    return {"kept": kept, "kept_count": len(kept), "dropped": dropped, "dropped_count": len(dropped)}, entries


def write(fd: int, report: "dict[str, Any]", entries: "list[Any]") -> None:
    """The state, streamed (no second copy of it in memory), then the report as the last line."""
    with os.fdopen(fd, "wb") as out:
        counted = _Counted(out)
        pickle.dump({"format": FORMAT, "python": list(sys.version_info[:3]), "entries": entries}, counted, 5)
        report["bytes"] = counted.count
        out.write(b"\n" + _report_line(report))


def _report_line(report: "dict[str, Any]") -> bytes:
    """The report as JSON within MAX_REPORT_BYTES: names and reasons cut short, then the lists
    halved (longest first) until it fits; the counts stay whole."""
    for key in ("kept", "dropped", "not_restored"):
        report[key] = [
            name[:MAX_NAME_CHARS]
            if isinstance(name, str)
            else [name[0][:MAX_NAME_CHARS], name[1][:MAX_WHY_CHARS]]
            for name in report.get(key, [])
        ]
    line = json.dumps(report).encode()
    while len(line) > MAX_REPORT_BYTES:
        longest = max(("kept", "dropped", "not_restored"), key=lambda key: len(report[key]))
        report[longest] = report[longest][: len(report[longest]) // 2]
        line = json.dumps(report).encode()
    return line


class _Counted:
    """A file that counts what is written through it."""

    def __init__(self, out: "Any") -> None:
        self.out, self.count = out, 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.out.write(data)  # type: ignore[no-any-return]


class _TooBig(Exception):
    """A pickle grew past the state's cap: stopped there, not built whole first."""


class _Capped(io.BytesIO):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: "Any") -> int:
        if self.tell() + len(data) > self.limit:
            raise _TooBig
        return super().write(data)


# The outer pickle's bytes besides the payloads, at most: its header, and each entry's framing
# (a tuple, its kind, the payload's opcode and length) and names (each with its own framing).
_STATE_OVERHEAD, _ENTRY_OVERHEAD, _NAME_OVERHEAD = 256, 40, 16


def _size(names: "tuple[str, ...]", payload: "bytes | str") -> int:
    named = sum(len(name.encode("utf-8", "surrogatepass")) + _NAME_OVERHEAD for name in names)
    return len(payload) + _ENTRY_OVERHEAD + named


def _too_big(size: "int | None", max_bytes: int) -> str:
    """Why a name is dropped for size (None: its pickle was stopped at the cap)."""
    how_big = f"{size // 1024} KiB" if size is not None else f"over {max_bytes // 1024} KiB"
    return (
        f"too big to keep: {how_big}, and the state may hold {max_bytes // 1024} KiB in all; "
        "save it as a file in /work (e.g. df.to_parquet) and load it in the next call"
    )


def _unit(name: str, value: object, by_name: "dict[int, str]", max_bytes: int) -> "tuple[Any, str]":
    """One name's unit (names, kind, payload, names referred to, objects its pickle holds that
    another name could share), or None and why it cannot be kept."""
    for cls in type(value).__mro__:
        why = _NOT_CARRIED.get((getattr(cls, "__module__", ""), cls.__qualname__))
        if why:
            return None, why
    try:
        kind, payload, seen, refs = _pickled(value, by_name, max_bytes)
    except _TooBig:
        return None, _too_big(None, max_bytes)
    except Exception as exc:
        return (
            None,
            f"it cannot be pickled ({type(exc).__name__}: {_short(exc)}): recreate it in the next call",
        )
    return [(name,), kind, payload, refs, seen], ""


def _pickled(
    root: object, by_name: "dict[int, str]", max_bytes: int
) -> "tuple[str, bytes, dict[int, object], set[str]]":
    """``root`` pickled by the standard library's C pickler or, for what only dill can pickle (a
    lambda, a closure, a function or class the cell defined), by dill; a module or definition it
    holds as a reference to its name. Also the objects the pickle holds that two names could
    share (kept alive, so that no id is reused meanwhile)."""
    refs: set[str] = set()

    def persistent_id(obj: object) -> "str | None":
        name = None if obj is root else by_name.get(id(obj))
        if name is not None:
            refs.add(name)
        return name

    for kind, pickler_class in (("pickle", _StandardPickler), ("dill", dill.Pickler)):
        buffer = _Capped(max_bytes)
        pickler: Any = pickler_class(buffer, protocol=5)
        pickler.persistent_id = persistent_id
        refs.clear()
        try:
            pickler.dump(root)
        except _TooBig:
            raise
        except Exception:
            if kind == "dill":
                raise
            continue
        memo = pickler.memo.copy() if kind == "pickle" else pickler.memo
        seen = {key: obj for key, (_, obj) in memo.items() if not isinstance(obj, _NEVER_SHARED)}
        return kind, buffer.getvalue(), seen, refs
    raise AssertionError("unreachable: dill either pickles or raises")


class _StandardPickler(pickle.Pickler):
    """The C pickler, refusing what it would save as a name in ``__main__``: a function or class
    the cell defined is restored from the state itself, so it must be pickled by value (dill)."""

    def reducer_override(self, obj: object) -> "Any":
        if isinstance(obj, (type, FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            raise pickle.PicklingError("defined in the cell: by value")
        return NotImplemented


def _joined(
    data: "list[Any]",
    namespace: "dict[str, Any]",
    by_name: "dict[int, str]",
    max_bytes: int,
    dropped: "list[Any]",
) -> "list[Any]":
    """The data names' units in order: names whose values share an object pickled together (one
    memo), so that they still share it after a restore; every other name on its own."""
    modules = {id(vars(module)) for module in list(sys.modules.values()) if module is not None}
    first: dict[int, int] = {}  # object id -> the first unit that holds it
    parent = list(range(len(data)))

    def find(index: int) -> int:
        while parent[index] != index:
            index = parent[index]
        return index

    for index, unit in enumerate(data):
        for key in unit[4]:
            if key in modules or key == id(namespace):
                continue  # a module's globals: not the value's own
            if key in first:
                parent[find(index)] = find(first[key])
            else:
                first[key] = index
    groups: dict[int, list[int]] = {}
    for index in range(len(data)):
        groups.setdefault(find(index), []).append(index)
    units = []
    for members in sorted(groups.values()):
        if len(members) == 1:
            units.append(data[members[0]][:4])
            continue
        names = tuple(data[index][0][0] for index in members)
        try:
            kind, payload, _, refs = _pickled({name: namespace[name] for name in names}, by_name, max_bytes)
        except _TooBig:
            dropped += [[name, _too_big(None, max_bytes) + _together(name, names)] for name in names]
            continue
        units.append([names, kind, payload, refs])
    return units


def _together(name: str, names: "tuple[str, ...]") -> str:
    others = [other for other in names if other != name]
    return f" (saved together with {', '.join(others)}, which share objects with it)" if others else ""


class _OtherBytecode(Exception):
    """A saved definition holds bytecode of another Python minor version."""


def _why_not_restored(exc: Exception) -> str:
    """Why a name could not be restored; a missing module in the words the server looks for."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"needs the module {exc.name!r}, which this image does not have"
    if isinstance(exc, _OtherBytecode):
        return str(exc)
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
