"""Command-line edge: one-line errors for anything a user can fix, full tracebacks only on request."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    try:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # no Hydra job was set up
        return None
    failed = Path(os.fsdecode(err.filename)).absolute()
    if failed != run_dir and failed not in run_dir.parents and not failed.is_relative_to(run_dir):
        return None
    return ConfigError(
        f"out_dir={run_dir} cannot be written ({err.strerror}: {failed}); "
        "set out_dir to a directory this user can create and write"
    )


def _exit_with(err: BaseException) -> None:
    print(f"error: {one_line(err)} (GPTFORGE_DEBUG=1 shows the traceback)", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))


def one_line_errors(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task so user errors raised inside it also end as one line, without Hydra's preamble."""

    @functools.wraps(task)
    def wrapper(cfg: Any) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            if cfg.get("debug") or not _is_user_error(err):
                raise
            _exit_with(err)

    return wrapper


def run_cli(main: Callable[[], object], argv: list[str] | None = None) -> None:
    """Run a Hydra entry point; user errors print as `error: <one line>` and exit with status 2."""
    argv = sys.argv[1:] if argv is None else argv
    if _debug_requested(argv):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us instead of Hydra's report
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
