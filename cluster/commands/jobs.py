"""Runs as Ray jobs: ``theme-engine submit | status | logs | stop``.

A thin layer over Ray's :class:`~ray.job_submission.JobSubmissionClient` (the head's dashboard,
``http://HEAD:8265``). ``submit`` sends ``python -m theme_engine.cluster.commands.cli run ...`` as the job's entrypoint
with the local project folder as its ``working_dir``; the job's driver runs on the head and
connects to the cluster through the ``RAY_ADDRESS`` Ray sets for it. ``status`` reads the run's
progress back from the job's log: the driver logs one line per stage every few seconds
(``theme_engine.progress: embed: 1280/6000 (21%)``, see :mod:`cluster.progress`). ``stop`` asks
Ray to stop the job: Ray signals the driver, the run stops after its current batch or iteration,
and its output directory stays resumable (submit the same command again to continue).

The stop signal is SIGINT, not Ray's default SIGTERM: ``ray.init`` replaces the driver's Python
SIGTERM handler with its own ``sys.exit(15)``, so a SIGTERM kills the run mid-batch. Jobs
submitted here set ``RAY_JOB_STOP_SIGNAL=SIGINT`` for their supervisor (through the job's
runtime_env), so ``theme-engine stop``, ``ray job stop`` and the dashboard all stop them cleanly.

Ray modules are imported lazily: ``theme-engine --help`` and ``run`` never pay for them here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .args import DEFAULT_ADDRESS, JOB_COMMANDS, STOP_WAIT_S, build_parser
from .exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from ..runtime.progress import parse_record

log = logging.getLogger(__name__)

ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's own order for the jobs API
# what ``--working-dir`` never uploads (the project's .gitignore is honoured as well)
EXCLUDES = [".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info", "/out", "/demo-out", "/bench/results"]

class JobError(Exception):
    """A job command cannot go on; the message says why (printed without a traceback)."""


@dataclass
class StageProgress:
    """The last progress line of one stage in a job's log."""

    stage: str
    done: int
    total: int | None
    time: str | None = None
    reused: bool = False

    def describe(self) -> str:
        if self.reused:
            return "reused (finished in an earlier run)"
        if self.total:
            return f"{self.done}/{self.total} ({100.0 * self.done / self.total:.0f}%)"
        return str(self.done)


def parse_progress(logs: str) -> dict[str, StageProgress]:
    """The last progress record per stage (``cluster/runtime/progress.py``'s records, not the human log
    lines), in the order the stages first appear in ``logs``."""
    found: dict[str, StageProgress] = {}
    for line in logs.splitlines():
        rec = parse_record(line)
        if rec is not None:
            total = rec.get("total")
            found[rec["stage"]] = StageProgress(rec["stage"], int(rec.get("done") or 0), int(total) if total else None, rec.get("time"), bool(rec.get("reused")))
    return found


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``, else the local head's dashboard."""
    if address:
        return address
    for name in ADDRESS_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_ADDRESS


