"""Command-line edge: one-line errors for anything a user can fix, full tracebacks only on request."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from gptforge.config import DataConfig
from gptforge.errors import ConfigError, GptforgeError

DEBUG_ENV = "GPTFORGE_DEBUG"


def _debug_requested(argv: list[str]) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or any(
        arg in ("debug=true", "debug=True", "+debug=true") for arg in argv
    )


def _omegaconf_cause(err: BaseException) -> BaseException | None:
    from omegaconf.errors import OmegaConfBaseException

    seen = err
    while seen is not None:
        if isinstance(seen, OmegaConfBaseException):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def one_line(err: BaseException) -> str:
    """A single line that names the culprit: our own errors as written, Hydra/OmegaConf errors condensed."""
    if isinstance(err, GptforgeError):
        return " ".join(str(err).split())
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException):  # the search path that follows is Hydra's, not the user's
        return " ".join(str(err).split("\nConfig search path")[0].split())
    cause = _omegaconf_cause(err)
    if cause is not None:
        key = getattr(cause, "full_key", None)
        message = str(getattr(cause, "msg", None) or cause).split("\n")[0]
        if "not in struct" in message or ("Key '" in message and "not in" in message):
            message = f"unknown key{_valid_keys(cause)}"
        return f"{key}: {message}" if key else " ".join(str(err).split())
    return " ".join(str(err).split())


def _valid_keys(cause: BaseException) -> str:
    parent = getattr(cause, "parent_node", None)
    try:
        keys = sorted(parent.keys()) if parent is not None else []
    except Exception:
        keys = []
    return f"; valid keys here: {', '.join(keys)}" if keys else ""


def _is_user_error(err: BaseException) -> bool:
    from hydra.errors import HydraException

    return isinstance(err, GptforgeError | HydraException) or _omegaconf_cause(err) is not None


def _run_dir_error(err: BaseException) -> ConfigError | None:
    """Hydra creates out_dir (and writes .hydra/ there) before any of our code runs: an OSError there
    is a bad out_dir, told as one."""
    if not isinstance(err, OSError) or err.filename is None:
        return None
    failed = Path(os.fsdecode(err.filename)).absolute()
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
    except ValueError:  # Hydra failed while setting up the job, before it recorded the run directory
        if not _raised_in(err, "hydra"):
            return None
        run_dir = failed
    if failed != run_dir and failed not in run_dir.parents and not failed.is_relative_to(run_dir):
        return None
    why = "it is a file" if failed.is_file() else err.strerror
    return ConfigError(
        f"out_dir={run_dir} cannot be used as the run directory ({why}: {failed}); "
        "set out_dir to a directory this user can create and write"
    )


def _raised_in(err: BaseException, package: str) -> bool:
    """Whether the innermost frame of `err`'s traceback is in `package` (or the standard library below it)."""
    frames = [frame.filename for frame in traceback.extract_tb(err.__traceback__)]
    ours = [name for name in frames if "site-packages" in name or "/gptforge" in name or "/src/" in name]
    return bool(ours) and f"{os.sep}{package}{os.sep}" in ours[-1]


def check_group_lists(argv: list[str], config_dir: Path) -> None:
    """ConfigError for a config-group list on the command line (`logger=[console,jsonl]`) holding anything
    but the group's option names; Hydra itself fails on those deep inside, with a TypeError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # not Hydra's grammar: Hydra reports it in one line itself
        return
    for override in overrides:
        group = config_dir / override.key_or_group
        value = override.value()
        if override.package or not group.is_dir() or not isinstance(value, list):
            continue
        options = sorted(path.stem for path in group.glob("*.yaml"))
        for item in value:
            if not isinstance(item, str) or item not in options:
                raise ConfigError(
                    f"{override.key_or_group}=[{', '.join(map(str, value))}]: {item!r} is not a "
                    f"{override.key_or_group} option; choose from {', '.join(options)}"
                )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows the module docstring as written and every option's default."""


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how files become documents, as train.py's data.* keys say it."""
    defaults = DataConfig()
    parser.add_argument(
        "--text-format", default=defaults.text_format, help="auto (by suffix), text, json, parquet"
    )
    parser.add_argument(
        "--text-field", default=defaults.text_field, help="json/parquet column holding the text"
    )
    parser.add_argument(
        "--text-unit", default=defaults.text_unit, help="text files as documents: paragraph, document, line"
    )
    parser.add_argument("--encoding-errors", default=defaults.encoding_errors, help="strict or replace")
    parser.add_argument(
        "--text-suffixes", nargs="*", default=[], help="more file suffixes read as text, e.g. .py .c"
    )


