"""Runs a ``run_python`` snippet like a notebook cell; its source is passed to ``python3 -c``.

Its one argument is a file descriptor on which the launcher sends, NUL-separated, once the job
has come (the runner may be started before, so a warm sandbox need not wait for python3 to
start): the descriptor to report on, the most characters to report (0: report nothing), the
workspace's Python state (``-``: none kept; else ``IN,OUT,MAX_BYTES`` descriptors and cap) and
the source that keeps it (``notebook_state.py``), descriptors to close (comma-separated), how
many ``NAME=VALUE`` environment entries follow, those, the script, then the program's own
arguments. The script runs as ``__main__`` with its own file name in tracebacks (this runner's
frame is left out), and these things are added to what ``python3 SCRIPT`` would do:

- when the script ends with an expression, its ``repr()`` is written to the descriptor (the
  program prints nothing more than it would have);
- ``matplotlib.pyplot.show()``, which does nothing under the non-interactive backend, saves every
  open figure as ``/work/figure_N.png`` and closes it, so the figures come back as files;
- with a state: the names the workspace's previous cells kept are restored before the script
  runs, and its global names are saved when it ends (an exception or ``sys.exit`` too; not
  ``os._exit`` or a kill). The state's code imports ``pickle`` and ``dill`` before the script's
  folder is on ``sys.path``; those of their modules the program has one of its own named like
  are then forgotten, so its ``import types`` still gets its own ``types.py``.

The launcher starts it with ``-P``, so the runner's own imports come before the script's folder
is on ``sys.path`` and a ``types.py`` or ``signal.py`` of the program's cannot replace them; an
uncaught exception goes to ``sys.excepthook``, as ``python3 SCRIPT`` would send it, never through
a ``traceback`` module the program may have shadowed.

Standard library only: it runs on the sandbox image's Python. It imports builtin modules only,
which no file can shadow and which leave ``sys.modules`` as ``python3 SCRIPT`` has it (``signal``
alone would also cost 5 ms of enum and functools).
"""

import _ast  # the parser's node types, without the cost of importing ``ast``
import _signal  # type: ignore[import-not-found]  # builtin: what ``signal`` wraps, no stub
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, which mypy honours by name, without importing typing
if TYPE_CHECKING:
    import types

ONLY_AST = 0x400  # ast.PyCF_ONLY_AST
# Builtin modules only: a module of the standard library imported here would be the one the
# program's own `import types` gets, where python3 SCRIPT would find the program's types.py.
ModuleType = type(sys)


class _PatchPyplotShow:
    """A meta path finder: on the first import of matplotlib.pyplot, wrap its ``show``. (Plain
    class, not importlib.abc's: importing that costs more than the whole program.)"""

    def find_spec(
        self, name: str, path: "list[str] | None" = None, target: "types.ModuleType | None" = None
    ) -> object:
        if name != "matplotlib.pyplot":
            return None
        sys.meta_path.remove(self)  # type: ignore[arg-type]  # duck-typed finder, see above
        # Ask the other finders directly: importing importlib.util now could find the program's.
        finders = [getattr(finder, "find_spec", None) for finder in sys.meta_path]
        spec = next((found for find in finders if find and (found := find(name, path, target))), None)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module: "types.ModuleType") -> None:
            original_exec(module)
            module.show = _saving_show(module)  # type: ignore[attr-defined]

        spec.loader.exec_module = exec_module
        return spec


def _saving_show(pyplot: "types.ModuleType") -> object:
    saved = 0  # across calls: matplotlib numbers figures from 1 again after close("all")

    def show(*args: object, **kwargs: object) -> None:
        nonlocal saved
        for number in pyplot.get_fignums():
            saved += 1
            while os.path.exists(path := f"/work/figure_{saved}.png"):
                saved += 1  # never overwrite the program's own file
            pyplot.figure(number).savefig(path)
            print(f"[figure saved as {path}]", file=sys.stderr)
        pyplot.close("all")

    return show


