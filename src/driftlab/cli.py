"""The ``driftlab`` command: ``driftlab <family> <verb> [options]``.

Each family registers its own subcommands (``driftlab.diffusion.cli``, ``driftlab.rl.cli``);
this module only assembles them and turns configuration errors into one-line messages with a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from driftlab.core.config import ConfigError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every option's default in ``--help`` and keep descriptions as written.

    Options whose default is ``None`` say what ``None`` means in their own help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from driftlab import __version__
    from driftlab.diffusion import cli as diffusion_cli
    from driftlab.llm import cli as llm_cli
    from driftlab.rl import cli as rl_cli

    parser = argparse.ArgumentParser(
        prog="driftlab",
        description="Diffusion models unified under EDM, and reinforcement learning.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"driftlab {__version__}")
    families = parser.add_subparsers(dest="family", required=True, metavar="FAMILY")
    diffusion_cli.add_parser(families, _Formatter)
    rl_cli.add_parser(families, _Formatter)
    llm_cli.add_parser(families, _Formatter)

    demo = families.add_parser(
        "demo",
        help="run the demo of every family on built-in data",
        description="Sample the 8-Gaussian oracle with every sampler, train a two-moons model "
        "for about a minute and sample it, solve the book's grid world, and train PPO on "
        "CartPole-v1 to a return of 500, then GRPO on 2-digit addition after a supervised "
        "warm-up; writes tables and pictures to the run directory.",
        formatter_class=_Formatter,
    )
    demo.add_argument("--run-dir", default="runs/demo", help="where the demo writes its outputs")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument(
        "--train-minutes", type=float, default=1.0, help="budget of the two-moons training"
    )
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_demo(args: argparse.Namespace) -> None:
    from driftlab.demo import run_demo

    run_demo(
        args.run_dir, overwrite=args.overwrite, seed=args.seed, train_minutes=args.train_minutes
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except ConfigError as err:
        print(f"driftlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("driftlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
