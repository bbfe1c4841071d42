"""GRPO step throughput, driftlab against TRL's ``GRPOTrainer`` on the same tiny model.

Both sides train the same tiny random GPT-2 (built from a config here, saved to a temporary
directory with a character-level tokenizer and loaded back from that local path; nothing is
downloaded) on the same addition prompts at the same settings: ``prompts`` prompts per step,
``group`` completions per prompt, ``max_new_tokens``, temperature 1, top-p 1, mu = 1 (one
optimiser step per batch, so neither side recomputes the old log-probs), KL coefficient
``beta`` (so both run the frozen reference model), the DeepSeekMath per-sequence loss
(TRL ``loss_type="grpo"``), group-scaled advantages, the task's correctness reward alone,
AdamW, gradient clipping at 1, float32, no gradient checkpointing, no dropout (TRL's own
defaults turn gradient checkpointing and bfloat16 on; both are off here, as on our side). A
step is everything one optimiser step costs: sampling with the KV cache, rewards, the
reference forward, the policy forward and backward, the optimiser step. ``CASES`` are the
model sizes: the GPT-2 of the project's HF tests (2 layers, width 32), where per-call
overheads dominate, and a wider one (4 layers, width 128), where the matrix products do.

One torch thread, CPU, one process. The two libraries alternate within each repetition
(which goes first alternates between repetitions); each repetition builds a fresh trainer
from the saved model, runs ``warmup`` untimed steps, then ``steps`` timed ones. Per step we
record wall time and the process's CPU time (``time.process_time``: on a shared machine,
other processes stretch wall time but not CPU time) and the completion tokens sampled
(``<eos>`` included, padding excluded). Throughput is samples (completions) per second and
completion tokens per second; the ratio is driftlab / TRL (above 1: driftlab is faster).
TRL's steps are timed by a ``TrainerCallback`` from ``on_step_begin`` to ``on_step_end``
(its dataloader fetch of the prompt strings falls outside; generation is inside).

Needs the ``bench`` extra (``trl``) and ``transformers``; without them the script says so and
exits 0 without a record. Prints one JSON line per (case, library, repetition) and a summary
line per case. ``--phases`` adds each phase's CPU milliseconds per step (generation,
reference, policy forward, backward, optimiser, rewards, other) to the records.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from driftlab.llm import get_task

SETTINGS: dict[str, Any] = {
    "task": "addition",
    "prompts": 8,  # prompts per step
    "group": 8,  # completions per prompt (GRPO's G)
    "max_new_tokens": 32,
    "temperature": 1.0,
    "beta": 0.04,  # TRL's former default; > 0 so both sides run the reference model
    "lr": 1e-5,
    "length_chunks": 2,  # driftlab's length-bucketed log-prob passes
    "warmup": 2,
    "steps": 6,
    "repeats": 3,
}
# Model sizes (random GPT-2s): the size of the project's HF tests, where per-call overheads
# dominate, and a wider one, where the matrix products do.
CASES: dict[str, dict[str, int]] = {
    "gpt2-2x32": {"layers": 2, "heads": 2, "width": 32},
    "gpt2-4x128": {"layers": 4, "heads": 4, "width": 128},
}


def missing_dependencies() -> str | None:
    """Why the benchmark cannot run here, or ``None``."""
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as error:
        return (
            f"{error}; the llm_speed benchmark needs transformers and trl: "
            "pip install -e '.[llm,bench]' (or make bench)"
        )
    return None


def build_model(directory: Path, settings: dict[str, Any]) -> None:
    """A random GPT-2 with our character vocabulary, saved with its tokenizer to ``directory``.

    The tokenizer splits one token per character (the answer tags are one token each, as in
    :class:`~driftlab.llm.tokenizer.CharTokenizer`) and adds ``<bos>`` in front, so TRL's
    ``tokenizer(prompts)`` and driftlab's ``HFTokenizer.batch_encode`` give the same ids.
    """
    from driftlab.llm.hf import char_gpt2, save_char_tokenizer

    save_char_tokenizer(directory, prepend_bos=True)
    torch.manual_seed(0)
    model = char_gpt2(
        n_layer=settings["layers"],
        n_head=settings["heads"],
        n_embd=settings["width"],
        n_positions=128,
        dropout=0.0,
    )
    model.save_pretrained(directory)


def prompt_problems(settings: dict[str, Any], steps: int, seed: int) -> list[dict]:
    """Distinct training problems, enough for ``steps`` steps without repeating a prompt."""
    task = get_task(settings["task"])
    return task.problems(settings["prompts"] * steps, split="train", seed=seed)


class _Clock:
    """Wall and CPU seconds of one step."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