class _State:
    """The workspace's Python state around one cell: restored before it, saved after it."""

    def __init__(self, spec: str, code: str) -> None:
        in_fd, self.out_fd, self.max_bytes = (int(part) for part in spec.split(","))
        for fd in (in_fd, self.out_fd):
            os.set_inheritable(fd, False)  # the program's own children do not get them
        with open(in_fd, "rb") as saved_file:
            self.saved = saved_file.read()
        # Who saves, and where to: never a process the cell forked, never a file the cell opened
        # under the descriptor's number after closing ours.
        self.pid, self.out = os.getpid(), _identity(self.out_fd)
        before = set(sys.modules)
        # Quoted: an attribute's annotation is evaluated at run time, and types is not imported.
        self.code: "types.ModuleType | None" = ModuleType("agent_sandbox_state")  # noqa: UP037
        try:
            exec(compile(code, "<agent-sandbox state>", "exec"), self.code.__dict__)
        except Exception as exc:  # an image built before states were kept: it lacks dill
            self.code, self.broken = None, type(exc).__name__
        self.imported = set(sys.modules) - before  # pickle, dill and what they import
        self.not_restored: list[list[str]] = []
        self.carried: list[object] = []

    def restore(self, namespace: "dict[str, object]", folder: str) -> None:
        """First forget the state's own imports that a module of the program's (in ``folder``)
        is named like, so that its ``import types`` gets its own ``types.py`` as under
        ``python3 SCRIPT`` (the state's code keeps the ones it holds); then restore the names."""
        for name in self.imported:
            top = os.path.join(folder, name.partition(".")[0])
            if os.path.exists(top + ".py") or os.path.isdir(top):
                sys.modules.pop(name, None)
        if self.code is not None:
            self.not_restored, self.carried = self.code.restore(self.saved, namespace)
        self.saved = b""  # the cell's memory is its own: no second copy of a large state

    def save(self, namespace: "dict[str, object]") -> None:
        """Write what the cell leaves behind; a failure to save says why and keeps nothing (the
        cell's own result and exit code stand either way)."""
        if os.getpid() != self.pid or _identity(self.out_fd) != self.out:
            return
        try:
            if self.code is None:  # JSON by hand: without the state's code there is no json module
                why = f"this image cannot keep Python state ({self.broken}): "
                why += "rebuild it (agent-sandbox image build)"
                os.write(self.out_fd, b'\n{"error": "' + why.encode() + b'"}')
                os.close(self.out_fd)
                return
            try:
                report, entries = self.code.save(namespace, self.carried, self.max_bytes)
            except Exception as exc:
                report, entries = {"error": f"{type(exc).__name__}: {exc}"[:500]}, []
            report["not_restored"] = self.not_restored
            self.code.write(self.out_fd, report, entries)
        except OSError:  # the cell closed our descriptor: no report, so nothing is kept
            pass


def _identity(fd: int) -> "tuple[int, int] | None":
    try:
        found = os.fstat(fd)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _parameters() -> "list[str]":
    """What the launcher sends on the descriptor named by our one argument, once its job has come
    (we may have been started before): NUL-separated fields, read to the end."""
    fd = int(sys.argv[1])
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    if not chunks:  # no job for us after all
        os._exit(0)
    return b"".join(chunks).decode("utf-8", "surrogateescape").split("\0")


def main() -> None:
    fields = _parameters()
    report_fd, max_chars, state_spec, state_code, unused, env_count = fields[:6]
    for fd in filter(None, unused.split(",")):
        os.close(int(fd))
    for pair in fields[6 : 6 + int(env_count)]:  # the job's environment, for a runner started before it
        name, _, value = pair.partition("=")
        os.environ[name] = value
    sys.argv = fields[6 + int(env_count) :]
    script, report, limit = os.path.abspath(sys.argv[0]), int(report_fd), int(max_chars)
    os.set_inheritable(report, False)  # the program's own children do not get it
    state = _State(state_spec, state_code) if state_spec != "-" else None
    sys.path.insert(0, os.path.dirname(script))  # as python3 SCRIPT has it (-P left it out)
    sys.meta_path.insert(0, _PatchPyplotShow())  # type: ignore[arg-type]

    with open(script, "rb") as source_file:
        source = source_file.read()  # bytes: a coding cookie or a BOM is honoured as by python3
    module = ModuleType("__main__")
    module.__file__ = script
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    if state is not None:
        state.restore(module.__dict__, os.path.dirname(script))
    try:
        tree = compile(source, script, "exec", ONLY_AST)
        last = tree.body[-1] if tree.body and limit else None
        if isinstance(last, _ast.Expr):
            tree.body.pop()
        else:
            last = None
        body = compile(tree, script, "exec")
        value_code = compile(_ast.Expression(last.value), script, "eval") if last else None
    except SyntaxError as exc:  # in the script itself: shown as Python shows it, with no frames
        sys.excepthook(type(exc), exc.with_traceback(None), None)
        if state is not None:
            state.save(module.__dict__)  # what was restored stays kept
        sys.exit(1)
    try:
        exec(body, module.__dict__)
        if value_code is not None:
            value = eval(value_code, module.__dict__)
            if value is not None:
                os.write(report, repr(value)[:limit].encode("utf-8", errors="replace"))
    except SystemExit:
        if state is not None:
            state.save(module.__dict__)
        raise
    except BaseException as exc:
        # As Python itself would report it (through the program's own hook, if it set one),
        # without this runner's frame.
        program_frames = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc.with_traceback(program_frames), program_frames)
        if state is not None:
            state.save(module.__dict__)  # as a notebook keeps what a failed cell defined
        if isinstance(exc, KeyboardInterrupt):  # end as Python does: by SIGINT (exit 130)
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            os.kill(os.getpid(), _signal.SIGINT)
        sys.exit(1)
    if state is not None:
        state.save(module.__dict__)


main()
