"""Runs a ``run_python`` snippet like a notebook cell; its source is passed to ``python3 -c``.

Arguments: the file descriptor to report on, the most characters to report (0: report nothing),
the script, then the program's own arguments. The
script runs as ``__main__`` with its own file name in tracebacks (this runner's frame is left
out), and two things are added to what ``python3 SCRIPT`` would do:

- when the script ends with an expression, its ``repr()`` is written to the descriptor (the
  program prints nothing more than it would have);
- ``matplotlib.pyplot.show()``, which does nothing under the non-interactive backend, saves every
  open figure as ``/work/figure_N.png`` and closes it, so the figures come back as files.

Standard library only: it runs on the sandbox image's Python.
"""

import _ast  # the parser's node types, without the cost of importing ``ast``
import os
import signal
import sys
import types

ONLY_AST = 0x400  # ast.PyCF_ONLY_AST


class _PatchPyplotShow:
    """A meta path finder: on the first import of matplotlib.pyplot, wrap its ``show``. (Plain
    class, not importlib.abc's: importing that costs more than the whole program.)"""

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if name != "matplotlib.pyplot":
            return None
        sys.meta_path.remove(self)  # type: ignore[arg-type]  # duck-typed finder, see above
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        original_exec = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            original_exec(module)
            module.show = _saving_show(module)  # type: ignore[attr-defined]

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _saving_show(pyplot: types.ModuleType) -> object:
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


def main() -> None:
    report_fd, max_chars, script = int(sys.argv[1]), int(sys.argv[2]), os.path.abspath(sys.argv[3])
    os.set_inheritable(report_fd, False)  # the program's own children do not get it
    sys.argv = sys.argv[3:]
    sys.path[0] = os.path.dirname(script)
    sys.meta_path.insert(0, _PatchPyplotShow())  # type: ignore[arg-type]

    with open(script, "rb") as source_file:
        source = source_file.read()  # bytes: a coding cookie or a BOM is honoured as by python3
    module = types.ModuleType("__main__")
    module.__file__ = script
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    try:
        tree = compile(source, script, "exec", ONLY_AST)
        last = tree.body[-1] if tree.body and max_chars else None
        if isinstance(last, _ast.Expr):
            tree.body.pop()
        else:
            last = None
        body = compile(tree, script, "exec")
        value_code = compile(_ast.Expression(last.value), script, "eval") if last else None
    except SyntaxError as exc:  # in the script itself: shown as Python shows it, with no frames
        import traceback

        traceback.print_exception(type(exc), exc, None)
        sys.exit(1)
    try:
        exec(body, module.__dict__)
        if value_code is not None:
            value = eval(value_code, module.__dict__)
            if value is not None:
                os.write(report_fd, repr(value)[:max_chars].encode("utf-8", errors="replace"))
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback

        # As Python itself would report it, without this runner's frame.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        if isinstance(exc, KeyboardInterrupt):  # end as Python does: by SIGINT (exit 130)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)


main()
