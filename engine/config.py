"""Recipe configuration: OmegaConf YAML + command-line `key=value` overrides, merged once into typed,
frozen dataclasses (one per component). Every default lives here; code never calls `cfg.get(key, default)`.

Each layer (recipe file, then the command line) is checked on its own, so an error names where the bad
key came from: `recipes/x.yaml: optim.lr: expected a float, got 'fast'`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

REQUIRED: Any = dataclasses.MISSING
_UNSET = "???"  # OmegaConf's marker for a value the recipe leaves to the command line


class ConfigError(ValueError):
    """A recipe or override is invalid; the message is one line naming the source, the key and what is allowed."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    iterations: int = 10
    resume: bool = False  # continue from the newest valid checkpoint in runs/<name>/checkpoints
    overwrite: bool = False  # a fresh run may replace an existing runs/<name>/ (else it is an error)
    checkpoint_every: int = 0  # 0 = only at the end
    keep_checkpoints: int = 2
    deterministic: bool = False  # fix reduction orders so equal inputs give equal bits
    cache_dir: str = ".cache/cadence"  # where the embedded default model is built
    progress: bool = True  # progress bars (training, evaluations); the per-iteration console line is logging's
    # Experiment trackers besides metrics.jsonl (engine/tracking/). None: tensorboard when it is installed (a
    # note otherwise); a list: exactly those ([] = none), and a listed one that is not installed is an error.
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] | None = None
    project: str = "cadence"  # the wandb project and the mlflow experiment the run is filed under
    # mlflow only: where runs are stored; "" = sqlite:///<run folder>/mlflow.db (MLflow's local store)
    mlflow_tracking_uri: str = ""
    log_samples: int = 2  # groups per iteration written to samples.jsonl (prompt, completions, rewards); 0 = off

    def __post_init__(self) -> None:
        if self.log_samples < 0:
            raise ConfigError(f"run.log_samples: must be >= 0 (0 = off), got {self.log_samples}")
        if self.loggers is not None and len(set(self.loggers)) != len(self.loggers):
            raise ConfigError(f"run.loggers: each logger at most once, got {self.loggers}")
        if self.mlflow_tracking_uri and "mlflow" not in (self.loggers or ()):
            raise ConfigError("run.mlflow_tracking_uri: only read with mlflow in run.loggers")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: Literal["auto", "cpu", "cuda", "ascend"] = "auto"
    threads: int = 0  # intra-op CPU threads for the trainer; 0 = torch's default
    # torchrun only: a collective (gloo/nccl/hccl) not complete within this is an error. Ranks enter
    # collectives only together (commands come over the control plane), so this bounds compute imbalance,
    # not rollout time.
    collective_timeout_s: float = 600.0
    # torchrun only: a rank that has sent nothing, not even a heartbeat (every 2 s), for this long is taken
    # for dead, and every rank stops (engine/parallel/control.py)
    peer_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("collective_timeout_s", "peer_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"backend.{name}: must be > 0, got {getattr(self, name)}")


# The largest adapter rank vLLM 0.32 serves (its largest max_lora_rank; engine/rollout/vllm_lora.py)
VLLM_MAX_LORA_RANK = 512


@dataclass(frozen=True, slots=True)
class LoraConfig:
    """model.lora: train low-rank adapters (through peft) on a frozen base instead of the whole model
    (engine/lora.py, docs/lora.md). rank 0 = off (full fine-tuning).

    Each target linear layer W computes W x + (alpha / rank) * B A x, A: [rank, in], B: [out, rank] (B starts
    at 0, so the first policy is the base model). Adapters are float32 masters; the base stays in the compute
    dtype and never steps, so the reference policy is the same module with its adapters switched off."""

    rank: int = 0
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    # leaf module names to adapt (e.g. [q_proj, v_proj]); [] = every linear layer of the transformer blocks
    # (every attention and MLP projection; never the output head)
    target_modules: list[str] = field(default_factory=list)
    # must stay 0: adapter dropout in training forwards would train another distribution than the one sampled
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ConfigError(f"model.lora.rank: must be >= 0 (0 = off), got {self.rank}")
        if self.dropout != 0.0:
            raise ConfigError(f"model.lora.dropout: must be 0 (got {self.dropout}): adapter dropout would train a "
                              f"different distribution than the one the rollout engine samples")
        if self.alpha <= 0:
            raise ConfigError(f"model.lora.alpha: must be > 0, got {self.alpha}")
        if len(set(self.target_modules)) != len(self.target_modules) or any(not m for m in self.target_modules):
            raise ConfigError(f"model.lora.target_modules: names must be non-empty and distinct, got "
                              f"{self.target_modules}")
        if self.rank == 0 and (self.target_modules or self.alpha != 16.0):
            raise ConfigError("model.lora.alpha / model.lora.target_modules: only read with model.lora.rank > 0")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


@dataclass(frozen=True, slots=True)
class ModelConfig:
    path: str = REQUIRED  # a local Hugging Face folder, embedded://tiny-math, pretrained://smollm2-135m-instruct
    trust_remote_code: bool = False
    # Compute dtype of forward/backward and of the rollout and reference copies. Master parameters and
    # optimizer state are always float32 (engine/precision.py). auto: float32 on the CPU, bfloat16 on
    # accelerators. float16 trains with dynamic loss scaling.
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


# data.instruction's default: appended to every question in the chat format, it asks for the `####` answer line
# the GSM8K rewards read first (they fall back to the last number in the text).
CHAT_INSTRUCTION = "\n\nSolve the problem step by step. Put the final answer, a number, after '####'."
GSM8K_PATH = "../shared/data/gsm8k"  # data.path of the gsm8k source when the recipe leaves it unset
FILE_SOURCES = ("gsm8k", "jsonl", "parquet")
DATA_SOURCES = ("synthetic", "gsm8k", "jsonl", "parquet", "datasets")


@dataclass(frozen=True, slots=True)
class DataConfig:
    """Where prompts come from. Keys a source does not read must stay unset (None): setting one is an error,
    so a recipe never believes it trains on a file it ignores."""

    # synthetic: generated word problems; calc: generated problems for the calculator tool (engine/data/calc.py);
    # gsm8k: GSM8K jsonl (answer after "####"); jsonl / parquet: any table with a prompt column and an answer
    # column (data.prompt_key / data.answer_key); datasets: Hugging Face `datasets` (a save_to_disk folder,
    # json/csv/parquet files, or a hub name; engine/data/hf.py).
    source: Literal["synthetic", "gsm8k", "jsonl", "parquet", "datasets", "calc"] = "synthetic"
    # file sources: folder with the train/test files (gsm8k: GSM8K_PATH if unset); datasets: a save_to_disk
    # folder, the folder of data.train_file / data.test_file, or a hub name "org/name"
    path: str | None = None
    train_file: str | None = None  # file sources: default train.jsonl (train.parquet for parquet)
    test_file: str | None = None  # file sources: default test.jsonl (test.parquet for parquet)
    prompt_key: str | None = None  # jsonl / parquet / datasets: the prompt column (default "question")
    answer_key: str | None = None  # jsonl / parquet / datasets: the reference-answer column (default "answer")
    train_split: str | None = None  # datasets: the split trained on (default "train")
    test_split: str | None = None  # datasets: the held-out split (default "test")
    prompt_format: Literal["plain", "chat"] = "plain"
    system_prompt: str = ""  # chat format only
    # chat format only: appended to each question string (not to rows that carry ready `messages`); "" = none
    instruction: str = CHAT_INSTRUCTION
    max_prompt_tokens: int = 512  # longer prompts are skipped (and counted)
    train_size: int | None = None  # synthetic / calc sources: problems in the training stream (default 20000)
    shuffle: bool = True

    def __post_init__(self) -> None:
        splits = ("train_split", "test_split")
        generated = ("path", "train_file", "test_file", "prompt_key", "answer_key", *splits)
        ignored = {"synthetic": generated, "calc": generated,
                   "gsm8k": ("prompt_key", "answer_key", "train_size", *splits),
                   "jsonl": ("train_size", *splits), "parquet": ("train_size", *splits),
                   "datasets": ("train_size",)}[self.source]
        set_keys = [f"data.{k}" for k in ignored if getattr(self, k) is not None]
        if set_keys:
            raise ConfigError(f"{', '.join(set_keys)}: not read by data.source={self.source}; remove "
                              f"{'it' if len(set_keys) == 1 else 'them'} or choose a source that reads "
                              f"{'it' if len(set_keys) == 1 else 'them'}")
        if self.system_prompt and self.prompt_format != "chat":
            raise ConfigError("data.system_prompt: only read with data.prompt_format=chat")
        if self.instruction != CHAT_INSTRUCTION and self.prompt_format != "chat":
            raise ConfigError("data.instruction: only read with data.prompt_format=chat (the plain format is "
                              "'Question: ...\\nAnswer:' with nothing appended)")


@dataclass(frozen=True, slots=True)
class VllmConfig:
    """rollout.vllm: read only with rollout.engine=vllm (engine/rollout/vllm.py); setting it otherwise is an error."""

    tensor_parallel_size: int = 1  # > 1: one vLLM worker per device (multi-process)
    gpu_memory_utilization: float = 0.9  # share of device memory vLLM may take (lower it when sharing a GPU)
    kv_cache_gib: float = 0.0  # a fixed KV-cache size instead; 0 = by the share above (on the CPU backend: 1 GiB)
    enforce_eager: bool = True  # false: compiled graphs (slow start, faster decode on GPUs)
    max_model_len: int = 0  # prompt + response tokens; 0 = the model's max_position_embeddings
    multiprocess: bool = False  # vLLM's engine in its own process (forced by pipeline.placement=split and TP > 1)
    # Devices ("6,7": vLLM's GPUs/NPUs on this node) or, on the CPU, cores ("0-1") for vLLM's processes;
    # "" = vLLM's default. E.g. 6 + 2 on 8 GPUs: torchrun --nproc-per-node 6 ... rollout.engine=vllm
    # rollout.vllm.devices=6,7 rollout.vllm.tensor_parallel_size=2
    devices: str = ""


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    engine: Literal["native", "vllm"] = "native"
    prompts_per_iteration: int = 16  # B
    group_size: int = 8  # G
    max_new_tokens: int = 64
    # Every response runs to max_new_tokens: no eos or stop id ends one (stop strings still do). For
    # benchmarks of the fixed-length case (e.g. early training, when nothing stops before the limit).
    ignore_eos: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # Continuous batching: at most this many sequences in flight; a finished group's slots are refilled with
    # the iteration's next prompts. Smaller spreads group arrivals over the iteration (periodic_async trains
    # on them as they come), larger generates with bigger batches.
    max_batch_sequences: int = 256
    # Generation stops at the tokenizer's eos, every id of the model's generation_config.eos_token_id, and
    # at the first occurrence of any of these strings (the completion is cut after the string).
    stop: list[str] = field(default_factory=list)
    # Warn when policy/logprob_diff_max (|trainer - rollout engine| log-prob over sampled tokens) exceeds this.
    logprob_diff_warn: float = 0.5
    # An engine in another process whose generation has not advanced (no decode step) for this long is taken
    # for dead: a rollout worker, or a multi-process vLLM step (VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS).
    stall_timeout_s: float = 300.0
    # Prompts each rollout worker (or colocated torchrun rank) may have in flight (the fleet deals the next one
    # as a group finishes); 0 = chosen from the schedule (engine/build.py:in_flight_window): sync fills the
    # engine (max_batch_sequences / G), periodic_async at most half a worker's share of the prompts, so its
    # groups finish in two or more waves the trainer trains on while the next wave generates, even when every
    # response runs to max_new_tokens.
    in_flight: int = 0
    # Running vLLM servers to generate on instead of an engine of ours (engine/rollout/fleet/servers.py):
    # http://host:port URLs, started with --logprobs-mode processed_logprobs; needs rollout.engine=vllm and
    # rollout.server_sync, the host:port where the trainer opens vLLM's NCCL weight-transfer group (port + i for
    # server i). rollout.in_flight: requests in flight per server (0 = 8).
    servers: list[str] = field(default_factory=list)
    # Instead of rollout.servers: a text file of server URLs (one per line, # comments), read again before
    # every weight sync, so servers join (synced to the current version before they get prompts) and leave
    # between iterations. Replace it atomically (write a copy, then mv).
    servers_file: str = ""
    server_sync: str = ""
    vllm: VllmConfig = field(default_factory=VllmConfig)

    def __post_init__(self) -> None:
        if self.engine != "vllm" and self.vllm != VllmConfig():
            raise ConfigError(f"rollout.vllm: only read with rollout.engine=vllm (got rollout.engine={self.engine})")
        if self.group_size < 2:
            raise ConfigError(f"rollout.group_size: must be >= 2, got {self.group_size} (a group of one has "
                              f"advantage 0 and trains nothing)")
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature: must be > 0 for training rollouts, got {self.temperature} "
                              f"(greedy samples are identical within a group, so every advantage is 0)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p: must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ConfigError("rollout.stop: stop strings must be non-empty")
        if self.stall_timeout_s <= 0:
            raise ConfigError(f"rollout.stall_timeout_s: must be > 0, got {self.stall_timeout_s}")
        if self.in_flight < 0:
            raise ConfigError(f"rollout.in_flight: must be >= 0 (0 = chosen by the schedule), got {self.in_flight}")
        self._check_servers()
        if self.max_batch_sequences < self.group_size:
            raise ConfigError(f"rollout.max_batch_sequences: must be >= rollout.group_size ({self.group_size}) so "
                              f"a whole group fits, got {self.max_batch_sequences}")

    @property
    def uses_servers(self) -> bool:
        """Generation goes to running vLLM servers (rollout.servers or rollout.servers_file)."""
        return bool(self.servers or self.servers_file)

    def _check_servers(self) -> None:
        key = "rollout.servers_file" if self.servers_file else "rollout.servers"
        if self.servers and self.servers_file:
            raise ConfigError("rollout.servers_file: set it or rollout.servers, not both")
        if self.uses_servers and self.engine != "vllm":
            raise ConfigError(f"{key}: the servers are vLLM servers; set rollout.engine=vllm")
        if any(not is_server_url(u) for u in self.servers):
            raise ConfigError(f"rollout.servers: expected http(s)://host:port URLs, got {self.servers}")
        if self.uses_servers and not _host_port(self.server_sync):
            raise ConfigError(f"rollout.server_sync: expected host:port where the trainer opens the weight-transfer "
                              f"group the servers join (needed with {key}), got {self.server_sync!r}")
        if self.server_sync and not self.uses_servers:
            raise ConfigError("rollout.server_sync: only read with rollout.servers or rollout.servers_file")


def _host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit()


def is_server_url(text: str) -> bool:
    """An http(s)://host:port URL, as rollout.servers and rollout.servers_file take."""
    return text.startswith(("http://", "https://")) and _host_port(text.split("://", 1)[1].rstrip("/"))


DEFAULT_REWARD = "engine.rewards.gsm8k:gsm8k_reward"


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """reward = sum_i weights[i] * functions[i](completion, reference[, prompt]) + model_weight * reward model.
    The FIRST function is the correctness one: `reward/accuracy` (score > 0.5), `reward/no_answer_frac` and
    held-out accuracy come from it alone (weight 0 keeps a function for those metrics only). See
    engine/rewards/composite.py."""

    # import paths "module:function"; a function with a `prompt` parameter also gets the rendered prompt
    functions: list[str] = field(default_factory=lambda: [DEFAULT_REWARD])
    weights: list[float] = field(default_factory=lambda: [1.0])  # one per function
    function: str | None = None  # the old single-function key: the same as functions=[function], weights=[1.0]
    # A local Hugging Face *ForSequenceClassification folder (one label, the actor's tokenizer), scored on the
    # actor's packed layout at each response's last token; None = no reward model is loaded.
    model: str | None = None
    model_weight: float = 1.0  # its weight in the sum; only read with reward.model
    # > 0: reward functions run in a worker process, and a call not done within timeout_s seconds scores 0 (no
    # answer), restarts the worker and counts in reward/timeouts. 0 = called in-process (fastest).
    timeout_s: float = 0.0

    def __post_init__(self) -> None:
        from math import isfinite  # here, not at the top: this class is all that reads it

        if self.function is not None and (self.functions != [DEFAULT_REWARD] or self.weights != [1.0]):
            raise ConfigError("reward.function: the old single-function key cannot be combined with reward.functions "
                              "or reward.weights; list it as the first of reward.functions instead")
        if not self.functions:
            raise ConfigError("reward.functions: needs at least one function (the first is the correctness one)")
        if len(self.weights) != len(self.functions):
            raise ConfigError(f"reward.weights: {len(self.weights)} weights for {len(self.functions)} "
                              f"reward.functions; give one weight per function, in the same order")
        if not all(isfinite(w) for w in (*self.weights, self.model_weight)):
            raise ConfigError("reward.weights, reward.model_weight: must be finite numbers")
        if self.model is None and self.model_weight != 1.0:
            raise ConfigError("reward.model_weight: only read with reward.model set")
        if not (isfinite(self.timeout_s) and self.timeout_s >= 0):
            raise ConfigError(f"reward.timeout_s: must be >= 0 (0 = in-process), got {self.timeout_s}")

    @property
    def weighted_functions(self) -> list[tuple[str, float]]:
        """(import path, weight) of every function, the correctness one first; resolves the old key."""
        if self.function is not None:
            return [(self.function, 1.0)]
        return list(zip(self.functions, self.weights))


@dataclass(frozen=True, slots=True)
class AlgorithmConfig:
    """The GRPO family (engine/algorithms/, docs/algorithms.md)."""

    # Advantage estimator: grpo (group mean and std), dr_grpo (group mean only), rloo (leave-one-out mean),
    # reinforce_pp (batch mean and std), reinforce_pp_baseline (group mean, then batch std). The reinforce_pp
    # ones need the whole iteration's rewards, so training waits for the last group.
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo"
    std: Literal["sample", "population"] = "population"  # the std of grpo / reinforce_pp normalisation
    policy_loss: Literal["grpo", "gspo"] = "grpo"  # token-level PPO clip, or GSPO's sequence-level ratio
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high] (GSPO: e.g. 3e-4 / 4e-4)
    clip_high: float = 0.2
    dual_clip: float | None = None  # c > 1: for A < 0 the loss is at most -c * A (Ye et al. 2020)
    # PPO updates per iteration: the iteration's B groups are split into ppo_mini_batches mini-batches of
    # B / M groups, one optimizer step each, repeated ppo_epochs times. 1 and 1: one on-policy step.
    ppo_mini_batches: int = 1
    ppo_epochs: int = 1
    # DAPO dynamic sampling: groups whose G rewards are all equal are dropped as they arrive, and more prompts
    # are generated until the iteration has B informative groups or max_sampling_rounds rounds were made.
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    # Train/inference mismatch: truncated importance sampling of the loss by min(cap, pi_trainer / pi_rollout)
    # per token or per sequence (Yao et al. 2025), for engines whose log-probs differ from the trainer's.
    rollout_is: Literal["off", "token", "sequence"] = "off"
    rollout_is_cap: float = 2.0
    kl_coef: float = 0.0  # 0 = no reference model is loaded at all
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    loss_aggregation: Literal["token_mean", "seq_mean"] = "token_mean"
    # Responses cut by rollout.max_new_tokens (no stop condition met): train = like finished ones; mask = no
    # gradient from them (DAPO's overlong filtering; they still count in the group's advantages); penalty =
    # DAPO's soft overlong punishment added to every response's reward: 0 up to max_new_tokens -
    # overlong_buffer tokens, then falling linearly to -overlong_penalty at max_new_tokens.
    truncated: Literal["train", "mask", "penalty"] = "mask"
    overlong_buffer: int = 0  # penalty only: tokens before max_new_tokens where the penalty ramps up
    overlong_penalty: float = 1.0  # penalty only: the penalty at max_new_tokens

    def __post_init__(self) -> None:
        if self.ppo_mini_batches < 1 or self.ppo_epochs < 1:
            raise ConfigError("algorithm.ppo_mini_batches / algorithm.ppo_epochs: must be >= 1")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError(f"algorithm.dual_clip: must be > 1 (or null), got {self.dual_clip}")
        if self.policy_loss == "gspo" and self.loss_aggregation != "seq_mean":
            raise ConfigError("algorithm.loss_aggregation: GSPO averages over sequences; set "
                              "algorithm.loss_aggregation=seq_mean with algorithm.policy_loss=gspo")
        if self.rollout_is != "off" and self.ppo_mini_batches * self.ppo_epochs > 1:
            raise ConfigError("algorithm.rollout_is: with several updates per iteration the old log-probs already "
                              "are the rollout engine's, so the clipped ratio corrects the mismatch; set "
                              "algorithm.rollout_is=off or ppo_mini_batches=ppo_epochs=1")
        if self.rollout_is_cap <= 0 or self.max_sampling_rounds < 1:
            raise ConfigError("algorithm.rollout_is_cap must be > 0 and algorithm.max_sampling_rounds >= 1")
        if self.truncated == "penalty" and self.overlong_buffer <= 0:
            raise ConfigError("algorithm.overlong_buffer: must be > 0 with algorithm.truncated=penalty")
        if self.truncated != "penalty" and self.overlong_buffer != 0:
            raise ConfigError(f"algorithm.overlong_buffer: only read with algorithm.truncated=penalty "
                              f"(got truncated={self.truncated})")


