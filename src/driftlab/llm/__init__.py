"""RL for language models with verifiable rewards: tokenizer, tasks and rewards, a small
causal LM (or a Hugging Face one through :mod:`driftlab.llm.hf`), group sampling with
log-probs, supervised warm-up, and the RL trainers (:mod:`driftlab.llm.trainer`'s shared
loop; GRPO in :mod:`driftlab.llm.grpo`)."""

from driftlab.llm.expression import Expression, ExpressionError, evaluate, parse_expression
from driftlab.llm.generation import (
    Rollout,
    generate,
    inverse_cdf_sample,
    sample_tokens,
    sequence_log_probs,
)
from driftlab.llm.grpo import GRPOConfig, GRPOTrainer, grpo_config
from driftlab.llm.kimi import KimiConfig, KimiTrainer, kimi_config
from driftlab.llm.model import TransformerConfig, TransformerLM, load_model, save_model
from driftlab.llm.ppo import PPOConfig, PPOTrainer, ppo_config
from driftlab.llm.rewards import (
    answer_reward,
    combine_rewards,
    correctness_reward,
    countdown_reward,
    extract_answer,
    format_reward,
)
from driftlab.llm.sft import SFTConfig, greedy_accuracy, sft
from driftlab.llm.tasks import TASKS, Task, get_task, solve_countdown
from driftlab.llm.tokenizer import CharTokenizer, Tokenizer
from driftlab.llm.trainer import TRAINERS, Experience, RLConfig, RLTrainer, get_trainer

__all__ = [
    "TASKS",
    "TRAINERS",
    "CharTokenizer",
    "Experience",
    "Expression",
    "ExpressionError",
    "GRPOConfig",
    "GRPOTrainer",
    "KimiConfig",
    "KimiTrainer",
    "PPOConfig",
    "PPOTrainer",
    "RLConfig",
    "RLTrainer",
    "Rollout",
    "SFTConfig",
    "Task",
    "Tokenizer",
    "TransformerConfig",
    "TransformerLM",
    "answer_reward",
    "combine_rewards",
    "correctness_reward",
    "countdown_reward",
    "evaluate",
    "extract_answer",
    "format_reward",
    "generate",
    "get_task",
    "get_trainer",
    "greedy_accuracy",
    "grpo_config",
    "inverse_cdf_sample",
    "kimi_config",
    "load_model",
    "parse_expression",
    "ppo_config",
    "sample_tokens",
    "save_model",
    "sequence_log_probs",
    "sft",
    "solve_countdown",
]
