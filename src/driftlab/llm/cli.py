"""``driftlab llm sft``, ``driftlab llm train {grpo,ppo,kimi}`` and ``driftlab llm eval RUN``.

``sft`` trains the built-in :class:`~driftlab.llm.model.TransformerLM` on a task's reference
solutions (the warm-up that gives RL a reward signal) and saves it as ``RUN/model.*``.
``train`` starts an RL trainer from such a warm-up (``--init``) or from a local Hugging Face
causal LM (``--hf-model``); it writes ``config.json``, ``metrics.jsonl`` and ``tensorboard/``,
checkpoints, the final policy, ``eval.json`` and ``samples.txt`` (a table of sample
completions). ``--resume`` continues an interrupted run exactly. ``eval`` prints the held-out
greedy accuracy of a run's policy and a table of its completions.

Every command validates its whole configuration before it creates the run directory, so a
bad value is a one-line error that leaves nothing behind; an existing run directory is never
replaced unless ``--overwrite`` (or continued with ``--resume``) is given.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``), ``train`` joins a gloo process
group; rank 0 owns the run directory, logs and prints, and every rank trains on its shard of
each iteration's prompt groups (:mod:`driftlab.core.distributed`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from driftlab.core import distributed
from driftlab.core.config import ConfigError, check_int
from driftlab.core.rundir import RunDir, check_resume, write_json

MODEL = "model"  # the policy's file stem inside a run directory (model.safetensors + model.json)
HF_MODEL = "hf_model"  # a Hugging Face policy's directory inside a run directory
SAMPLES = "samples.txt"
ALGORITHMS = ("grpo", "ppo", "kimi")
SFT_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 128}
"""The warm-up transformer's size where it departs from :class:`TransformerConfig`'s."""


# ----- parsing --------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (``3``, ``1e-3``, ``[1, 2]``, ``true``, ``null``, ``"s"``), or
    else the text itself (``mean``). Nothing is evaluated."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(option: str, pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "beta=0"]`` -> ``{"lr": 0.001, "beta": 0}``; ``option`` names the flag
    in the error for a malformed pair."""
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} takes KEY=VALUE, got {pair!r}")
        values[key.strip()] = parse_value(value.strip())
    return values


