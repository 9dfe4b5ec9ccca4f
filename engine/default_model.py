"""The embedded default model, `embedded://tiny-math`: a tokenizer and a tiny Qwen2 built from nothing.

`ensure_default_model(cache_dir)` builds, once, a Hugging Face model folder that `AutoModelForCausalLM` and
`AutoTokenizer` load: a byte-level BPE trained in code on synthetic problems (`engine.data.synthetic`), a
0.7M-parameter Qwen2, and a short supervised warm start. It needs no network and no hub, and takes about
80 s on 2 idle CPU cores; a later call reuses the folder when its stamp (build version, seed, sizes) matches.

Why the warm start teaches two answer formats
---------------------------------------------
GRPO can only reinforce behaviours the policy already samples. The warm start therefore teaches two:

    direct:   " #### 9"                              -- the answer with no working
    working:  " 7 + 5 = 12\n12 - 3 = 9\n#### 9"      -- one line per step, then the answer

A model this small cannot do 2-3 steps of arithmetic in the forward pass of one token, so direct answers
are mostly wrong (~20% right), while each working line is one easy operation (~75% right overall). The
format is chosen at the first completion token (" ####" or " "), which is trained towards P(working) =
`working_prior` (0.25). Greedy decoding therefore answers directly and starts low; sampling at temperature 1
shows working in about a quarter of samples, so most groups of G=8 hold a correct answer and a reward
contrast. RL only has to move probability onto the format the model already knows -- an honest,
small-scale illustration that RL mostly reweights what the base model can do.

One deviation from a plain data mixture, for compute: 80% of warm-start examples show working, because
the skill is what needs the examples, but only some of their first tokens are supervised, so the format
decision still sees a 25/75 mixture (see `_sft_examples`). With only 25% working examples the skill is not
learnt within the 2-core time budget.

`embedded://tiny-calc` (engine/calc_model.py) is built from the same pieces (`train_tokenizer`, `build_model`,
`train_supervised`, `run_build`) on problems that need a calculator tool, with its own stamp.

Deviations from a real pretrained model: the vocabulary is tiny (a few hundred tokens) and covers only
this task's text well; anything else falls back to bytes. The tokenizer is a `Qwen2Tokenizer` (Qwen2's
normaliser and pre-tokenizer, our own vocab and merges) because transformers 5 `AutoTokenizer` always
rebuilds that class for model_type qwen2, whatever tokenizer_config.json names; a tokenizer with another
pre-tokenizer would silently reload with different ids. The build checks the reload.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM, Qwen2Tokenizer)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from engine.data.synthetic import Problem, format_prompt, make_split
from engine.pretrained import PRETRAINED_URI_PREFIX, ensure_pretrained_model

EMBEDDED_URI_PREFIX = "embedded://"
DEFAULT_NAME = "tiny-math"
CALC_NAME = "tiny-calc"
STAMP_FILE = "cadence_default.json"
BUILD_VERSION = 1  # bump whenever the build changes what it produces: old folders are then rebuilt

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# One user turn renders as the plain prompt, so chat-format code paths see the same text as plain ones.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "Question: {{ message['content'] }}\nAnswer:{% endif %}{% endfor %}"
)
_IGNORE = -100  # label value the loss skips (prompt and padding positions)


@dataclass(frozen=True, slots=True)
class BuildSpec:
    """Every size of the build. The default is the demo model; tests build miniatures with tiny sizes."""

    # tokenizer
    vocab_size: int = 512  # upper bound; BPE stops early once the task's words are whole tokens
    tokenizer_problems: int = 4000
    # model (Qwen2, grouped-query attention)
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 256
    # supervised warm start
    sft_problems: int = 20000
    sft_steps: int = 700
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    working_fraction: float = 0.8  # share of examples answered step by step; the rest answer directly
    working_prior: float = 0.25  # P(working) the first completion token is trained towards (see _sft_examples)
    threads: int = 2


DEFAULT_SPEC = BuildSpec()
Builder = Callable[[Path, BuildSpec, int, Callable[[str], None]], None]


# ------------------------------------------------------------------------------------------- public API


def ensure_default_model(cache_dir: str | Path, name: str = DEFAULT_NAME, *, seed: int = 0,
                         log: Callable[[str], None] = print) -> Path:
    """Return `<cache_dir>/<name>`, a loadable HF model folder, building it first unless its stamp matches.

    `name` is `tiny-math` (this module) or `tiny-calc` (the calculator-tool model, engine/calc_model.py).
    The build writes into a temporary sibling and moves it into place with `os.replace`, so an interrupted
    build never leaves a folder that looks complete.
    """
    if name == DEFAULT_NAME:
        return _ensure(Path(cache_dir), name, DEFAULT_SPEC, seed, log, _build_folder)
    if name == CALC_NAME:
        from engine import calc_model  # it builds on this module's pieces

        return _ensure(Path(cache_dir), name, calc_model.CALC_BUILD, seed, log, calc_model.build_calc_folder)
    raise ValueError(f"unknown embedded model {name!r}; allowed: {DEFAULT_NAME}, {CALC_NAME}")


def resolve_model_path(path: str, cache_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Map `model.path` to a model folder: `embedded://<name>` and `random://<preset>` are built on demand,
    `pretrained://<name>` converted on demand (engine/pretrained.py); anything else must be an existing folder with a config.json (FileNotFoundError otherwise)."""
    if path.startswith(EMBEDDED_URI_PREFIX):
        return ensure_default_model(cache_dir, path[len(EMBEDDED_URI_PREFIX):], log=log)
    if path.startswith(RANDOM_URI_PREFIX):
        return ensure_random_model(cache_dir, path[len(RANDOM_URI_PREFIX):], log=log)
    if path.startswith(PRETRAINED_URI_PREFIX):
        return ensure_pretrained_model(cache_dir, path[len(PRETRAINED_URI_PREFIX):], log=log)
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model.path: folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.path: folder {folder} has no config.json (not a Hugging Face model folder)")
    return folder


