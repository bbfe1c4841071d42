"""``driftlab rl train ALGO --env ID``, ``driftlab rl eval RUN`` and ``driftlab rl record RUN``.

``train`` builds the learner first (so a bad algorithm, environment or hyperparameter is a
one-line error that leaves no run directory behind), then writes the run directory:
``config.json``, ``metrics.jsonl`` and ``tensorboard/``, the checkpoint ``model.safetensors`` +
``model.json`` (every ``--checkpoint-every`` steps, at the end and on Ctrl-C),
``learning_curve.png`` and ``eval.json``. ``--resume`` loads the checkpoint and trains on to the
run's total steps, exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from driftlab.core.config import ConfigError, check_int
from driftlab.core.rundir import RunDir, check_resume, write_json

MODEL = "model"  # checkpoint stem inside a run directory

_LITERALS = {"True": True, "true": True, "False": False, "false": False, "None": None}


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (numbers, ``[64, 64]``, ``null``, ``true``), Python's ``True`` /
    ``False`` / ``None``, or else the text itself (``relu``). Nothing is evaluated."""
    if text in _LITERALS:
        return _LITERALS[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr_schedule=linear", "n_epochs=5"]`` -> ``{"lr_schedule": "linear", "n_epochs": 5}``."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def _algorithm_class(name: str) -> type:
    from driftlab.rl.deep.algorithm import ALGORITHM_NAMES, get_algorithm

    if name not in ALGORITHM_NAMES:
        raise ConfigError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHM_NAMES)}")
    module = f"driftlab.rl.deep.{ALGORITHM_NAMES[name]}"
    try:
        return get_algorithm(name)
    except ModuleNotFoundError as error:
        if error.name != module:
            raise
        raise ConfigError(f"algorithm {name!r} is not available ({module} is missing)") from None


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, minimum=1))


def _drop_records_after(metrics: Path, step: int) -> None:
    """Forget the records logged after the checkpoint a run resumes from: those steps are
    trained again, and logged again."""
    if not metrics.exists():
        return
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    metrics.write_text("".join(kept), encoding="utf-8")


def _plot(run: RunDir, title: str) -> Path:
    from driftlab.rl.deep.plots import episode_returns, plot_learning_curve

    steps, returns = episode_returns(run.file("metrics.jsonl"))
    return plot_learning_curve(steps, returns, run.file("learning_curve.png"), title=title)


def _evaluation(algo: Any, episodes: int, deterministic: bool = True) -> dict[str, Any]:
    report = algo.evaluate(episodes=episodes, deterministic=deterministic)
    return {
        "algorithm": algo.name,
        "env": algo.env_id,
        "steps": algo.num_steps,
        "episodes": episodes,
        "deterministic": deterministic,
        **report,
    }


def _summary(report: dict[str, Any]) -> str:
    return (
        f"{report['algorithm']} on {report['env']} after {report['steps']} steps: return "
        f"{report['mean_return']:.1f} +- {report['std_return']:.1f} over {report['episodes']} "
        f"{'deterministic' if report['deterministic'] else 'stochastic'} episodes"
    )


# ----- train ------------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> None:
    from driftlab.core.metrics import MetricsLogger
    from driftlab.rl.deep.algorithm import Algorithm

    _set_threads(args.threads)
    if args.checkpoint_every is not None:
        check_int("checkpoint-every", args.checkpoint_every, minimum=1)
    run_dir = args.run_dir or f"runs/rl/{args.algo}-{args.env}"
    if args.resume:
        given = [
            f"--{k.replace('_', '-')}"
            for k in ("set", "steps", "n_envs", "eval_episodes")
            if getattr(args, k)
        ]
        check_resume(run_dir, args.algo, given)
        run = RunDir.create(run_dir, {}, resume=True)
        config = run.config
        if (run.path / f"{MODEL}.json").exists():
            algo = Algorithm.load(run.path / MODEL)
        else:  # interrupted before the first checkpoint: start again from the saved config
            algo = _algorithm_class(config["algorithm"])(
                config["env"], seed=config["seed"], **config["overrides"]
            )
        _drop_records_after(run.file("metrics.jsonl"), algo.num_steps)
    else:
        overrides = parse_overrides(args.set)
        for key, value in (("total_steps", args.steps), ("n_envs", args.n_envs)):
            if value is not None:
                overrides[key] = value
        if args.eval_episodes is not None:
            overrides["eval_episodes"] = args.eval_episodes
        # Everything is validated (and the environments made) before the run dir exists.
        algo = _algorithm_class(args.algo)(args.env, seed=args.seed, **overrides)
        config = {
            "command": "rl train",
            "algorithm": algo.name,
            "env": algo.env_id,
            "seed": algo.seed,
            "overrides": overrides,
            "hyperparameters": algo.config,
            "checkpoint_every": args.checkpoint_every,
            "save_buffer": args.save_buffer,
            "threads": args.threads,
        }
        try:
            run = RunDir.create(run_dir, config, overwrite=args.overwrite)
        except ConfigError:
            algo.close()
            raise
    total = algo.config["total_steps"]
    title = f"{algo.name} on {algo.env_id} (seed {algo.seed})"
    with run:
        try:
            with MetricsLogger(run.path, tensorboard=True) as logger:
                if algo.num_steps < total:
                    algo.learn(
                        total - algo.num_steps,
                        logger=logger,
                        checkpoint=run.path / MODEL,
                        checkpoint_every=config["checkpoint_every"],
                        save_buffer=config["save_buffer"],
                    )
        except KeyboardInterrupt:
            _plot(run, title)
            print(
                f"interrupted at step {algo.num_steps} of {total}; checkpoint saved in "
                f"{run.path}; continue with --resume"
            )
            raise
        finally:
            algo.close()
        curve = _plot(run, title)
        report = _evaluation(algo, algo.config["eval_episodes"])
        write_json(run.file("eval.json"), report)
        print(_summary(report))
        print(f"learning curve: {curve}")
        print(f"outputs in {run.path}")


