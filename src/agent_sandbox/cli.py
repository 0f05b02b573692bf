"""The ``agent-sandbox`` command: ``serve``, ``run``, ``image build`` and ``doctor``.

Exit codes: ``run`` returns the program's own exit code (1 when its requirements failed to
install; ``run --batch``: 0 when every program passed, else 1); 2 means the request or the
configuration was refused, 3 that the engine or the image is not usable, 4 that the program hit
a limit while exiting 0. ``runs result`` and ``runs cancel``: 5 means the background run has not
ended yet, 6 that it ended without a result (cancelled, lost with a server, or failed: the line
printed says which and why).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from pydantic import ValidationError

from agent_sandbox import detached, local_run
from agent_sandbox.background import BackgroundRuns
from agent_sandbox.batch import run_all
from agent_sandbox.config import CONFIG_PATH_ENV, ConfigError, Settings, load_settings
from agent_sandbox.doctor import checks
from agent_sandbox.errors import EngineError, Refused
from agent_sandbox.images.build import ImageBuildError, build_profiles
from agent_sandbox.images.profiles import PROFILES, UnknownProfile
from agent_sandbox.models import BatchResult, LimitRequest, RunRequest, RunResult
from agent_sandbox.packages.resolver import WheelResolver
from agent_sandbox.sandbox import Sandbox
from agent_sandbox.server import build_server
from agent_sandbox.server.auth import AuthConfigError, require_token_off_loopback
from agent_sandbox.server.content import batch_summary
from agent_sandbox.server.transports import TRANSPORTS, serve

EXIT_REFUSED = 2
EXIT_ENGINE = 3
EXIT_LIMIT = 4
EXIT_NOT_DONE = 5
EXIT_NO_RESULT = 6
IMAGE_WHEELS_MIB = 4096  # a profile's packages are the operator's choice, not a caller's

log = logging.getLogger("agent_sandbox")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m agent_sandbox``."""
    options = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else options.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(options.config)
        code: int = options.handler(options, settings)
    except (ConfigError, AuthConfigError) as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    except (Refused, ValidationError) as exc:
        log.error("refused: %s", exc)
        return EXIT_REFUSED
    except UnknownProfile as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    except (EngineError, ImageBuildError) as exc:
        log.error("%s", exc)
        return EXIT_ENGINE
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-sandbox", description="Run Python in fresh, hardened, offline containers."
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (see configs/).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    commands = parser.add_subparsers(metavar="COMMAND")

    serve = commands.add_parser("serve", help="Serve the MCP tools (the default command).")
    serve.add_argument("--transport", choices=TRANSPORTS, default="stdio", help="Default: stdio.")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP transports: address to bind.")
    serve.add_argument("--port", type=int, default=8000, help="HTTP transports: port (default 8000).")
    serve.set_defaults(handler=_serve)

    run = commands.add_parser("run", help="Run a Python file or a folder in the sandbox.")
    run.add_argument("path", type=Path, help="A .py file, or a folder of files (with --batch: a JSON file).")
    run.add_argument("--entrypoint", help="File to run inside a folder (default main.py).")
    run.add_argument("--timeout", type=float, help="Seconds before the program is stopped.")
    run.add_argument("--stdin", type=Path, help="File whose content is the program's stdin.")
    run.add_argument("--json", action="store_true", help="Print the structured result as JSON.")
    run.add_argument("--out", type=Path, help="Folder to save the files the program wrote into.")
    run.add_argument(
        "-r", "--requirement", action="append", default=[], help="A package to install first (repeatable)."
    )
    run.add_argument("--image", help="Image profile (default: the configured engine.profile).")
    run.add_argument(
        "--batch",
        action="store_true",
        help="PATH is a batch: a JSON array (or JSON lines) of run_batch items, each run in a sandbox "
        "of its own, side by side; prints a line per item and the counts (--json: the whole answer).",
    )
    run.add_argument(
        "--detach",
        action="store_true",
        help="Run it in the background: print its run id and return (see `agent-sandbox runs`).",
    )
    run.add_argument("args", nargs="*", help="Arguments for the program (after --).")
    # A person running a program wants its output and the status line, not the service's news.
    run.set_defaults(handler=_run, log_level=logging.WARNING)
    commands.add_parser(detached.CHILD_COMMAND).set_defaults(  # the child of `run --detach`
        handler=lambda options, settings: detached.serve_one(settings), log_level=logging.WARNING
    )

    runs = commands.add_parser(
        "runs", help="Follow background runs (run --detach, or an MCP client's): status, result, cancel."
    )
    runs_commands = runs.add_subparsers(required=True, metavar="ACTION")
    runs_commands.add_parser("list", help="Every background run in the store, newest first.").set_defaults(
        handler=_runs_list
    )
    for action, handler, text in (
        ("status", _runs_status, "The run's state and the last lines it printed so far."),
        ("result", _runs_result, "The run's output and status line, as `run` prints them."),
        ("cancel", _runs_cancel, "Stop the run and remove its sandbox."),
    ):
        command = runs_commands.add_parser(action, help=text)
        command.add_argument("run_id", help="The id `run --detach` printed (or run_python's run_id).")
        command.set_defaults(handler=handler)
        if action == "result":
            command.add_argument("--wait", type=float, default=0.0, help="Seconds to wait for the end.")
            command.add_argument("--json", action="store_true", help="Print the structured result as JSON.")
            command.add_argument("--out", type=Path, help="Folder to save the files the program wrote into.")
    runs.set_defaults(log_level=logging.WARNING)

    image = commands.add_parser("image", help="Manage the sandbox image.")
    image_commands = image.add_subparsers(required=True, metavar="ACTION")
    build = image_commands.add_parser("build", help="Build and tag the sandbox images.")
    build.add_argument(
        "--profile",
        action="append",
        choices=sorted(PROFILES),
        help="Profile to build (repeatable; default: the configured engine.profiles).",
    )
    build.add_argument("--tag", help="Tag to give it, with one --profile (default REPOSITORY:PROFILE).")
    build.set_defaults(handler=_image_build)

    doctor = commands.add_parser(
        "doctor",
        help="Check the config, the engine, its runtime, the images and a live run; say what to fix.",
    )
    doctor.set_defaults(handler=_doctor)
    # `agent-sandbox` with no command serves MCP over stdio, as MCP clients expect.
    parser.set_defaults(
        handler=_serve, transport="stdio", host="127.0.0.1", port=8000, log_level=logging.INFO
    )
    return parser