# -------------------------------------------------------------------------------- caching and atomicity


def _ensure(cache_dir: Path, name: str, spec: BuildSpec, seed: int, log: Callable[[str], None],
            builder: Builder) -> Path:
    """Reuse `cache_dir/name` if its stamp matches (spec, seed, version), else build it atomically."""
    return build_once(cache_dir / name, _stamp(spec, seed), lambda tmp: builder(tmp, spec, seed, log), log,
                      f"embedded model {name!r} (seed {seed})")


def build_once(final: Path, stamp: dict, build: Callable[[Path], None], log: Callable[[str], None],
               label: str) -> Path:
    """Return `final`, first running `build(tmp)` into a temporary sibling folder and moving it into place
    unless `final` already holds `stamp`. The stamp is written last, so an interrupted build never leaves a
    folder that looks complete (embedded, random and pretrained:// models all come through here)."""
    if _read_stamp(final) == stamp:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    try:
        log(f"building {label} in {final} ...")
        start = time.perf_counter()
        build(tmp)
        (tmp / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")  # last: marks the folder complete
        _install(tmp, final, stamp)
        log(f"built {label} in {time.perf_counter() - start:.1f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _install(tmp: Path, final: Path, stamp: dict) -> None:
    """Move a finished build into place, replacing a stale folder. If a concurrent build already installed
    an identical one, keep that and drop ours."""
    if _read_stamp(final) == stamp:
        return
    stale = None
    if final.exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        os.replace(final, stale)
    try:
        os.replace(tmp, final)
    except OSError:
        if _read_stamp(final) != stamp:  # another process installed something else meanwhile
            raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _stamp(spec: BuildSpec, seed: int) -> dict:
    return {"build_version": BUILD_VERSION, "seed": seed, "spec": asdict(spec)}


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ build


def _build_folder(folder: Path, spec: BuildSpec, seed: int, log: Callable[[str], None]) -> None:
    """Build tokenizer and model, warm-start the model, save both into `folder` and check they reload."""
    def build() -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
        tokenizer = build_tokenizer(spec, seed)
        model = build_model(spec, tokenizer)
        warm_start(model, tokenizer, spec, seed, log)
        return model, tokenizer

    model, tokenizer = run_build(build, spec.threads, seed)
    save_checked(folder, model, tokenizer, _reload_texts(seed))


def run_build(build: Callable[[], tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]], threads: int,
              seed: int) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """`build()` on `threads` threads with the global RNG seeded by `seed`, restoring both afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
            torch.manual_seed(seed)
            return build()
    finally:
        torch.set_num_threads(before)


def save_checked(folder: Path, model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast,
                 texts: list[str]) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _check_tokenizer_reload(folder, tokenizer, texts)


def build_tokenizer(spec: BuildSpec, seed: int) -> PreTrainedTokenizerFast:
    """The tiny-math tokenizer: `train_tokenizer` on synthetic problems, worked and direct."""
    problems = make_split("train", spec.tokenizer_problems, seed=seed)
    corpus = [format_prompt(p.question) + p.solution for p in problems] + [_direct_solution(p) for p in problems]
    return train_tokenizer(corpus, spec)


def train_tokenizer(corpus: list[str], spec: BuildSpec) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus` and wrap it as the `Qwen2Tokenizer` that AutoTokenizer rebuilds
    for model_type qwen2 (same NFC normaliser and pre-tokenizer, which spells numbers one digit per token);
    eos and pad are distinct special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=[tuple(m) for m in trained["merges"]],
                               eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=None,
                               model_max_length=spec.max_positions)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(spec: BuildSpec, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A freshly initialised float32 Qwen2. Embeddings are untied: some inference engines mishandle
    tied weights on reload, and at this vocabulary size the extra matrix is cheap."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def _reload_texts(seed: int) -> list[str]:
    return [format_prompt(p.question) + p.solution for p in make_split("heldout", 50, seed=seed)]


def _check_tokenizer_reload(folder: Path, tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> None:
    """AutoTokenizer picks its class from model_type; fail the build unless it encodes `texts` (and some
    text off the task) exactly as we do."""
    reloaded = AutoTokenizer.from_pretrained(folder)
    texts = [*texts, "Any other text: wörds, 3.14 ≥ 2, tabs\tand\nnewlines."]
    for text in texts:
        if reloaded(text)["input_ids"] != tokenizer(text)["input_ids"]:
            raise RuntimeError(f"tokenizer in {folder} reloads as {type(reloaded).__name__} with different ids")
    if (reloaded.eos_token_id, reloaded.pad_token_id) != (tokenizer.eos_token_id, tokenizer.pad_token_id):
        raise RuntimeError(f"tokenizer in {folder} reloads with different eos/pad ids")


# ------------------------------------------------------------------------------------------- warm start


@dataclass(frozen=True, slots=True)
class _Example:
    ids: list[int]  # prompt + completion + eos
    prompt_len: int  # the loss covers ids[prompt_len:] ...
    format_loss: bool  # ... except the first completion token (the format decision) when False ...
    context: tuple[tuple[int, int], ...] = ()  # ... and these [start, end) spans (an environment's text)


def warm_start(model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: BuildSpec, seed: int,
               log: Callable[[str], None]) -> None:
    """tiny-math's supervised pass: `train_supervised` on `_sft_examples`."""
    train_supervised(model, _sft_examples(tokenizer, spec, seed), tokenizer.pad_token_id, spec, seed, log)


def train_supervised(model: Qwen2ForCausalLM, examples: list[_Example], pad_id: int, spec: BuildSpec, seed: int,
                     log: Callable[[str], None]) -> None:
    """Supervised pass with AdamW (warmup, cosine decay), loss on completion tokens only; deterministic
    given `seed` and the thread count."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, spec))
    batches = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for step in range(spec.sft_steps):
        pick = torch.randint(len(examples), (spec.batch_size,), generator=batches).tolist()
        input_ids_BT, labels_BT = _collate([examples[i] for i in pick], pad_id)
        loss = model(input_ids=input_ids_BT, labels=labels_BT).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == spec.sft_steps - 1:
            log(f"  warm start step {step + 1}/{spec.sft_steps}  loss {loss.item():.3f}  "
                f"{time.perf_counter() - start:.0f}s")
    model.eval()


def _sft_examples(tokenizer: PreTrainedTokenizerFast, spec: BuildSpec, seed: int) -> list[_Example]:
    """Train problems, each answered with working (`spec.working_fraction`) or directly, then eos.

    The working lines are the skill, so most examples show them; the format decision is trained towards
    `spec.working_prior` by supervising the first completion token of only some working examples:
    with w working examples and q of them supervised there, P(working) -> w*q / (w*q + 1 - w).
    """
    w, prior = spec.working_fraction, spec.working_prior
    keep_decision = min(1.0, prior * (1 - w) / max(w * (1 - prior), 1e-9))
    problems = make_split("train", spec.sft_problems, seed=seed)
    coin = random.Random(f"cadence-default/format/{seed}")
    prompts, completions, decisions = [], [], []
    for p in problems:
        working = coin.random() < w
        prompts.append(format_prompt(p.question))
        completions.append(p.solution if working else _direct_solution(p))
        decisions.append(not working or coin.random() < keep_decision)
    prompt_ids = tokenizer(prompts)["input_ids"]
    completion_ids = tokenizer(completions)["input_ids"]
    eos = tokenizer.eos_token_id
    return [_Example(ids=p + c + [eos], prompt_len=len(p), format_loss=d)
            for p, c, d in zip(prompt_ids, completion_ids, decisions)]


def _direct_solution(problem: Problem) -> str:
    return f" #### {problem.answer}"


def _collate(examples: list[_Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (B, T). No attention mask is needed: with causal attention and padding
    only at the end, real tokens never see a pad, and pad positions carry no loss (nor do prompts, context
    spans and unsupervised format decisions)."""
    length = max(len(e.ids) for e in examples)
    input_ids_BT = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels_BT = torch.full((len(examples), length), _IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids_BT[row, :len(e.ids)] = torch.tensor(e.ids)
        labels_BT[row, e.prompt_len:len(e.ids)] = torch.tensor(e.ids[e.prompt_len:])
        if not e.format_loss:
            labels_BT[row, e.prompt_len] = _IGNORE
        for start, end in e.context:
            labels_BT[row, start:end] = _IGNORE
    return input_ids_BT, labels_BT


def _lr_factor(step: int, spec: BuildSpec) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.sft_steps - spec.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------ random://: benchmark models
#
# `random://<preset>` names a randomly initialised Qwen2 of a published shape, built once into
# `<cache_dir>/random-<preset>` (no hub, no training), for throughput benchmarks (engine/bench/e2e.py): its
# outputs are noise, but a step costs what the real model's does. The tokenizer is the embedded model's
# (`build_tokenizer`), padded with filler tokens to the preset's vocabulary so that every id the model can
# sample decodes; fillers are never produced by encoding (the BPE applies merges only), so prompts encode
# exactly as with the embedded tokenizer. The chat template also renders a system turn, which is how a
# recipe makes prompts of a realistic length (data.prompt_format=chat, data.system_prompt).
#
# Response lengths. A random model almost never samples its stop token (about 1 / vocabulary per step), so
# every response would run to rollout.max_new_tokens. `_plant_stop_hazard` sets a few weights so that eos has
# probability ~`eos_probability` at every position and the other tokens stay near-uniform: lengths are then
# geometric with mean ~1 / eos_probability, cut at max_new_tokens (the long tail of real RL rollouts, where a
# GRPO group waits for its longest sample).

RANDOM_URI_PREFIX = "random://"
RANDOM_BUILD_VERSION = 1  # bump whenever the random build changes what it produces
RANDOM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}Question: {{ message['content'] }}\nAnswer:{% endif %}{% endfor %}"
)
_CARRIER = 500.0  # value of hidden dimension 0 in every token's embedding: dominates the residual stream's norm
_COMMON_OFFSET = 1.0  # what the carrier adds to every logit (softmax ignores it; kept small for bfloat16)