def corpus_config(args: argparse.Namespace, path: str) -> DataConfig:
    """The data config of a corpus script's arguments, checked by the same schema as train.py's."""
    return DataConfig(
        source="local",
        path=path,
        text_format=args.text_format,
        text_field=args.text_field,
        text_unit=args.text_unit,
        encoding_errors=args.encoding_errors,
        text_suffixes=list(args.text_suffixes),
    )


def _exit_with(err: BaseException) -> None:
    print(f"error: {one_line(err)} (GPTFORGE_DEBUG=1 shows the traceback)", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))


def one_line_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task (its first argument the config) so user errors raised inside it also end as one
    line, without Hydra's preamble."""

    @functools.wraps(task)
    def wrapper(cfg: Any, *args: Any) -> Any:
        try:
            return task(cfg, *args)
        except Exception as err:
            if cfg.get("debug") or _debug_requested([]) or not _is_user_error(err):
                raise
            _exit_with(err)

    return wrapper


class _Tee(io.TextIOBase):
    """A console stream that also appends what it shows to a log file (progress-bar redraws left out)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        if "\r" not in text:  # a progress bar redrawing itself: the log keeps the records instead
            self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


_console_log: TextIO | None = None


def log_only(line: str) -> None:
    """Append `line` to the run's log without showing it (the console shows a progress bar instead)."""
    if _console_log is not None:
        _console_log.write(line + "\n")
        _console_log.flush()


@contextlib.contextmanager
def console_to_log(path: Path | None) -> Iterator[None]:
    """While inside, everything printed to stdout/stderr (and logged) also goes to `path` (None: off)."""
    global _console_log
    if path is None:
        yield
        return
    import logging

    originals = sys.stdout, sys.stderr
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        handlers = [h for h in logging.root.handlers if getattr(h, "stream", None) in originals]
        for handler in handlers:
            handler.setStream(sys.stderr if handler.stream is originals[1] else sys.stdout)
        _console_log = log
        try:
            yield
        finally:
            _console_log = None
            sys.stdout.flush()
            sys.stderr.flush()
            for handler in handlers:
                handler.setStream(originals[1] if handler.stream is sys.stderr else originals[0])
            sys.stdout, sys.stderr = originals


def run_cli(main: Callable[[], object], argv: list[str] | None = None) -> None:
    """Run a Hydra entry point; user errors print as `error: <one line>` and exit with status 2.

    Under a launcher that sets GPTFORGE_EXIT_DIR (launch.sh), the process's exit status is also written
    there as `rank_<RANK>`, so the launcher can exit as its ranks did (75: preempted, requeue me).
    """
    argv = sys.argv[1:] if argv is None else argv
    os.environ["HYDRA_FULL_ERROR"] = "1"  # composition errors reach us (or, in debug, their full trace)
    status: int | str | None = 1
    try:
        if _debug_requested(argv):
            main()
        else:
            _run_with_one_line_errors(main)
        status = 0
    except SystemExit as exit_request:
        status = exit_request.code
        raise
    finally:
        _record_exit_status(status)


def _run_with_one_line_errors(main: Callable[[], object]) -> None:
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        run_dir_error = _run_dir_error(err)
        if run_dir_error is not None:
            _exit_with(run_dir_error)
        if not _is_user_error(err):
            raise
        _exit_with(err)


EXIT_DIR_ENV = "GPTFORGE_EXIT_DIR"


def _record_exit_status(status: int | str | None) -> None:
    directory = os.environ.get(EXIT_DIR_ENV)
    if not directory:
        return
    code = status if isinstance(status, int) else (0 if status is None else 1)
    with contextlib.suppress(OSError):  # the launcher's directory is gone: nobody is asking
        Path(directory, f"rank_{os.environ.get('RANK', '0')}").write_text(f"{code}\n")