# ----- eval and record --------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> Any:
    """The learner saved in a run directory (or at a checkpoint stem)."""
    from driftlab.rl.deep.algorithm import Algorithm

    path = Path(run_dir)
    stem = path / MODEL if path.is_dir() else path
    if not stem.with_suffix(".json").exists():
        raise ConfigError(f"no saved model in {str(run_dir)!r}; train one with driftlab rl train")
    return Algorithm.load(stem)


def run_eval(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    check_int("episodes", args.episodes, minimum=1)
    algo = load_run(args.run)
    try:
        report = _evaluation(algo, args.episodes, deterministic=not args.stochastic)
    finally:
        algo.close()
    run = Path(args.run)
    out = (run if run.is_dir() else run.parent) / "eval.json"
    write_json(out, report)
    print(_summary(report))
    print(f"wrote {out}")


def record_episode(
    algo: Any, seed: int, deterministic: bool = True
) -> tuple[list[Any], float, float]:
    """One episode rendered frame by frame (``render_mode="rgb_array"``); returns the frames,
    the episode's return and the environment's frame rate."""
    import gymnasium as gym

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame draws off-screen
    try:
        env = algo.make_eval_env(render_mode="rgb_array")
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
    except gym.error.DependencyNotInstalled as error:
        raise ConfigError(f"rendering {algo.env_id} needs a missing package: {error}") from None
    if frames[0] is None:
        raise ConfigError(f"{algo.env_id} did not render an rgb_array frame")
    total, done = 0.0, False
    try:
        while not done:
            obs, reward, terminated, truncated, _ = env.step(algo.predict(obs, deterministic))
            total += float(reward)
            done = terminated or truncated
            frames.append(env.render())
    finally:
        env.close()
    return frames, total, float(env.metadata.get("render_fps") or 30)


def save_gif(frames: list[Any], path: str | Path, fps: float) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
    return path


def run_record(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    algo = load_run(args.run)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / "episode.gif"
    if out.suffix.lower() != ".gif":
        raise ConfigError(f"--out must be a .gif file, got {str(out)!r}")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"fps must be > 0, got {args.fps}")
    try:
        frames, total, fps = record_episode(algo, args.seed, deterministic=not args.stochastic)
    finally:
        algo.close()
    save_gif(frames, out, args.fps or fps)
    print(f"wrote {out}: {len(frames)} frames, return {total:.1f}")


# ----- parsers ----------------------------------------------------------------------------------
def add_parsers(verbs: argparse._SubParsersAction, formatter: type) -> None:
    from driftlab.rl.deep.algorithm import ALGORITHM_NAMES

    train = verbs.add_parser(
        "train",
        help="train a deep RL algorithm on a Gymnasium environment",
        description="Train ALGO on a Gymnasium environment with the environment's preset "
        "(RL Baselines3 Zoo's tuned hyperparameters where it has them), changed by --set. "
        "Writes config.json, metrics.jsonl, TensorBoard logs, the checkpoint model.*, "
        "learning_curve.png and eval.json. Checkpoints on Ctrl-C; --resume continues exactly.",
        formatter_class=formatter,
    )
    train.add_argument("algo", metavar="ALGO", help=f"one of: {', '.join(ALGORITHM_NAMES)}")
    train.add_argument("--env", required=True, help="Gymnasium environment id, e.g. CartPole-v1")
    train.add_argument(
        "--steps", type=int, default=None, help="environment steps (default: the preset's)"
    )
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument(
        "--n-envs", type=int, default=None, help="parallel environments (default: the preset's)"
    )
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override a hyperparameter (repeatable), e.g. --set learning_rate=1e-3 "
        "--set hidden_sizes=[128,128]",
    )  # fmt: skip
    train.add_argument(
        "--run-dir", default=None, help="output directory (default: runs/rl/ALGO-ENV)"
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    train.add_argument(
        "--checkpoint-every", type=int, default=50_000, help="steps between checkpoints"
    )
    train.add_argument(
        "--save-buffer", action="store_true", help="checkpoint the replay buffer too"
    )
    train.add_argument(
        "--eval-episodes", type=int, default=None,
        help="episodes of the final evaluation (default: the preset's, 20)",
    )  # fmt: skip
    train.set_defaults(handler=run_train)

    evaluate = verbs.add_parser(
        "eval",
        help="evaluate a trained run",
        description="Evaluate the model of a run directory and write RUN/eval.json.",
        formatter_class=formatter,
    )
    evaluate.add_argument("run", metavar="RUN", help="run directory of driftlab rl train")
    evaluate.add_argument("--episodes", type=int, default=20, help="evaluation episodes")
    evaluate.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of the policy's mode"
    )
    evaluate.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    evaluate.set_defaults(handler=run_eval)

    record = verbs.add_parser(
        "record",
        help="render one episode of a trained run to a GIF",
        description="Play one episode with the model of a run directory and save its frames "
        "as an animated GIF.",
        formatter_class=formatter,
    )
    record.add_argument("run", metavar="RUN", help="run directory of driftlab rl train")
    record.add_argument("--out", default=None, help="GIF file (default: RUN/episode.gif)")
    record.add_argument("--seed", type=int, default=0, help="seed of the episode's start")
    record.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of the policy's mode"
    )
    record.add_argument(
        "--fps", type=float, default=None, help="frames per second (default: the env's)"
    )
    record.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    record.set_defaults(handler=run_record)