def _serve(options: argparse.Namespace, settings: Settings) -> int:
    if options.transport != "stdio":
        require_token_off_loopback(options.host, settings.server.auth_token)
    sandbox = Sandbox(settings)
    version = sandbox.start()
    where = "stdin/stdout" if options.transport == "stdio" else f"http://{options.host}:{options.port}"
    log.info(
        "serving MCP over %s on %s; config %s; profiles %s; %s %s; warm pool of %d",
        options.transport,
        where,
        _config_source(options),
        ", ".join(settings.engine.profiles),
        sandbox.engine_name,
        version,
        settings.engine.pool_size,
    )
    background = BackgroundRuns(settings.runs, settings.engine.max_concurrent_runs)
    server = build_server(sandbox, options.transport, background)

    async def serve_with_pool() -> None:
        # The warm pool and the background runs live as long as the server.
        async with sandbox, background:
            await serve(server, options.transport, options.host, options.port, settings.server)

    # SIGTERM ends the server like Ctrl-C, so runs in progress are cancelled and cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    try:
        anyio.run(serve_with_pool)
    except KeyboardInterrupt:
        interrupted = True
        log.info("stopping")
    finally:
        removed = sandbox.close()
        if removed:
            log.info("removed %d sandbox(es) of interrupted runs", removed)
    if interrupted and options.transport == "stdio":
        # The transport's reader thread is blocked reading a stdin the client still holds open,
        # and the interpreter would wait for it forever at exit (a container stop would end in SIGKILL).
        logging.shutdown()
        os._exit(0)
    return 0


def _config_source(options: argparse.Namespace) -> str:
    return str(options.config or os.environ.get(CONFIG_PATH_ENV) or "built-in defaults")


def _run(options: argparse.Namespace, settings: Settings) -> int:
    if options.batch:
        return _run_batch(options, settings)
    if options.out and options.out.exists() and not options.out.is_dir():
        raise Refused(f"--out {options.out} is a file; name a folder (it is created if missing)")
    if options.detach and (options.out or options.json):
        raise Refused("--out and --json are for a result; with --detach, give them to `runs result ID`")
    files, entrypoint = local_run.collect(options.path, options.entrypoint)
    request = RunRequest(
        files=files,
        entrypoint=entrypoint,
        args=options.args,
        stdin=options.stdin.read_text() if options.stdin else None,
        limits=LimitRequest(timeout_s=options.timeout),
        requirements=options.requirement,
        profile=options.image,
    )
    if options.detach:
        run_id = detached.start(request.model_copy(update={"background": True}), options.config)
        print(run_id)
        local_run.say(
            f"[agent-sandbox] started in the background; follow it: agent-sandbox runs status {run_id}"
        )
        return 0
    sandbox = Sandbox(settings)
    sandbox.start()
    # A person sees the output as it comes; --json keeps stdout for the one JSON document.
    live = None if options.json else local_run.write_live
    result = anyio.run(functools.partial(sandbox.run, request, local_run.show_long_steps, on_output=live))
    return _show(result, options, shown_live=live is not None)


