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
    other_python = (
        f" (saved under Python {saved_under}; this image runs {running})" if saved_under != running else ""
    )
    restored: set[str] = set()
    failed: list[list[str]] = []
    kept: list[Any] = []

    def referred(pid: str) -> object:
        if pid not in restored:
            raise LookupError(f"it refers to {pid!r}, which could not be restored")
        return namespace[pid]

    for entry in entries:
        names, kind, payload = entry
        try:
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


def save(namespace: "dict[str, Any]", carried: "list[Any]", max_bytes: int) -> "tuple[dict[str, Any], bytes]":
    """The report (kept names, dropped ones with why, size) and the state for the next run.
    ``carried`` holds saved entries this run could not restore: kept unless the cell bound one of
    their names itself. Dunder names (``__builtins__``, ``__file__``) are the runner's, never saved."""
    names = _in_order([name for name in namespace if not (name[:2] == name[-2:] == "__")], namespace)
    dropped: list[list[str]] = []
    pickled: list[Any] = []  # [names, kind, payload, objects seen, names referred to]
    earlier: dict[int, str] = {}  # a value of a name saved before, by id: referred to by name
    for name in names:
        value = namespace[name]
        unit, why = _unit(name, value, earlier)
        if unit is None:
            dropped.append([name, why or "it cannot be kept"])
            continue
        pickled.append(unit)
        if not isinstance(value, _ATOMS):
            earlier[id(value)] = name
    entries: list[Any] = []
    gone: set[str] = set()
    total = 0
    for unit_names, kind, payload, refs in _joined(pickled, namespace):
        lost = sorted(refs & gone)
        if lost:
            why = f"it refers to {lost[0]!r}, which was dropped"
        elif total + len(payload) > max_bytes:
            why = (
                f"too big to keep: {len(payload) // 1024} KiB, and the state may hold {max_bytes // 1024} "
                "KiB in all; save it as a file in /work (e.g. df.to_parquet) and load it in the next call"
            )
        else:
            total += len(payload)
            entries.append((unit_names, kind, payload))
            continue
        gone.update(unit_names)
        dropped += [[name, why + _together(name, unit_names)] for name in unit_names]
    for entry in carried:
        if not any(name in namespace for name in entry[0]) and total + len(entry[2]) <= max_bytes:
            total += len(entry[2])
            entries.append(entry)
    data = pickle.dumps({"format": FORMAT, "python": list(sys.version_info[:3]), "entries": entries}, 5)
    report = {
        "kept": [name for entry in entries for name in entry[0]],
        "dropped": dropped,
        "bytes": len(data),
    }
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


def _unit(name: str, value: object, earlier: "dict[int, str]") -> "tuple[Any, str | None]":
    """One name's saved form, with the objects its pickle holds and the names it refers to; or
    None and why it cannot be kept."""
    if isinstance(value, ModuleType):
        module_name = getattr(value, "__name__", None)
        if isinstance(module_name, str) and sys.modules.get(module_name) is value:
            return [(name,), "import", module_name, {}, set()], None
        return None, "a module made while the cell ran, not imported: make it again in the next call"
    for cls in type(value).__mro__:
        why = _NOT_CARRIED.get((getattr(cls, "__module__", ""), cls.__qualname__))
        if why:
            return None, why
    try:
        kind, payload, seen, refs = _pickled(value, earlier)
    except Exception as exc:
        why = f"it cannot be pickled ({type(exc).__name__}: {_short(exc)}): recreate it in the next call"
        return None, why
    return [(name,), kind, payload, seen, refs], None


def _pickled(root: object, earlier: "dict[int, str]") -> "tuple[str, bytes, dict[int, object], set[str]]":
    """``root`` pickled by the standard library's C pickler (20 times dill's speed on plain data)
    or, for what only dill can pickle (a lambda, a closure, a function or class the cell defined
    that no name holds), by dill; an object another name holds by that name's reference. Also
    the objects the pickle holds that two names could share (kept alive, so that no id is reused
    meanwhile)."""
    refs: set[str] = set()

    def persistent_id(obj: object) -> "str | None":
        name = None if obj is root else earlier.get(id(obj))
        if name is not None:
            refs.add(name)
        return name

    for kind, pickler_class in (("pickle", _StandardPickler), ("dill", dill.Pickler)):
        buffer = io.BytesIO()
        pickler: Any = pickler_class(buffer, protocol=5)
        pickler.persistent_id = persistent_id
        refs.clear()
        try:
            pickler.dump(root)
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


def _joined(pickled: "list[Any]", namespace: "dict[str, Any]") -> "list[Any]":
    """The saved units in order: names whose values share an object (a list held by a dict of
    one and by an instance of another) pickled together, so that they still share it after a
    restore; every other name on its own. Each: names, kind, payload, names referred to."""
    modules = {id(vars(module)) for module in list(sys.modules.values()) if module is not None}
    first: dict[int, int] = {}  # object id -> the first unit that holds it
    parent = list(range(len(pickled)))

    def find(index: int) -> int:
        while parent[index] != index:
            index = parent[index]
        return index

    for index, unit in enumerate(pickled):
        for key in unit[3]:
            if key in modules or key == id(namespace):
                continue  # a module's globals, e.g. the functions' __main__: not the value's own
            if key in first:
                parent[find(index)] = find(first[key])
            else:
                first[key] = index
    groups: dict[int, list[int]] = {}
    for index in range(len(pickled)):
        groups.setdefault(find(index), []).append(index)
    units = []
    for members in sorted(groups.values()):
        if len(members) == 1:
            names, kind, payload, _, refs = pickled[members[0]]
            units.append((names, kind, payload, refs))
            continue
        names = tuple(pickled[index][0][0] for index in members)
        before = {id(namespace[unit[0][0]]): unit[0][0] for unit in pickled[: members[0]]}
        kind, payload, _, refs = _pickled({name: namespace[name] for name in names}, before)
        units.append((names, kind, payload, refs))
    return units


def _together(name: str, names: "tuple[str, ...]") -> str:
    others = [other for other in names if other != name]
    return f" (saved together with {', '.join(others)}, which share objects with it)" if others else ""


def _why_not_restored(exc: Exception) -> str:
    """Why a name could not be restored; a missing module in the words the server looks for."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"needs the module {exc.name!r}, which this image does not have"
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