class Phases:
    """CPU seconds spent in each phase of a step, by wrapping the functions that do them.

    ``generate`` is sampling (TRL: ``transformers`` ``generate``); ``reference`` and
    ``policy forward`` are the log-prob passes without and with gradients; ``rewards``
    decodes and scores; ``backward`` is ``Tensor.backward``; ``optimizer`` is gradient
    clipping and the optimiser step; ``other`` is the rest of the step.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[tuple[Any, str, Any]] = []
        self._hooks: list[Any] = []
        self._optimizer_start = 0.0

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def wrap(self, owner: Any, attr: str, name: str | None) -> None:
        """Time ``owner.attr``; ``name=None`` splits by grad mode (reference / policy)."""
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name or ("policy forward" if torch.is_grad_enabled() else "reference")
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self._add(label, time.process_time() - start)

        self._undo.append((owner, attr, original))
        setattr(owner, attr, timed)

    def __enter__(self) -> Phases:
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        def pre(*_: Any) -> None:
            self._optimizer_start = time.process_time()

        def post(*_: Any) -> None:
            self._add("optimizer", time.process_time() - self._optimizer_start)

        self._hooks = [
            register_optimizer_step_pre_hook(pre),
            register_optimizer_step_post_hook(post),
        ]
        self.wrap(torch.Tensor, "backward", "backward")
        self.wrap(torch.nn.utils, "clip_grad_norm_", "optimizer")
        return self

    def __exit__(self, *_: Any) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        for hook in self._hooks:
            hook.remove()
        self._undo, self._hooks = [], []

    def per_step(self, total_cpu: float, steps: int) -> dict[str, float]:
        """Milliseconds per step of each phase, ``other`` the remainder of ``total_cpu``."""
        out = {k: round(1000 * v / steps, 2) for k, v in sorted(self.seconds.items())}
        out["other"] = round(1000 * (total_cpu - sum(self.seconds.values())) / steps, 2)
        return out


def run_trl(
    model_dir: Path, settings: dict[str, Any], seed: int, phases: Phases | None = None
) -> dict[str, list[float]]:
    """Per-step wall/CPU seconds and completion tokens of TRL's GRPOTrainer."""
    import datasets
    import transformers
    import trl

    task = get_task(settings["task"])
    steps = settings["warmup"] + settings["steps"]
    problems = prompt_problems(settings, steps, seed)
    dataset = datasets.Dataset.from_list(
        [{"prompt": p["prompt"], "target": p["target"]} for p in problems]
    )
    rows = settings["prompts"] * settings["group"]
    tokens: list[float] = []

    def count_tokens(prompts: list[str], completions: list[str], completion_ids, **_: Any):
        # A reward function that scores nothing (None abstains): it only counts tokens.
        tokens.append(float(sum(len(ids) for ids in completion_ids)))
        return [None] * len(completions)

    clock = _Clock()

    class StepClock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if phases is not None and state.global_step == settings["warmup"]:
                phases.seconds.clear()
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.stop()

    with tempfile.TemporaryDirectory() as out:
        config = trl.GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=rows,
            gradient_accumulation_steps=1,
            num_generations=settings["group"],
            max_completion_length=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=1.0,
            top_k=0,
            num_iterations=1,
            beta=settings["beta"],
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=settings["lr"],
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            max_steps=steps,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            seed=seed,
            logging_steps=10**6,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            log_completions=False,
            shuffle_dataset=False,
            dataloader_num_workers=0,
        )
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), local_files_only=True
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True
        )
        tokenizer.padding_side = "left"
        trainer = trl.GRPOTrainer(
            model=model,
            reward_funcs=[task.reward_functions[0], count_tokens],
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        torch.set_num_threads(1)
        if phases is None:
            trainer.train()
        else:
            with phases:
                phases.wrap(trl.GRPOTrainer, "_generate_single_turn", "generate")
                phases.wrap(trl.GRPOTrainer, "_get_per_token_logps_and_entropies", None)
                phases.wrap(trl.GRPOTrainer, "_calculate_rewards", "rewards")
                trainer.train()
    return _timed(clock, tokens, settings)


def run_driftlab(
    model_dir: Path, settings: dict[str, Any], seed: int, phases: Phases | None = None
) -> dict[str, list[float]]:
    """Per-step wall/CPU seconds and completion tokens of driftlab's GRPO trainer."""
    from driftlab.llm.grpo import GRPOConfig, GRPOTrainer
    from driftlab.llm.hf import load_hf_policy

    policy, tokenizer = load_hf_policy(model_dir)
    steps = settings["warmup"] + settings["steps"]
    rows = settings["prompts"] * settings["group"]
    config = GRPOConfig(
        task=settings["task"],
        steps=steps,
        prompts_per_step=settings["prompts"],
        group_size=settings["group"],
        max_new_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
        top_p=1.0,
        mu=1,
        beta=settings["beta"],
        aggregation="sequence-mean",
        scale="group",
        lr=settings["lr"],
        weight_decay=0.0,
        grad_clip=1.0,
        train_size=settings["prompts"] * steps,
        seed=seed,
        # Reference and policy passes over rows grouped by completion length (an option of
        # ours, default 1; TRL pads the whole batch to its longest completion).
        length_chunks=settings["length_chunks"],
    )
    trainer = GRPOTrainer(policy, tokenizer, config)
    torch.set_num_threads(1)
    clock = _Clock()
    tokens: list[float] = []
    with contextlib.ExitStack() as stack:
        if phases is not None:
            import driftlab.llm.trainer as base

            stack.enter_context(phases)
            phases.wrap(base, "generate", "generate")
            phases.wrap(base, "sequence_log_probs", None)
            phases.wrap(base.RLTrainer, "score", "rewards")
            phases.wrap(base.RLTrainer, "decode", "rewards")
        for step in range(steps):
            if phases is not None and step == settings["warmup"]:
                phases.seconds.clear()
            clock.start()
            metrics = trainer.step()
            clock.stop()
            tokens.append(metrics["response_length"] * rows)
    return _timed(clock, tokens, settings)


def _timed(clock: _Clock, tokens: list[float], settings: dict[str, Any]) -> dict[str, list[float]]:
    """The timed steps (after the warm-up) as lists of per-step numbers."""
    steps, warmup = settings["steps"], settings["warmup"]
    if len(clock.wall) != warmup + steps or len(tokens) != warmup + steps:
        raise RuntimeError(
            f"expected {warmup + steps} steps, timed {len(clock.wall)} with {len(tokens)} "
            "token counts"
        )
    return {
        "wall_s": clock.wall[warmup:],
        "cpu_s": clock.cpu[warmup:],
        "tokens": tokens[warmup:],
    }


RUNNERS = {"trl": run_trl, "driftlab": run_driftlab}


def _silence_progress_bars() -> None:
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


@contextlib.contextmanager
def _quiet():
    """TRL and transformers print warnings and banners; keep stdout for the JSON lines."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def record(
    case: str, library: str, repeat: int, timed: dict[str, list[float]], settings: dict
) -> dict:
    samples = settings["prompts"] * settings["group"] * len(timed["wall_s"])
    tokens = sum(timed["tokens"])
    wall, cpu = sum(timed["wall_s"]), sum(timed["cpu_s"])
    return {
        "benchmark": "llm_speed",
        "case": case,
        "library": library,
        "repeat": repeat,
        "steps": len(timed["wall_s"]),
        "samples": samples,
        "tokens": int(tokens),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "samples_per_s_wall": round(samples / wall, 2),
        "samples_per_s_cpu": round(samples / cpu, 2),
        "tokens_per_s_wall": round(tokens / wall, 1),
        "tokens_per_s_cpu": round(tokens / cpu, 1),
    }


METRICS = ("samples_per_s_cpu", "tokens_per_s_cpu", "samples_per_s_wall", "tokens_per_s_wall")


def summary(case: str, records: list[dict], settings: dict[str, Any]) -> dict:
    """Mean throughput of each library and the mean driftlab / TRL ratio of the repetitions
    (each repetition's two runs were measured back to back, so their ratio is the paired
    comparison)."""
    out: dict[str, Any] = {
        "benchmark": "llm_speed",
        "case": case,
        "library": "ratio",
        "settings": {**settings, **CASES[case]},
    }
    for key in METRICS:
        by = {lib: [r[key] for r in records if r["library"] == lib] for lib in ("trl", "driftlab")}
        for lib, values in by.items():
            out[f"{lib}_{key}"] = round(statistics.mean(values), 2) if values else None
        out[f"ratio_{key}"] = None
        if by["trl"] and len(by["driftlab"]) == len(by["trl"]):
            ratios = [d / t for d, t in zip(by["driftlab"], by["trl"], strict=True)]
            out[f"ratio_{key}"] = round(statistics.mean(ratios), 3)
            if len(ratios) > 1:
                out[f"ratio_{key}_std"] = round(statistics.stdev(ratios), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, value in SETTINGS.items():
        if key != "task":
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument("--only", choices=sorted(RUNNERS), help="run one library only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phases", action="store_true", help="also time each phase of a step (CPU ms per step)"
    )
    args = parser.parse_args()
    settings = {k: getattr(args, k, v) for k, v in SETTINGS.items()}
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; available: {', '.join(CASES)}")
    why = missing_dependencies()
    if why is not None:
        print(f"llm_speed skipped: {why}", file=sys.stderr)
        return
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _silence_progress_bars()
    libraries = [args.only] if args.only else ["trl", "driftlab"]
    for case in cases:
        records = []
        with tempfile.TemporaryDirectory() as directory:
            model_dir = Path(directory)
            with _quiet():
                build_model(model_dir, {**settings, **CASES[case]})
            for repeat in range(settings["repeats"]):
                order = libraries if repeat % 2 == 0 else libraries[::-1]
                for library in order:
                    try:
                        phases = Phases() if args.phases else None
                        with _quiet():
                            timed = RUNNERS[library](
                                model_dir, settings, args.seed + repeat, phases
                            )
                    except ImportError as error:
                        # driftlab's GRPO trainer is missing from this checkout: say so, and
                        # still measure TRL.
                        rec = {"benchmark": "llm_speed", "case": case, "library": library}
                        rec["unavailable"] = f"{type(error).__name__}: {error}"
                        print(json.dumps(rec), flush=True)
                        continue
                    rec = record(case, library, repeat, timed, settings)
                    if phases is not None:
                        rec["phases_cpu_ms_per_step"] = phases.per_step(rec["cpu_s"], rec["steps"])
                    records.append(rec)
                    print(json.dumps(rec), flush=True)
                    print(
                        f"{case} {library} repeat {repeat}: {rec['samples_per_s_cpu']:.1f} "
                        f"samples per CPU s, {rec['samples_per_s_wall']:.1f} per wall s",
                        file=sys.stderr,
                        flush=True,
                    )
        print(json.dumps(summary(case, records, settings)), flush=True)


def markdown(records: list[dict]) -> str:
    summaries = [r for r in records if r.get("library") == "ratio"]
    if not summaries:
        return "No llm_speed results yet: `python benchmarks/run_all.py llm_speed`.\n"
    lines = [
        "| model | TRL samples/s | driftlab samples/s | TRL tokens/s | driftlab tokens/s | "
        "ratio (CPU time) | ratio (wall time) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['case']} | {_fmt(s['trl_samples_per_s_cpu'])} | "
            f"{_fmt(s['driftlab_samples_per_s_cpu'])} | {_fmt(s['trl_tokens_per_s_cpu'], 0)} | "
            f"{_fmt(s['driftlab_tokens_per_s_cpu'], 0)} | "
            f"{_ratio(s, 'samples_per_s_cpu')} | {_ratio(s, 'samples_per_s_wall')} |"
        )
    s = summaries[0]["settings"]
    lines.append(
        f"\nThroughput per CPU second of the process (wall-clock ratios beside them; the "
        f"machine is shared). GRPO steps on random GPT-2s (`gpt2-LxW`: L layers, width W, "
        f"character vocabulary of 24), {s['prompts']} addition prompts x {s['group']} "
        f"completions per step, up to {s['max_new_tokens']} new tokens, temperature "
        f"{s['temperature']}, mu = 1, beta = {s['beta']}, float32, one torch thread, CPU, both "
        f"libraries in the same process. Mean over {s['repeats']} interleaved repetitions of "
        f"{s['steps']} timed steps after {s['warmup']} warm-up steps; ratio is driftlab / TRL "
        "(mean ± std over repetitions). A step is sampling, rewards, the reference forward, "
        "the policy forward and backward and the optimiser step; tokens are completion "
        "tokens (`<eos>` included)."
    )
    return "\n".join(lines) + "\n"


def _ratio(summary_record: dict, key: str) -> str:
    value = summary_record.get(f"ratio_{key}")
    if value is None:
        return "n/a"
    std = summary_record.get(f"ratio_{key}_std")
    return f"{value:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


if __name__ == "__main__":
    main()