def _run_batch(options: argparse.Namespace, settings: Settings) -> int:
    """``run --batch``: every item of the file, as run_batch runs them; 0 when every one passed."""
    per_run = {
        "--out": options.out,
        "--detach": options.detach,
        "--stdin": options.stdin,
        "--entrypoint": options.entrypoint,
        "-r": options.requirement,
        "--timeout": options.timeout,
        "--image": options.image,
        "program arguments": options.args,
    }
    others = [flag for flag, given in per_run.items() if given]
    if others:
        raise Refused(f"not with --batch: {', '.join(others)}; give those per item in the batch file")
    items = local_run.batch_items(options.path, settings.server.max_batch)
    sandbox = Sandbox(settings)
    sandbox.start()
    every = max(1, len(items) // 10)

    async def on_done(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            local_run.say(f"[agent-sandbox] {done} of {total} programs done")

    async def run_one(request: RunRequest) -> RunResult:
        return await sandbox.run(request)

    async def batch() -> BatchResult:
        async with sandbox:
            return await run_all(items, run_one, settings.engine.max_concurrent_runs, on_done)

    answer = anyio.run(batch)
    local_run.say(answer.model_dump_json(indent=2) if options.json else batch_summary(answer), sys.stdout)
    return 0 if answer.passed == len(items) else 1


def _show(result: RunResult, options: argparse.Namespace, shown_live: bool = False) -> int:
    """Print a result as ``run`` does (its output unless it was shown live, the files saved where
    asked, the status line) and return the exit code that says how it ended."""
    if not options.json and not shown_live:
        local_run.write_live(1, result.stdout.encode())
        local_run.write_live(2, result.stderr.encode())
    saved = local_run.save_files(result, options.out) if options.out else []
    if options.json:
        local_run.say(result.model_dump_json(indent=2), sys.stdout)
    else:
        local_run.say(local_run.status_line(result, saved, options.out))
    return local_run.exit_code(result, limit_code=EXIT_LIMIT, engine_code=EXIT_ENGINE)


def _runs_list(options: argparse.Namespace, settings: Settings) -> int:
    for record in BackgroundRuns(settings.runs).runs(None):
        print(local_run.run_line(record))
    return 0


def _runs_status(options: argparse.Namespace, settings: Settings) -> int:
    record = BackgroundRuns(settings.runs).status(options.run_id, None)
    print(local_run.run_line(record))
    if record.output is not None:
        local_run.write_live(1, record.output.stdout.encode())
        local_run.write_live(2, record.output.stderr.encode())
    return 0


def _runs_result(options: argparse.Namespace, settings: Settings) -> int:
    background = BackgroundRuns(settings.runs)
    record = anyio.run(background.wait, options.run_id, None, options.wait)
    result = background.store.result(record.id, None) if record.state == "finished" else None
    if result is None:
        local_run.say(local_run.run_line(record))
        return EXIT_NOT_DONE if record.in_flight else EXIT_NO_RESULT
    return _show(result, options)


def _runs_cancel(options: argparse.Namespace, settings: Settings) -> int:
    record = anyio.run(BackgroundRuns(settings.runs).cancel, options.run_id, None)
    local_run.say(local_run.run_line(record))
    return 0 if not record.in_flight else EXIT_NOT_DONE


def _image_build(options: argparse.Namespace, settings: Settings) -> int:
    names = options.profile or settings.engine.profiles
    if options.tag and len(names) != 1:
        raise Refused(f"--tag names one image, but {len(names)} profiles are to be built; add --profile")
    wheels = WheelResolver.from_settings(settings.packages, max_download_mib=IMAGE_WHEELS_MIB)
    build_profiles(settings.engine, names, wheels, options.tag)
    return 0


def _doctor(options: argparse.Namespace, settings: Settings) -> int:
    failed = 0
    for check in checks(settings, _config_source(options)):
        print(check, flush=True)
        failed += check.status == "FAIL"
    if failed:
        print(f"{failed} problem(s): fix them from the top, then run `agent-sandbox doctor` again")
        return EXIT_ENGINE
    print("all checks passed")
    return 0
