"""``trtllm-stack``: one console script, one subcommand per task.

Each area (engine, triton, proxy, bench) has a ``cli.py`` (or ``*_cli.py``) module with
``register(subparsers)``; they are discovered here, so areas never edit this file.
Those modules import only the standard library at top level so that ``--help`` and light
subcommands stay fast; heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence

import trtllm_stack
from trtllm_stack.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _area_cli_modules() -> list[str]:
    names = []
    for area in pkgutil.iter_modules(trtllm_stack.__path__):
        if not area.ispkg:
            continue
        package = importlib.import_module(f"trtllm_stack.{area.name}")
        for mod in pkgutil.iter_modules(package.__path__):
            if mod.name == "cli" or mod.name.endswith("_cli"):
                names.append(f"trtllm_stack.{area.name}.{mod.name}")
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trtllm-stack",
        description="Build TensorRT-LLM engines, serve them with Triton, "
        "and talk to them with any OpenAI client.",
    )
    parser.add_argument("--version", action="version", version=trtllm_stack.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _area_cli_modules():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"trtllm-stack {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"trtllm-stack {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