@dataclass(frozen=True, slots=True)
class RandomSpec:
    """Shape of a random Qwen2 (field names as in Qwen2Config) and its per-token stop probability."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_positions: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    dtype: str  # dtype of the saved weights (the engine loads masters in float32 whatever this is)
    eos_probability: float  # P(next token = eos) at every position


RANDOM_PRESETS = {
    # The shapes of Qwen2.5-0.5B's config.json (494,032,768 parameters, embeddings tied, bfloat16 weights).
    # Mean response ~185 tokens at max_new_tokens 512 (1/200 per step; 7.7% reach 512).
    "qwen2-0.5b": RandomSpec(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
                             num_heads=14, num_kv_heads=2, max_positions=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, dtype="bfloat16", eos_probability=1 / 200),
    # A CPU miniature of the same family (164,416 parameters), for tests and recipes/bench_e2e_cpu.yaml.
    "qwen2-tiny": RandomSpec(vocab_size=1024, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                             num_kv_heads=2, max_positions=2048, rope_theta=1e4, rms_norm_eps=1e-6,
                             tie_word_embeddings=True, dtype="float32", eos_probability=1 / 16),
}


def ensure_random_model(cache_dir: str | Path, preset: str, *, seed: int = 0,
                        log: Callable[[str], None] = print) -> Path:
    """Return `<cache_dir>/random-<preset>`, building it first unless its stamp (preset, seed, version) matches."""
    if preset not in RANDOM_PRESETS:
        raise ValueError(f"model.path: unknown random model {preset!r}; allowed: "
                         f"{', '.join(RANDOM_URI_PREFIX + name for name in RANDOM_PRESETS)}")
    return _ensure(Path(cache_dir), f"random-{preset}", _RandomBuild(RANDOM_PRESETS[preset]), seed, log,
                   _build_random_folder)


@dataclass(frozen=True, slots=True)
class _RandomBuild:
    """What the stamp of a random folder records (`_stamp` takes a dataclass): the spec and the build version."""

    spec: RandomSpec
    random_build_version: int = RANDOM_BUILD_VERSION


def _build_random_folder(folder: Path, build: _RandomBuild, seed: int, log: Callable[[str], None]) -> None:
    spec = build.spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = padded_tokenizer(spec.vocab_size, spec.max_positions, seed)
        model = random_model(spec, tokenizer)
    model.to(getattr(torch, spec.dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _check_tokenizer_reload(folder, tokenizer, _reload_texts(seed))
    log(f"  random Qwen2: {sum(p.numel() for p in model.parameters()):,} parameters, {spec.dtype}")


def padded_tokenizer(vocab_size: int, max_positions: int, seed: int) -> PreTrainedTokenizerFast:
    """The embedded model's tokenizer with filler tokens appended up to `vocab_size` ids. A filler is a
    lower-case word (" bcd", " bce", ...) not already in the vocabulary, so sampled ids decode to word-like text."""
    base = build_tokenizer(BuildSpec(max_positions=max_positions), seed)
    trained = json.loads(base.backend_tokenizer.to_str())["model"]
    vocab = dict(trained["vocab"])
    if len(vocab) > vocab_size:
        raise ValueError(f"random model: vocab_size {vocab_size} is below the tokenizer's {len(vocab)} tokens")
    n = 26 ** 2  # start at three-letter words
    while len(vocab) < vocab_size:
        word = "\u0120" + _letters(n)  # byte-level BPE spells a leading space as U+0120
        n += 1
        if word not in vocab:
            vocab[word] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in trained["merges"]], eos_token=EOS_TOKEN,
                               pad_token=PAD_TOKEN, unk_token=None, model_max_length=max_positions)
    tokenizer.chat_template = RANDOM_CHAT_TEMPLATE
    return tokenizer


def _letters(n: int) -> str:
    """n written in base 26 with digits a..z (0 -> "a")."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(ord("a") + r) + out
        if n == 0:
            return out