def build_config(cls: type, values: dict[str, Any], what: str) -> Any:
    """``cls(**values)`` for a validating dataclass, with an unknown key reported as a
    one-line :class:`ConfigError` listing the allowed ones."""
    allowed = [f.name for f in fields(cls) if f.init]
    unknown = [key for key in values if key not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown {what} option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:  # a check outside core.config, or a missing field
        raise ConfigError(f"{what}: {error}") from None


def make_task(name: str, options: dict[str, Any]) -> Any:
    """:func:`driftlab.llm.tasks.get_task` with its errors as one-line config errors."""
    from driftlab.llm.tasks import TASKS

    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; allowed: {', '.join(TASKS)}")
    return build_config(TASKS[name], options, f"task {name!r}")


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(check_int("threads", threads, minimum=1))


# ----- evaluation -----------------------------------------------------------------------------
def held_out_problems(task: Any, size: int, seed: int = 0) -> list[dict[str, Any]]:
    """``size`` problems of the task's test split (fewer when the split is smaller)."""
    return task.problems(size, "test", seed, allow_fewer=True)


def evaluate_policy(
    policy: Any,
    tokenizer: Any,
    task: Any,
    problems: Sequence[dict[str, Any]],
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Greedy accuracy of ``policy`` on ``problems``, the mean completion length in tokens,
    and every completion (``prompt``, ``completion``, ``answer``, ``correct``)."""
    from driftlab.llm.sft import greedy_completions

    if not problems:
        raise ConfigError("the evaluation needs at least one held-out problem, got none")
    if max_new_tokens is None:  # room for the reference solution and a little more
        longest = max(len(tokenizer.encode(p["solution"], add_eos=True)) for p in problems)
        max_new_tokens = longest + 8
    completions = greedy_completions(
        policy, tokenizer, [p["prompt"] for p in problems], max_new_tokens
    )
    correct = task.score(problems, completions)
    lengths = [len(tokenizer.encode(c, add_eos=True)) for c in completions]
    return {
        "accuracy": sum(correct) / len(correct),
        "mean_length": sum(lengths) / len(lengths),
        "problems": len(problems),
        "samples": [
            {"prompt": p["prompt"], "completion": c, "answer": p["answer"], "correct": s}
            for p, c, s in zip(problems, completions, correct, strict=True)
        ],
    }


def _cell(text: str, width: int) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def samples_table(samples: Sequence[dict[str, Any]], count: int = 5, width: int = 60) -> str:
    """The first ``count`` samples as a text table: prompt, completion (newlines shown as
    ``\\n``, cut at ``width``), expected answer, and whether the completion was correct."""
    rows = [
        (
            _cell(s["prompt"], 24),
            _cell(s["completion"], width),
            _cell(str(s["answer"]), 12),
            "yes" if float(s["correct"]) > 0 else "no",
        )
        for s in list(samples)[:count]
    ]
    header = ("prompt", "completion", "answer", "correct")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header]]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _report_lines(title: str, report: dict[str, Any], count: int) -> str:
    return "\n".join(
        [
            f"{title}: held-out greedy accuracy {report['accuracy']:.3f} on "
            f"{report['problems']} problems, mean completion {report['mean_length']:.1f} tokens",
            samples_table(report["samples"], count),
        ]
    )


# ----- policies -------------------------------------------------------------------------------
def _model_stem(path: str | Path) -> Path:
    """The ``model.*`` stem of a run directory, or ``path`` itself when it is a stem."""
    path = Path(path)
    stem = path / MODEL if path.is_dir() else path
    if not stem.with_suffix(".json").exists():
        raise ConfigError(
            f"no saved model at {str(path)!r}; give a run directory of driftlab llm sft / train "
            "or a model stem (the path of model.json without .json)"
        )
    return stem


def load_policy(
    init: str | None = None, hf_model: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """``(policy, tokenizer, source)`` from a driftlab model (``init``: a run directory or a
    ``model`` stem) or a local Hugging Face directory (``hf_model``); exactly one is given.
    ``source`` records where the policy came from (for ``config.json``)."""
    if (init is None) == (hf_model is None):
        raise ConfigError("give exactly one of --init RUN_OR_MODEL and --hf-model LOCAL_DIR")
    if hf_model is not None:
        from driftlab.llm.hf import load_hf_policy

        if not Path(hf_model).is_dir():
            raise ConfigError(f"--hf-model must be a local model directory, got {hf_model!r}")
        try:
            policy, tokenizer = load_hf_policy(hf_model)
        except ImportError as error:
            raise ConfigError(str(error)) from None
        return policy, tokenizer, {"hf_model": str(Path(hf_model).resolve())}
    from driftlab.llm.model import load_model
    from driftlab.llm.tokenizer import CharTokenizer

    stem = _model_stem(init)
    return load_model(stem), CharTokenizer(), {"init": str(stem.resolve())}


def save_policy(policy: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save the policy into a run directory: ``model.*`` for a :class:`TransformerLM`,
    ``hf_model/`` (model and tokenizer, ``save_pretrained``) for a Hugging Face one."""
    from driftlab.llm.model import TransformerLM, save_model

    if isinstance(policy, TransformerLM):
        save_model(out_dir / MODEL, policy)
    else:
        policy.model.save_pretrained(str(out_dir / HF_MODEL))
        tokenizer.tokenizer.save_pretrained(str(out_dir / HF_MODEL))


def load_run_policy(run: Path) -> tuple[Any, Any]:
    """The final policy a run saved, and its tokenizer."""
    if (run / HF_MODEL).is_dir():
        policy, tokenizer, _ = load_policy(hf_model=str(run / HF_MODEL))
        return policy, tokenizer
    from driftlab.llm.model import load_model
    from driftlab.llm.tokenizer import CharTokenizer

    return load_model(_model_stem(run)), CharTokenizer()


WARMUP = "warmup"
"""Model stem, in a train run, of the warm-up made when neither --init nor --hf-model is given."""


def warm_up(task_name: str, task_options: dict[str, Any], seed: int, stem: Path) -> None:
    """A :class:`TransformerLM` of ``driftlab llm sft``'s default size warmed up by SFT with the
    demo's settings (:data:`driftlab.llm.demo.SFT`: partly competent on 2-digit addition),
    saved at ``stem``; deterministic for a seed, so every process, and a resume, gets the
    same one."""
    from driftlab.core.seeding import seed_everything
    from driftlab.llm.demo import SFT
    from driftlab.llm.model import TransformerConfig, TransformerLM, save_model
    from driftlab.llm.sft import SFTConfig, sft
    from driftlab.llm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer()
    seed_everything(seed)
    model = TransformerLM(TransformerConfig(**SFT_MODEL, vocab_size=tokenizer.vocab_size))
    sft(model, tokenizer, make_task(task_name, task_options), SFTConfig(seed=seed, **SFT))
    if distributed.is_main():
        save_model(stem, model)
    distributed.barrier()


# ----- sft ------------------------------------------------------------------------------------
def run_sft(args: argparse.Namespace) -> None:
    import torch

    from driftlab.core.metrics import MetricsLogger
    from driftlab.core.seeding import seed_everything
    from driftlab.llm.model import TransformerConfig, TransformerLM, save_model
    from driftlab.llm.sft import SFTConfig, sft
    from driftlab.llm.tokenizer import CharTokenizer

    _set_threads(args.threads)
    check_int("eval-size", args.eval_size, minimum=1)
    check_int("samples", args.samples, minimum=0)
    task_options = parse_pairs("--task-option", args.task_option)
    task = make_task(args.task, task_options)
    tokenizer = CharTokenizer()
    model_values = SFT_MODEL | parse_pairs("--model-set", args.model_set)
    model_config = build_config(
        TransformerConfig, {**model_values, "vocab_size": tokenizer.vocab_size}, "model"
    )
    sft_config = build_config(
        SFTConfig, {"seed": args.seed, **parse_pairs("--set", args.set)}, "sft"
    )
    problems = held_out_problems(task, args.eval_size)
    config = {
        "command": "llm sft",
        "task": args.task,
        "task_options": task_options,
        "model": model_config.to_dict(),
        "sft": asdict(sft_config),
        "eval_size": args.eval_size,
        "seed": args.seed,
        "threads": args.threads,
    }
    run_dir = args.run_dir or f"runs/llm/sft-{args.task}"
    run = RunDir.create(run_dir, config, overwrite=args.overwrite, resumable=False)
    with run:
        seed_everything(args.seed)
        model = TransformerLM(model_config)
        with MetricsLogger(run.path, tensorboard=True) as logger:
            try:
                sft(model, tokenizer, task, sft_config, logger=logger)
            except KeyboardInterrupt:
                print(f"interrupted; nothing saved in {run.path} (rerun with --overwrite)")
                raise
        save_model(run.path / MODEL, model)
        with torch.no_grad():
            report = evaluate_policy(model, tokenizer, task, problems)
        _write_report(run.path, report)
        print(_report_lines(f"sft on {args.task}", report, args.samples))
        print(f"outputs in {run.path}")


def _write_report(out: Path, report: dict[str, Any]) -> None:
    write_json(out / "eval.json", report)
    (out / SAMPLES).write_text(samples_table(report["samples"], len(report["samples"])) + "\n")


# ----- train ----------------------------------------------------------------------------------
def _trainer_class(name: str) -> type:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; allowed: {', '.join(ALGORITHMS)}")
    from driftlab.llm.trainer import get_trainer

    return get_trainer(name)


def _create_run_everywhere(run_dir: str, config: dict[str, Any], **options: Any) -> RunDir:
    """Rank 0 creates (or reopens) the run directory; its error, if any, is raised on every
    rank, so no rank waits forever for one that gave up."""
    run, error = None, None
    if distributed.is_main():
        try:
            run = RunDir.create(run_dir, config, **options)
        except ConfigError as err:
            error = str(err)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise ConfigError(error)
    if run is None:  # another rank: the directory exists now, rank 0 records its status
        run = RunDir(Path(run_dir), distributed.broadcast_object(None))
    else:
        distributed.broadcast_object(run.config)
    return run


def run_train(args: argparse.Namespace) -> None:
    _set_threads(args.threads)
    joined = distributed.init_from_env("gloo")
    try:
        _train(args)
    except BaseException:
        if joined:
            distributed.shutdown(wait=False)
        raise
    if joined:
        distributed.shutdown()


def _train(args: argparse.Namespace) -> None:
    cls = _trainer_class(args.algo)
    run_dir = args.run_dir or f"runs/llm/{args.algo}-{args.task}"
    if args.resume:
        given = [
            flag
            for flag, value in (
                ("--set", args.set),
                ("--task-option", args.task_option),
                ("--init", args.init),
                ("--hf-model", args.hf_model),
                ("--steps", args.steps),
            )
            if value
        ]
        check_resume(run_dir, args.algo, given)
        run = _create_run_everywhere(run_dir, {}, resume=True)
        config = run.config
        logger = _main_logger(run)
        trainer = _resume_trainer(cls, run, config, logger)
    else:
        values = {"seed": args.seed, **parse_pairs("--set", args.set)}
        values["task"] = args.task
        values["task_options"] = parse_pairs("--task-option", args.task_option)
        if args.steps is not None:
            values["steps"] = args.steps
        trainer_config = build_config(cls.config_class, values, args.algo)
        warm = args.init is None and args.hf_model is None
        if warm:  # checked before the run directory exists
            warm_stem = Path(run_dir).resolve() / WARMUP
            source = {"init": str(warm_stem), "warm_up": "sft, driftlab.llm.demo.SFT"}
        else:
            policy, tokenizer, source = load_policy(args.init, args.hf_model)
        config = {
            "command": "llm train",
            "algorithm": args.algo,
            "source": source,
            "trainer": trainer_config.to_dict(),
            "samples": args.samples,
            "threads": args.threads,
            "world_size": distributed.world_size(),
        }
        run = _create_run_everywhere(run_dir, config, overwrite=args.overwrite)
        if warm:
            if distributed.is_main():
                print(f"no --init or --hf-model: warming up a TransformerLM by SFT on {args.task}")
            warm_up(args.task, values["task_options"], args.seed, warm_stem)
            policy, tokenizer, _ = load_policy(init=str(warm_stem))
        # Every rank starts from rank 0's weights (they are equal when loaded from one file;
        # this also covers a model whose loading draws random numbers).
        distributed.broadcast_parameters_(list(policy.parameters()))
        logger = _main_logger(run)
        trainer = cls(policy, tokenizer, trainer_config, run_dir=run.path, logger=logger)
    try:
        with _MainRunStatus(run):
            if trainer.step_count < trainer.config.steps:
                try:
                    trainer.train(show_progress=distributed.is_main())
                except KeyboardInterrupt:
                    if distributed.is_main():
                        print(
                            f"interrupted after iteration {trainer.step_count} of "
                            f"{trainer.config.steps}; checkpoint saved in {run.path}; "
                            "continue with --resume"
                        )
                    raise
            if distributed.is_main():
                report = trainer_report(trainer)
                save_policy(trainer.policy, trainer.tokenizer, run.path)
                _write_report(run.path, report)
                title = f"{args.algo} on {trainer.config.task}, {trainer.step_count} iterations"
                print(_report_lines(title, report, config.get("samples", 5)))
                print(f"outputs in {run.path}")
    finally:
        if logger is not None:
            logger.close()


def _main_logger(run: RunDir) -> Any:
    """JSONL + TensorBoard metrics, written by rank 0 only."""
    from driftlab.core.metrics import MetricsLogger

    return MetricsLogger(run.path, tensorboard=True) if distributed.is_main() else None


def _resume_trainer(cls: type, run: RunDir, config: dict[str, Any], logger: Any) -> Any:
    """The trainer of an interrupted run, from its checkpoint (exactly where it stopped), or
    afresh from the saved configuration when it stopped before the first checkpoint."""
    from driftlab.llm.trainer import CHECKPOINT_NAME

    source = config.get("source", {})
    policy, tokenizer = None, None
    if "hf_model" in source:  # not rebuilt from the checkpoint: load it, then its weights
        policy, tokenizer, _ = load_policy(hf_model=source["hf_model"])
    if (run.path / f"{CHECKPOINT_NAME}.json").exists():
        trainer = cls.resume(
            run.path, policy=policy, tokenizer=tokenizer, run_dir=run.path, logger=logger
        )
        _drop_records_after(run.path / "metrics.jsonl", trainer.step_count)
        return trainer
    if policy is None:
        if "warm_up" in source and not Path(source["init"] + ".json").exists():
            trainer_values = config["trainer"]
            warm_up(
                trainer_values["task"],
                trainer_values["task_options"],
                trainer_values["seed"],
                Path(source["init"]),
            )
        policy, tokenizer, _ = load_policy(init=source["init"])
    trainer_config = build_config(cls.config_class, config["trainer"], config["algorithm"])
    _drop_records_after(run.path / "metrics.jsonl", 0)
    return cls(policy, tokenizer, trainer_config, run_dir=run.path, logger=logger)


def _drop_records_after(metrics: Path, step: int) -> None:
    """Forget the records logged after the checkpoint a run resumes from: those iterations
    are trained again, and logged again."""
    if not metrics.exists() or not distributed.is_main():
        return
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    metrics.write_text("".join(kept), encoding="utf-8")


def trainer_report(trainer: Any) -> dict[str, Any]:
    """:meth:`RLTrainer.evaluate` on all of its held-out problems, in :func:`evaluate_policy`'s
    format (accuracy, mean length, every completion with its expected answer)."""
    problems = trainer.eval_problems
    samples_wanted = trainer.config.eval_samples
    trainer.config.eval_samples = len(problems)
    try:
        result = trainer.evaluate()
    finally:
        trainer.config.eval_samples = samples_wanted
    samples = [
        {**s, "answer": p["answer"]} for p, s in zip(problems, result["samples"], strict=True)
    ]
    return {
        "accuracy": result["eval_accuracy"],
        "mean_length": result["eval_length"],
        "mean_reward": result["eval_reward"],
        "problems": len(problems),
        "samples": samples,
    }


class _MainRunStatus:
    """``with run:`` on rank 0 only (the other ranks must not write run.json)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def __enter__(self) -> RunDir:
        return self.run

    def __exit__(self, *exc: Any) -> None:
        if distributed.is_main():
            self.run.__exit__(*exc)


# ----- eval -----------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> None:
    import torch

    _set_threads(args.threads)
    check_int("size", args.size, minimum=1)
    check_int("samples", args.samples, minimum=0)
    if args.max_new_tokens is not None:
        check_int("max-new-tokens", args.max_new_tokens, minimum=1)
    run = Path(args.run)
    saved = run / "config.json"
    if not saved.exists():
        raise ConfigError(f"{args.run!r} is not a run directory of driftlab llm (no config.json)")
    config = json.loads(saved.read_text(encoding="utf-8"))
    if config.get("command") == "llm sft":
        task_name, task_options = config["task"], config["task_options"]
    elif config.get("command") == "llm train":
        task_name = config["trainer"]["task"]
        task_options = config["trainer"]["task_options"]
        if args.max_new_tokens is None:  # the budget the run trained and evaluated with
            args.max_new_tokens = config["trainer"]["max_new_tokens"]
    else:
        raise ConfigError(f"{args.run!r} is not a run of driftlab llm sft or train")
    task = make_task(task_name, task_options)
    policy, tokenizer = load_run_policy(run)
    with torch.no_grad():
        report = evaluate_policy(
            policy, tokenizer, task, held_out_problems(task, args.size), args.max_new_tokens
        )
    _write_report(run, report)
    print(_report_lines(f"{args.run}", report, args.samples))
    print(f"wrote {run / 'eval.json'} and {run / SAMPLES}")


# ----- parsers --------------------------------------------------------------------------------
def option_defaults(cls: type, skip: Sequence[str] = ()) -> str:
    """``name=default`` of every field of a config dataclass, for ``--help``."""
    from dataclasses import MISSING

    shown = []
    for f in fields(cls):
        if not f.init or f.name in skip:
            continue
        if f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            continue
        shown.append(f"{f.name}={json.dumps(value)}")
    return ", ".join(shown)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def add_parser(families: argparse._SubParsersAction, formatter: type) -> None:
    import textwrap

    from driftlab.llm.model import TransformerConfig
    from driftlab.llm.sft import SFTConfig
    from driftlab.llm.trainer import get_trainer

    trainer_options = "\n\n".join(
        textwrap.fill(
            f"{name} (--set KEY=VALUE): "
            + option_defaults(get_trainer(name).config_class, ("task", "task_options")),
            width=92,
        )
        for name in ALGORITHMS
    )
    llm = families.add_parser(
        "llm",
        help="RL for language models with verifiable rewards",
        description="Supervised warm-up, then GRPO, PPO with a value model or Kimi k1.5 "
        "mirror descent on verifiable tasks (addition, multiplication, countdown), on the "
        "built-in transformer or a local Hugging Face causal LM.",
        formatter_class=formatter,
    )
    verbs = llm.add_subparsers(dest="verb", required=True, metavar="VERB")

    sft = verbs.add_parser(
        "sft",
        help="supervised warm-up of the built-in transformer on a task",
        description="Train a TransformerLM from scratch on the task's reference "
        "chain-of-thought solutions, then report its held-out greedy accuracy. Writes "
        "config.json, metrics.jsonl, TensorBoard logs, model.safetensors + model.json (the "
        "--init of driftlab llm train), eval.json and samples.txt.",
        formatter_class=formatter,
    )
    sft.add_argument("--task", default="addition", help="addition, multiplication or countdown")
    sft.add_argument(
        "--task-option", action="append", metavar="KEY=VALUE",
        help="task difficulty (repeatable), e.g. --task-option digits=2 (addition/"
        "multiplication: digits, min_digits; countdown: count, max_number, max_target; all: "
        "test_fraction, split_seed, chain_of_thought); default: the task's own",
    )  # fmt: skip
    model_defaults = {f.name: f.default for f in fields(TransformerConfig)} | SFT_MODEL
    sft.add_argument(
        "--model-set", action="append", metavar="KEY=VALUE",
        help="transformer size (repeatable); defaults: "
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in model_defaults.items() if k != "vocab_size"),
    )  # fmt: skip
    sft.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="SFT hyperparameter (repeatable); defaults: "
        + option_defaults(SFTConfig, ("seed",)),
    )  # fmt: skip
    sft.add_argument("--seed", type=int, default=0, help="seed of the weights and batches")
    sft.add_argument("--eval-size", type=int, default=200, help="held-out problems evaluated")
    sft.add_argument("--samples", type=int, default=5, help="completions printed")
    sft.add_argument(
        "--run-dir", default=None, help="output directory (default: runs/llm/sft-TASK)"
    )
    sft.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    _common(sft)
    sft.set_defaults(handler=run_sft)

    train = verbs.add_parser(
        "train",
        help="RL training of a language model (grpo, ppo, kimi)",
        description="Train a policy with ALGO on a verifiable task, starting from a "
        "driftlab warm-up (--init) or a local Hugging Face causal LM (--hf-model). The "
        "algorithm's tuned defaults live in its config class; --set changes them (values "
        "are JSON, never evaluated). Writes config.json, metrics.jsonl, TensorBoard logs, "
        "checkpoints, the final policy, eval.json and samples.txt; checkpoints on Ctrl-C and "
        "--resume continues exactly. Under torchrun --nproc_per_node N every rank trains on "
        "its shard of the prompt groups (gloo).",
        epilog="Each algorithm's options and their defaults:\n\n" + trainer_options,
        formatter_class=formatter,
    )
    train.add_argument("algo", metavar="ALGO", help="grpo, ppo or kimi")
    train.add_argument("--task", default="addition", help="addition, multiplication or countdown")
    train.add_argument(
        "--task-option", action="append", metavar="KEY=VALUE",
        help="task difficulty (repeatable), e.g. --task-option digits=2; default: the task's own",
    )  # fmt: skip
    train.add_argument(
        "--init", default=None, metavar="RUN_OR_MODEL",
        help="the starting policy: a run directory of driftlab llm sft (or train), or a model "
        "stem (path of model.json without .json); or give --hf-model instead; with neither, "
        "a TransformerLM is first warmed up by SFT (the demo's settings)",
    )  # fmt: skip
    train.add_argument(
        "--hf-model", default=None, metavar="LOCAL_DIR",
        help="a local Hugging Face causal LM directory (model + tokenizer) as the starting "
        "policy; never downloads",
    )  # fmt: skip
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE",
        help="override a trainer option (repeatable; JSON values), e.g. --set lr=1e-4 "
        "--set beta=0 --set group_size=8; the options and defaults are listed below",
    )  # fmt: skip
    train.add_argument(
        "--steps", type=int, default=None, help="RL iterations (default: the config's)"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of sampling and problems")
    train.add_argument("--samples", type=int, default=5, help="completions printed at the end")
    train.add_argument(
        "--run-dir", default=None, help="output directory (default: runs/llm/ALGO-TASK)"
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    _common(train)
    train.set_defaults(handler=run_train)

    evaluate = verbs.add_parser(
        "eval",
        help="held-out accuracy and sample completions of a run",
        description="Greedy-decode held-out problems of the run's task with the run's final "
        "policy; print the accuracy and a table of completions; write RUN/eval.json and "
        "RUN/samples.txt.",
        formatter_class=formatter,
    )
    evaluate.add_argument("run", metavar="RUN", help="run directory of driftlab llm sft / train")
    evaluate.add_argument("--size", type=int, default=200, help="held-out problems evaluated")
    evaluate.add_argument("--samples", type=int, default=5, help="completions printed")
    evaluate.add_argument(
        "--max-new-tokens", type=int, default=None,
        help="generation budget (default: a train run's max_new_tokens; for an sft run the "
        "longest reference solution plus 8 tokens)",
    )  # fmt: skip
    _common(evaluate)
    evaluate.set_defaults(handler=run_eval)