@dataclass(frozen=True, slots=True)
class OptimConfig:
    lr: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_iterations: int = 0  # the lr rises linearly to optim.lr over these iterations
    # after warmup (engine/schedules.py): constant, or a linear / cosine decay to min_lr_ratio * lr at the
    # end of run.iterations
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # linear / cosine: the final lr as a share of optim.lr, in [0, 1]
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    micro_batch_size: int = 8  # sequences per forward/backward; does not change the update

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr_schedule == "constant" and self.min_lr_ratio != 0.0:
            raise ConfigError("optim.min_lr_ratio: only read with optim.lr_schedule=linear or cosine")
        if self.warmup_iterations < 0:
            raise ConfigError(f"optim.warmup_iterations: must be >= 0, got {self.warmup_iterations}")


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    layout: Literal["shared", "expanded"] = "shared"  # shared-prompt packing or one prompt copy per response
    # RL convention: dropout off in the actor's training forwards, so the trained distribution is the sampled
    # one (the reference and the rollout side never use dropout). true keeps the model's own dropout.
    dropout: bool = False


@dataclass(frozen=True, slots=True)
class EvalConfig:
    heldout_size: int = 200
    max_new_tokens: int = 64
    batch_size: int = 64
    before: bool = True  # measure accuracy_before at the start of a fresh run (eval/accuracy at iteration 0)
    after: bool = True  # measure accuracy_after at the last iteration (eval/accuracy on its line)
    every: int = 0  # also evaluate every this many iterations (eval/accuracy on their lines); 0 = off

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every: must be >= 0 (0 = off), got {self.every}")


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Where rollout runs and how it overlaps training (docs/pipeline.md)."""

    # sync: generate every group, then train. periodic_async (arXiv 2511.18871): train on each group as it
    # arrives while the rest are generated; still on-policy, one weight sync and one step per iteration.
    schedule: Literal["sync", "periodic_async"] = "sync"
    # colocated: the in-process native engine generates with the actor module itself (backend.threads for
    # both phases, in turn). split: a rollout worker process with its own model copy and threads.
    placement: Literal["colocated", "split"] = "colocated"
    rollout_threads: int = 1  # split: intra-op threads of the rollout worker
    trainer_threads: int = 1  # split: intra-op threads of the trainer process (replaces backend.threads)
    sync_timeout_s: float = 60.0  # a weight sync the worker has not acknowledged by then is an error
    # split: when every rollout worker has died, start them again (once per iteration) instead of stopping;
    # a worker that dies while others live is dropped and its prompts go to the others either way
    restart_rollout: bool = False
    # split: how many rollout worker processes generate (engine/rollout/fleet/); on the CPU each gets
    # pipeline.rollout_threads threads
    rollout_workers: int = 1
    # split, accelerators: the local device index of each worker (their number is the worker count); empty =
    # the first device after this node's trainer ranks (torchrun --nproc-per-node N), or the trainer's own
    # device when none is left. E.g. on an 8-GPU node: torchrun --nproc-per-node 6 ...
    # pipeline.rollout_devices=[6,7] (6 train, 2 generate).
    rollout_devices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.schedule == "periodic_async" and self.placement != "split":
            raise ConfigError("pipeline.schedule: periodic_async needs pipeline.placement=split (generation and "
                              "training overlap only when each has its own process and resources)")
        for name in ("rollout_threads", "trainer_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pipeline.{name}: must be >= 1, got {getattr(self, name)}")
        if self.sync_timeout_s <= 0:
            raise ConfigError(f"pipeline.sync_timeout_s: must be > 0, got {self.sync_timeout_s}")
        if self.rollout_workers < 1:
            raise ConfigError(f"pipeline.rollout_workers: must be >= 1, got {self.rollout_workers}")
        if self.rollout_devices and self.rollout_workers not in (1, len(self.rollout_devices)):
            raise ConfigError(f"pipeline.rollout_workers: {self.rollout_workers} workers but pipeline.rollout_devices "
                              f"lists {len(self.rollout_devices)}; give one device per worker (or leave the count)")

    @property
    def worker_count(self) -> int:
        return len(self.rollout_devices) or self.rollout_workers


@dataclass(frozen=True, slots=True)
class EnvConfig:
    """Multi-turn rollouts (engine/envs/, docs/environments.md): off while `name` is empty. Each of a prompt's G
    samples gets its own environment; the policy's turns alternate with the environment's observations."""

    # "": single-turn. calculator / python: the built-in tools (engine/envs/tools.py, engine/envs/sandbox.py);
    # module:function: an EnvironmentFactory, (prompt_text, reference) -> Environment
    name: str = ""
    max_turns: int = 4  # assistant turns per trajectory, the first included
    max_tokens: int = 256  # tokens after the prompt, turns and observations together
    call_timeout_s: float = 10.0  # one tool call; past it the call fails and the episode goes on
    step_timeout_s: float = 60.0  # one environment step; past it the trajectory ends, truncated
    tool_parser: str = "hermes"  # engine/envs/toolcalls.py PARSERS: how tool calls are read from a turn
    turn_end: list[str] = field(default_factory=lambda: ["</tool_call>"])  # strings that end a turn (as stop ids do)
    # how an observation is rendered before it is tokenized (once) and appended; must contain {text}
    observation_format: str = "\n<tool_response>\n{text}\n</tool_response>\n"
    threads: int = 16  # environment steps in flight at once (a thread pool beside decoding)

    def __post_init__(self) -> None:
        builtin = ("calculator", "python")
        if self.name and self.name not in builtin and ":" not in self.name:
            raise ConfigError(f"env.name: got {self.name!r}; expected one of {', '.join(builtin)} or "
                              "module:function (an EnvironmentFactory)")
        if "{text}" not in self.observation_format:
            raise ConfigError(f"env.observation_format: must contain {{text}}, got {self.observation_format!r}")
        if self.threads < 1:
            raise ConfigError(f"env.threads: must be >= 1, got {self.threads}")
        try:
            self.limits()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    def limits(self):
        from engine.envs.base import EnvLimits

        return EnvLimits(max_turns=self.max_turns, max_tokens=self.max_tokens, call_timeout_s=self.call_timeout_s,
                         step_timeout_s=self.step_timeout_s)


@dataclass(frozen=True, slots=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    env: EnvConfig = field(default_factory=EnvConfig)

    def __post_init__(self) -> None:
        if self.optim.lr_schedule != "constant" and self.run.iterations <= self.optim.warmup_iterations:
            raise ConfigError(f"optim.lr_schedule: {self.optim.lr_schedule} decays after warmup, so it needs "
                              f"run.iterations ({self.run.iterations}) > optim.warmup_iterations "
                              f"({self.optim.warmup_iterations})")
        mini = self.algorithm.ppo_mini_batches
        if self.rollout.prompts_per_iteration % mini:
            raise ConfigError(f"algorithm.ppo_mini_batches: {mini} must divide rollout.prompts_per_iteration "
                              f"({self.rollout.prompts_per_iteration}) so every mini-batch has B / M groups")
        if self.model.lora.rank > VLLM_MAX_LORA_RANK and self.rollout.engine == "vllm":
            raise ConfigError(f"model.lora.rank: vLLM serves LoRA adapters up to rank {VLLM_MAX_LORA_RANK}, got "
                              f"{self.model.lora.rank}; lower it or set rollout.engine=native")
        if self.rollout.uses_servers and (self.pipeline.placement != "colocated" or self.model.lora.enabled
                                     or self.env.enabled):
            raise ConfigError("rollout.servers: runs with pipeline.placement=colocated (the servers are the rollout "
                              "side), without model.lora and env.name (not built for servers yet)")
        if self.env.enabled and self.rollout.engine == "vllm" and self.model.lora.enabled:
            raise ConfigError("env.name: vLLM multi-turn rollouts with model.lora are not built yet; set "
                              "rollout.engine=native or drop model.lora")
        if self.algorithm.overlong_buffer > self.rollout.max_new_tokens:
            # The penalty ramp would start before token 0 (L_max - L_cache < 0), so even an empty response is
            # penalised: the buffer cannot be longer than the responses it is carved out of.
            raise ConfigError(f"algorithm.overlong_buffer: {self.algorithm.overlong_buffer} must be <= "
                              f"rollout.max_new_tokens ({self.rollout.max_new_tokens})")


# ----------------------------------------------------------------------------------------------- loading


def load_config(recipe: str | Path | None, overrides: list[str] = (), schema: type = Config) -> Any:
    """Merge a YAML recipe and `key=value` overrides into `schema`; raise ConfigError on any bad input."""
    layers: list[tuple[str, dict]] = []
    if recipe is not None:
        layers.append((str(recipe), _read_yaml(Path(recipe))))
    if overrides:
        layers.append(("command line", _read_overrides(overrides)))
    merged: dict = {}
    for source, layer in layers:
        _check_layer(schema, layer, source, prefix="")
        merged = _deep_merge(merged, layer)
    return _build(schema, merged, prefix="", source=str(recipe) if recipe else "command line")


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg))))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # omegaconf/yaml errors carry the line number in their text
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _read_overrides(overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: '{item}': expected key=value, e.g. optim.lr=1e-5")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=True)
    except Exception as exc:
        raise ConfigError(f"command line: cannot parse overrides: {exc}".replace("\n", " ")) from exc


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_layer(schema: type, layer: dict, source: str, prefix: str) -> None:
    """Check one layer's keys and value types against `schema`, without requiring completeness."""
    hints = typing.get_type_hints(schema)
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            allowed = ", ".join(sorted(hints))
            raise ConfigError(f"{source}: {dotted}: unknown key; allowed keys here: {allowed}")
        hint = hints[key]
        if value == _UNSET:
            continue
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted}: expected a section (mapping), got {value!r}")
            _check_layer(hint, value, source, prefix=f"{dotted}.")
        else:
            _coerce(hint, value, f"{source}: {dotted}")


def _build(schema: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for f in dataclasses.fields(schema):
        dotted = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _build(hint, data.get(f.name, {}), f"{dotted}.", source)
        elif f.name in data and data[f.name] != _UNSET:
            kwargs[f.name] = _coerce(hint, data[f.name], f"{source}: {dotted}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: {dotted}: required value is missing (set it in the recipe or as {dotted}=...)")
    return schema(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Return `value` as type `hint`, or raise ConfigError saying what was expected."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: got {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, where) for v in value]
    return _coerce_scalar(hint, value, where)


def _coerce_scalar(hint: type, value: Any, where: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = str(value) if ok else value
    else:
        raise TypeError(f"unsupported config type {hint!r} at {where}")
    if not ok:
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value