def random_config(spec: RandomSpec, eos_id: int, pad_id: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions, rope_theta=spec.rope_theta, rms_norm_eps=spec.rms_norm_eps,
        tie_word_embeddings=spec.tie_word_embeddings, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None,
        dtype=spec.dtype,
    )


def random_model(spec: RandomSpec, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A float32 Qwen2 of `spec`'s shape, transformers' own random initialisation, then `_plant_stop_hazard`."""
    model = Qwen2ForCausalLM(random_config(spec, tokenizer.eos_token_id, tokenizer.pad_token_id)).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    _plant_stop_hazard(model, tokenizer.eos_token_id, spec.eos_probability)
    return model


@torch.no_grad()
def _plant_stop_hazard(model: Qwen2ForCausalLM, eos_id: int, probability: float) -> None:
    """Make eos the next token with probability ~`probability` at every position.

    Hidden dimension 0 becomes a constant carrier: every token's input embedding holds `_CARRIER` there and
    no layer writes to it (row 0 of each o_proj and down_proj is zeroed), so it dominates the norm of the
    residual stream and, after the final RMSNorm, equals ~sqrt(hidden) * w0 at every position. w0 (the final
    norm's weight 0) is set so that the carrier adds `_COMMON_OFFSET` to every logit through the output head's
    column 0 (= `_CARRIER`), plus, through the eos row's larger entry there, log(p / (1 - p) * (V - 1)) to the
    eos logit. The other dimensions are small next to the carrier, so the other logits stay within ~0.1 of
    each other: P(eos) ~ p and the rest is near-uniform. (With tied embeddings eos's input embedding gets the
    larger entry too; eos is never an input that a trained logit depends on.)
    """
    hidden = model.config.hidden_size
    vocab = model.config.vocab_size
    extra = math.log(probability / (1 - probability) * (vocab - 1))
    model.get_input_embeddings().weight[:, 0] = _CARRIER
    head = model.get_output_embeddings().weight
    head[:, 0] = _CARRIER
    head[eos_id, 0] = _CARRIER * (1 + extra / _COMMON_OFFSET)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    model.model.norm.weight[0] = _COMMON_OFFSET / (_CARRIER * math.sqrt(hidden))