@contextlib.contextmanager
def _address_env_cleared() -> Iterator[None]:
    """Ray lets ``RAY_ADDRESS`` override an explicit address; hide it while the client resolves ours."""
    saved = {name: os.environ.pop(name) for name in ADDRESS_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _use_local_token() -> None:
    """Sends the local Ray token (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``...) when there is one.

    Ray (2.5x+) starts clusters with token authentication on, and its jobs client sends a token only
    once token mode is enabled in this process; ``ray.init`` enables it when a token is found, the
    jobs client does not (``ray job ...`` needs ``RAY_AUTH_MODE=token``). ``RAY_AUTH_MODE``, if
    set, is respected."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger("ray._private.authentication")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that token auth is on: that is the point here
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def entrypoint(command: Sequence[str], python: str = "python") -> str:
    """The shell command a job runs: ``theme-engine COMMAND...`` through the working dir's code."""
    return shlex.join([python, "-m", "theme_engine.cluster.commands.cli", *command])


def runtime_env(working_dir: Path | None, stop_wait_s: int, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    env = {
        # read by Ray's job supervisor on stop: the signal (SIGINT: see the module's docstring) and
        # the grace period before it SIGKILLs the driver
        "RAY_JOB_STOP_SIGNAL": "SIGINT",
        "RAY_JOB_STOP_WAIT_TIME_S": str(stop_wait_s),
        "PYTHONUNBUFFERED": "1",
        **(env_vars or {}),
    }
    renv: dict[str, Any] = {"env_vars": env}
    if working_dir is not None:
        renv["working_dir"] = str(working_dir)
        renv["excludes"] = list(EXCLUDES)
    return renv


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The exit status of a finished job as a command's: 0, 130 when stopped, else the driver's (or 1)."""
    if status == "SUCCEEDED":
        return EXIT_OK
    if status == "STOPPED":
        return EXIT_INTERRUPTED
    return driver_exit_code if driver_exit_code else EXIT_ERROR


class Jobs:
    """Ray jobs on one cluster, with Ray's errors turned into :class:`JobError`."""

    def __init__(self, address: str | None = None) -> None:
        self.address = resolve_address(address)
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as exc:  # ray[default] missing: the jobs API needs the dashboard's client
            raise JobError(f"the Ray jobs client is not installed ({exc}): pip install 'ray[default]'") from None
        from ray.exceptions import AuthenticationError

        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("ray").setLevel(logging.WARNING)  # its packaging notes on every upload
        _use_local_token()
        try:
            with _address_env_cleared():
                self.client = JobSubmissionClient(self.address)
        except AuthenticationError as exc:
            raise JobError(f"the Ray dashboard at {self.address} refused us: {exc}") from None
        except (ConnectionError, OSError) as exc:
            raise JobError(
                f"cannot reach the Ray dashboard at {self.address}: is the head running "
                "(ray start --head --dashboard-host ...), and is this its dashboard address? "
                "Pass --address http://HEAD:8265 or set RAY_ADDRESS."
            ) from exc
        except RuntimeError as exc:
            raise JobError(f"Ray at {self.address} does not serve the jobs API: {exc}") from exc

    # ------------------------------------------------------------------ requests
    def _call(self, job_id: str | None, fn: Callable[[], Any]) -> Any:
        from ray.exceptions import AuthenticationError

        try:
            return fn()
        except AuthenticationError as exc:
            raise JobError(f"the Ray dashboard at {self.address} refused us: {exc}") from None
        except (ConnectionError, OSError) as exc:
            raise JobError(f"lost the Ray dashboard at {self.address}: {exc}") from exc
        except RuntimeError as exc:
            text = str(exc)
            if job_id is not None and ("404" in text or "does not exist" in text):
                raise JobError(f"no job {job_id!r} on the cluster at {self.address} (see: ray job list --address {self.address})") from None
            raise JobError(text) from exc

    def submit(
        self,
        command: Sequence[str],
        working_dir: Path | None = None,
        stop_wait_s: int = STOP_WAIT_S,
        submission_id: str | None = None,
        python: str = "python",
        env_vars: dict[str, str] | None = None,
    ) -> str:
        cmd = entrypoint(command, python)
        renv = runtime_env(working_dir, stop_wait_s, env_vars)
        log.info("submitting to %s: %s", self.address, cmd)
        return self._call(None, lambda: self.client.submit_job(entrypoint=cmd, runtime_env=renv, submission_id=submission_id))

    def info(self, job_id: str) -> Any:
        return self._call(job_id, lambda: self.client.get_job_info(job_id))

    def logs(self, job_id: str) -> str:
        return self._call(job_id, lambda: self.client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        """Asks Ray to stop the job (a signal to its driver); False if it had already ended."""
        return bool(self._call(job_id, lambda: self.client.stop_job(job_id)))

    def follow(self, job_id: str, write: Callable[[str], Any]) -> None:
        """Writes the job's log as it grows, until the job ends."""
        self.info(job_id)  # an unknown id fails here, with a clear message

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                write(chunk)

        try:
            asyncio.run(tail())
        except (ConnectionError, OSError) as exc:
            raise JobError(f"lost the Ray dashboard at {self.address} while following {job_id}: {exc}") from exc
        except RuntimeError as exc:  # the log stream closed abnormally: the status below still tells the end
            log.warning("log stream of %s ended early: %s", job_id, exc)

    def wait(self, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> Any:
        """Job details once the job has ended (or at ``timeout_s``, whatever its status)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            details = self.info(job_id)
            if details.status.is_terminal() or (deadline is not None and time.monotonic() >= deadline):
                return details
            time.sleep(poll_s)


# ---------------------------------------------------------------------- CLI
def _write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _validate_job_command(command: list[str]) -> list[str]:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise JobError("no command to submit: theme-engine submit [OPTIONS] -- run INPUT... --out DIR")
    if command[0] in JOB_COMMANDS:
        raise JobError(f"`{command[0]}` is a local command: submit `run` (or `doctor`) to the cluster")
    # a usage error is reported (and exits 2) here, not in the job's log
    build_parser().parse_args(command)
    return command


def _cmd_submit(args: argparse.Namespace) -> int:
    command = _validate_job_command(list(args.job_command))
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise JobError(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    working_dir = None
    if not args.no_working_dir:
        working_dir = args.working_dir.resolve()
        if not working_dir.is_dir():
            raise JobError(f"--working-dir {args.working_dir}: not a directory")
    if "--out" in command:
        out = command[command.index("--out") + 1] if command.index("--out") + 1 < len(command) else ""
        if out and not os.path.isabs(out):
            log.warning("--out %s is relative: it lands in the job's working directory on the head, which Ray deletes later", out)
    jobs = Jobs(args.address)
    job_id = jobs.submit(command, working_dir, args.stop_wait, args.submission_id, args.python, env)
    _write_out(job_id + "\n")
    if not args.wait:
        log.info("follow it: theme-engine logs %s --follow --address %s", job_id, jobs.address)
        return EXIT_OK
    try:
        jobs.follow(job_id, _write_out)
        details = jobs.wait(job_id, timeout_s=30)
    except KeyboardInterrupt:
        log.warning("stopped following; the job goes on (theme-engine stop %s --address %s)", job_id, jobs.address)
        return EXIT_INTERRUPTED
    status = str(details.status)
    log.info("job %s: %s", job_id, status)
    return exit_code(status, details.driver_exit_code) if details.status.is_terminal() else EXIT_ERROR


def status_report(details: Any, progress: dict[str, StageProgress]) -> dict[str, Any]:
    return {
        "job_id": details.submission_id or details.job_id,
        "status": str(details.status),
        "message": details.message,
        "entrypoint": details.entrypoint,
        "start_time": details.start_time,
        "end_time": details.end_time,
        "driver_exit_code": details.driver_exit_code,
        "progress": {name: asdict(p) for name, p in progress.items()},
    }


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _cmd_status(args: argparse.Namespace) -> int:
    jobs = Jobs(args.address)
    details = jobs.info(args.job_id)
    progress = parse_progress(jobs.logs(args.job_id))
    report = status_report(details, progress)
    if args.json:
        _write_out(json.dumps(report, indent=2) + "\n")
        return EXIT_OK
    lines = [
        f"job {report['job_id']}: {report['status']}",
        f"  entrypoint: {report['entrypoint']}",
        f"  started: {_when(report['start_time'])}   ended: {_when(report['end_time'])}",
    ]
    if report["message"] and report["status"] != "RUNNING":
        lines.append(f"  message: {report['message'].splitlines()[0]}")
    if progress:
        lines.append("  progress (last line per stage):")
        for p in progress.values():
            lines.append(f"    {p.stage:<9} {p.describe():<28} {p.time or ''}")
    else:
        lines.append("  progress: no stage has reported yet")
    _write_out("\n".join(lines) + "\n")
    return EXIT_OK


def _cmd_logs(args: argparse.Namespace) -> int:
    jobs = Jobs(args.address)
    if args.follow:
        try:
            jobs.follow(args.job_id, _write_out)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        return EXIT_OK
    _write_out(jobs.logs(args.job_id))
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace) -> int:
    jobs = Jobs(args.address)
    if jobs.stop(args.job_id):
        log.info("stop requested for %s: the run stops after its current batch; its output directory stays resumable", args.job_id)
    else:
        log.info("job %s had already ended", args.job_id)
    if args.wait:
        details = jobs.wait(args.job_id, timeout_s=args.timeout)
        _write_out(f"{args.job_id}: {details.status}\n")
        if not details.status.is_terminal():
            return EXIT_ERROR
    return EXIT_OK


def cmd_job(args: argparse.Namespace) -> int:
    """``submit | status | logs | stop``; a :class:`JobError` is logged as one line and exits 1."""
    handlers = {"submit": _cmd_submit, "status": _cmd_status, "logs": _cmd_logs, "stop": _cmd_stop}
    try:
        return handlers[args.command](args)
    except JobError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
