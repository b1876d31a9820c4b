"""The ``splitfc`` command line.

Each command group is one module in this package with ``register(subparsers)``
and an optional ``ORDER`` (help order); modules are discovered, so a new
command group is one new module.

Errors a user can cause exit with status 2 and one line ``splitfc: error: ...``;
``SPLITFC_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

from splitfc import __version__

EXIT_USAGE = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitfc", description="Split inference with feature coding.")
    parser.add_argument("--version", action="version", version=f"splitfc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def _debug() -> bool:
    from splitfc.common.settings import cli_settings

    return cli_settings().debug


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``splitfc`` console script."""
    from splitfc.common.errors import SplitfcError

    # Library deprecation notices are for developers, not for users of the CLI.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("splitfc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `splitfc codecs | head`: the reader left; exit quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (SplitfcError, ValueError, FileNotFoundError, PermissionError) as exc:
        if _debug():
            raise
        print(f"splitfc: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # last resort: still one line, never a traceback
        if _debug():
            raise
        print(f"splitfc: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
