"""Checkpoints: `runs/<name>/checkpoints/iter_<k:06d>/`, crash-safe and self-verifying.

Layout of one checkpoint (k = iterations completed when it was taken):

    iter_000010/
      config.json, generation_config.json, model.safetensors   # Hugging Face folder: from_pretrained works
                                                                # (model.lora: adapter_config.json +
                                                                #  adapter_model.safetensors, peft's format)
      tokenizer.json, tokenizer_config.json, ...                # when a tokenizer was given
      trainer_state.pt                                          # see make_trainer_state
      manifest.json                                             # {file: {size, sha256}}, written LAST

Crash safety: everything is written into `iter_<k>.tmp-<pid>/`, fsynced, and only then renamed to
`iter_<k>/` (a rename within one directory is atomic). A directory is a checkpoint only when its manifest
parses and every listed file has the listed size and sha256, so a run killed mid-save, a truncated copy or a
bit-rotted file is never resumed from: `latest_checkpoint` skips it (with a warning) and falls back to the
newest valid one. `*.tmp-<pid>` folders whose process is gone are deleted at the next save.

`trainer_state.pt` is read with `torch.load(weights_only=True)` (no arbitrary unpickling), so the state may
hold only tensors, numbers, strings, None, dtypes and (nested) dict/list/tuple/set; `save_checkpoint`
checks this up front and names the offending key, rather than letting a resume fail later.

Only one process (rank 0) saves into a checkpoint root; the stale-tmp cleanup tells dead runs from live ones
by process id, which is only meaningful on one host.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from engine.lora import ADAPTER_CONFIG, adapter_state, is_lora, load_adapter

MANIFEST_FILE = "manifest.json"
TRAINER_STATE_FILE = "trainer_state.pt"
FORMAT = "cadence-checkpoint"
FORMAT_VERSION = 1

_FINAL_NAME = re.compile(r"^iter_(\d+)$")
_TMP_NAME = re.compile(r"^iter_\d+\.tmp-(\d+)(?:-\w+)?$")
_HASH_CHUNK = 8 << 20
_PLAIN_LEAVES = (torch.Tensor, int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device)

# path -> stat signature of the files it was last fully verified with: resume verifies the same checkpoint
# from latest_checkpoint, load_trainer_state and load_model_weights; hashing gigabytes once is enough.
_verified: dict[Path, tuple] = {}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names the directory and the file."""


class CheckpointWarning(UserWarning):
    """An invalid or in-progress checkpoint directory was skipped."""


# ---------------------------------------------------------------------------------------------- saving


def checkpoint_dir(ckpt_root: str | Path, iteration: int) -> Path:
    return Path(ckpt_root) / f"iter_{iteration:06d}"


def checkpoint_iteration(path: str | Path) -> int:
    """The iteration a checkpoint directory was taken at, from its name."""
    match = _FINAL_NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint directory name (expected iter_<k>)")
    return int(match[1])


def tmp_checkpoint_dir(ckpt_root: str | Path, iteration: int, pid: int) -> Path:
    """Where process `pid` assembles checkpoint `iteration` before publishing it (sharded writers on other
    ranks write their files into rank 0's folder)."""
    return Path(ckpt_root) / f"{checkpoint_dir(ckpt_root, iteration).name}.tmp-{pid}"


def save_checkpoint(ckpt_root: str | Path, iteration: int, model: Any, tokenizer: Any, state: dict,
                    model_state: dict[str, torch.Tensor] | None = None,
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write `model` (HF format), `tokenizer` (may be None) and `state` as checkpoint `iteration`; return its
    directory. An existing checkpoint of the same iteration is replaced. With `model_state` (a `snapshot` of
    the model's state dict), those values are written rather than the module's live parameters.
    `write_extra(folder)` adds files before the manifest is taken (the sharded state of a multi-rank run)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    state = _with_iteration(state, iteration)
    _check_plain(state, "state")
    final = checkpoint_dir(root, iteration)
    tmp = tmp_checkpoint_dir(root, iteration, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with _no_hf_progress_bars():
            # transformers 5 always writes safetensors (tied weights stored once)
            model.save_pretrained(tmp, state_dict=model_state)
        _name_the_models_own_class(tmp, model)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if write_extra is not None:
            write_extra(tmp)
        torch.save(state, tmp / TRAINER_STATE_FILE)
        _write_manifest(tmp, iteration)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _verified[final.resolve()] = _signature(final)  # its hashes were just computed from the written bytes
    return final


def snapshot(obj: Any, _copies: dict | None = None, dtype: torch.dtype | None = None) -> Any:
    """`obj` with every tensor replaced by a detached CPU copy (tensors that shared storage still do, so tied
    weights stay tied): a checkpoint of it can be written while training goes on changing the originals.
    `dtype` casts floating-point tensors (the Hugging Face export is in the model's compute dtype)."""
    copies = {} if _copies is None else _copies
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape), tuple(obj.stride()))
        if key not in copies:
            cast = dtype if dtype is not None and obj.is_floating_point() else obj.dtype
            copies[key] = obj.detach().to("cpu", cast, copy=True)
        return copies[key]
    if isinstance(obj, dict):
        return {key: snapshot(value, copies, dtype) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(value, copies, dtype) for value in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on a background thread, so the disk write (and hashing) overlaps the next iteration.

    The caller hands over a `snapshot` (nothing the run still mutates). At most one write is in flight:
    `submit` first waits for the previous one, so checkpoints land in order, and a failed write is raised by
    the next `submit` or by `wait`. Until `wait` returns, the newest checkpoint may still be
    the previous one; a crash mid-write leaves only a `.tmp-<pid>` folder, never a checkpoint.
    """

    def __init__(self, ckpt_root: str | Path, model: Any, tokenizer: Any, keep: int) -> None:
        self.root, self.model, self.tokenizer, self.keep = Path(ckpt_root), model, tokenizer, keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, iteration: int, model_state: dict[str, torch.Tensor], state: dict) -> None:
        _check_plain(state, "state")  # here, so a bad state fails at once and in the caller's thread
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(iteration, model_state, state),
                                        name=f"cadence-checkpoint-{iteration}")
        self._thread.start()

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise CheckpointError(f"{self.root}: writing a checkpoint failed: {error}") from error

    def _write(self, iteration: int, model_state: dict[str, torch.Tensor], state: dict) -> None:
        try:
            save_checkpoint(self.root, iteration, self.model, self.tokenizer, state, model_state=model_state)
            prune_checkpoints(self.root, self.keep)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc


def _name_the_models_own_class(folder: Path, model: Any) -> None:
    """FSDP2 wraps a model's class as FSDP<Name>; the export must name <Name> (vLLM picks the architecture
    from config.json)."""
    own = next((c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP")), None)
    config_file = folder / "config.json"
    if own is None or own == type(model).__name__ or not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    config["architectures"] = [own]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """transformers 5 draws a "Writing model shards" bar on every save, which would tear the run's own bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _with_iteration(state: dict, iteration: int) -> dict:
    if state.get("iteration", iteration) != iteration:
        raise ValueError(f"state['iteration']={state['iteration']} but saving checkpoint {iteration}")
    return {**state, "iteration": iteration}


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value `torch.load(weights_only=True)` could not read back."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN_LEAVES):
        raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in {TRAINER_STATE_FILE}; "
                        "use tensors, numbers, strings, None and dict/list/tuple")


def _write_manifest(folder: Path, iteration: int) -> None:
    """Hash and fsync every file, then write manifest.json last and fsync the folder."""
    files = {}
    for path in sorted(_files(folder)):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path, fsync=True)}
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "iteration": iteration, "files": files}
    with (folder / MANIFEST_FILE).open("w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(sub)


def _publish(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` is first moved aside under a tmp name (a directory
    cannot be renamed over a non-empty one), so a crash in between leaves only cleanable tmp folders."""
    aside = None
    if final.exists():
        aside = final.with_name(f"{final.name}.tmp-{os.getpid()}-old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_tmp(root: Path) -> None:
    """Delete `*.tmp-<pid>` folders left by processes that no longer exist (or by this one)."""
    for path in root.iterdir():
        match = _TMP_NAME.match(path.name)
        if match and path.is_dir():
            pid = int(match[1])
            if pid == os.getpid() or not _pid_alive(pid):
                shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 checks existence without touching the process
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ----------------------------------------------------------------------------------------- verification


def verify_checkpoint(path: str | Path, hashes: bool = True) -> None:
    """Raise CheckpointError unless `path` has a valid manifest and every listed file matches it
    (size always; sha256 when `hashes`). Required files must be listed."""
    path = Path(path)
    key = path.resolve()
    if hashes and key in _verified and _verified[key] == _signature(path):
        return
    manifest = _read_manifest(path)
    for rel, entry in manifest["files"].items():
        try:
            _verify_file(path, rel, entry, hashes)
        except (KeyError, TypeError) as exc:  # valid JSON, but not what save_checkpoint writes
            raise CheckpointError(f"{path}: {MANIFEST_FILE} entry for {rel} is malformed: {exc!r}") from exc
    if hashes:
        _verified[key] = _signature(path)


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is missing (the save did not finish)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is corrupt: {exc}") from exc
    is_ours = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    if not (is_ours and isinstance(manifest.get("files"), dict)):
        raise CheckpointError(f"{path}: {MANIFEST_FILE} is not a {FORMAT} manifest")
    if TRAINER_STATE_FILE not in manifest["files"]:
        raise CheckpointError(f"{path}: {MANIFEST_FILE} does not list {TRAINER_STATE_FILE}")
    if not {"config.json", ADAPTER_CONFIG} & set(manifest["files"]):  # a model folder, or a LoRA adapter folder
        raise CheckpointError(f"{path}: {MANIFEST_FILE} does not list config.json (nor a LoRA {ADAPTER_CONFIG})")
    if not any(rel.endswith(".safetensors") for rel in manifest["files"]):
        raise CheckpointError(f"{path}: {MANIFEST_FILE} lists no .safetensors weights")
    return manifest


def _verify_file(folder: Path, rel: str, entry: dict, hashes: bool) -> None:
    file = folder / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(f"{folder}: {MANIFEST_FILE} lists a path outside the checkpoint: {rel}")
    if not file.is_file():
        raise CheckpointError(f"{folder}: {rel} is missing")
    size = file.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(f"{folder}: {rel} is truncated or changed: {size} bytes, manifest says {entry['size']}")
    if hashes and _sha256(file) != entry["sha256"]:
        raise CheckpointError(f"{folder}: {rel} is corrupt: its sha256 does not match the manifest")


def _signature(folder: Path) -> tuple:
    """Sizes and mtimes of every file: a cheap stand-in for "unchanged since the last full verification"."""
    return tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(_files(folder, include_manifest=True)))


# --------------------------------------------------------------------------------------------- discovery


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The valid checkpoint with the highest iteration, or None. Invalid and in-progress (tmp) directories
    are skipped with a CheckpointWarning."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    for path in root.iterdir():
        if _TMP_NAME.match(path.name):
            warnings.warn(f"ignoring unfinished checkpoint {path}", CheckpointWarning, stacklevel=2)
    for _, path in sorted(_final_dirs(root), reverse=True):
        try:
            verify_checkpoint(path)
        except CheckpointError as exc:
            warnings.warn(f"ignoring invalid checkpoint: {exc}", CheckpointWarning, stacklevel=2)
            continue
        return path
    return None


def prune_checkpoints(ckpt_root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` valid checkpoints (keep <= 0 keeps all); return the deleted paths.

    Validity here is the cheap check (manifest + sizes). Invalid directories are left alone: they are never
    counted among the kept ones, so pruning cannot leave a run with only broken checkpoints.
    """
    root = Path(ckpt_root)
    if keep <= 0 or not root.is_dir():
        return []
    valid = [path for _, path in sorted(_final_dirs(root), reverse=True) if _is_valid(path)]
    removed = valid[keep:]
    for path in removed:
        _remove_checkpoint(path)
    return removed


def _is_valid(path: Path) -> bool:
    try:
        verify_checkpoint(path, hashes=False)
    except CheckpointError:
        return False
    return True


def _remove_checkpoint(path: Path) -> None:
    # Renamed first, so a crash mid-delete leaves a tmp folder (cleaned later), never a half-deleted
    # directory under a checkpoint name.
    doomed = path.with_name(f"{path.name}.tmp-{os.getpid()}-del")
    os.replace(path, doomed)
    _verified.pop(path.resolve(), None)
    shutil.rmtree(doomed, ignore_errors=True)


def _final_dirs(root: Path) -> Iterator[tuple[int, Path]]:
    for path in root.iterdir():
        match = _FINAL_NAME.match(path.name)
        if match and path.is_dir():
            yield int(match[1]), path


# ----------------------------------------------------------------------------------------------- loading


def load_trainer_state(path: str | Path) -> dict:
    """Verify checkpoint `path` and return its trainer state (tensors on CPU)."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        return torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # the bytes match the manifest, so this is a writer/reader version problem
        raise CheckpointError(f"{path}: {TRAINER_STATE_FILE} cannot be read: {exc}") from exc


def load_model_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Copy checkpoint `path`'s safetensors weights into `model`, strictly: every tensor of the file must
    exist in the model with the same shape, and every model tensor must be loaded, except an alias of a
    loaded one (tied embeddings are saved once, under one of their names)."""
    from safetensors.torch import load_file

    path = Path(path)
    verify_checkpoint(path)
    loaded: set[str] = set()
    for shard in _weight_files(path):
        tensors = load_file(shard, device="cpu")  # one shard at a time bounds host memory
        try:
            result = model.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:  # shape mismatch: the checkpoint is of another model
            raise CheckpointError(f"{shard}: does not fit the model: {exc}") from exc
        if result.unexpected_keys:
            raise CheckpointError(f"{shard}: tensors not in the model: {sorted(result.unexpected_keys)[:5]}")
        loaded.update(tensors)
    missing = _unloaded(model, loaded)
    if missing:
        raise CheckpointError(f"{path}: model tensors missing from the checkpoint: {missing[:5]}")


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():  # sharded save
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    return sorted(path.glob("*.safetensors"))


def _unloaded(model: torch.nn.Module, loaded: set[str]) -> list[str]:
    """State-dict names not loaded and not sharing their tensor with a loaded name."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [name for names in groups.values() if not loaded.intersection(names) for name in names]


# ------------------------------------------------------------------------------------------ trainer state


def make_trainer_state(*, iteration: int, policy_version: int, optimizer: torch.optim.Optimizer,
                       scheduler: Any, data_state: dict, backend: Any, extra: dict | None = None) -> dict:
    """The state saved next to the weights. Keys: iteration, policy_version, optimizer, scheduler (None when
    there is none), rng (see capture_rng), data (the data stream's state_dict), extra (caller's own)."""
    return {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "policy_version": policy_version,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng(backend),
        "data": data_state,
        "extra": dict(extra or {}),
    }


def restore_trainer_state(state: dict, *, optimizer: torch.optim.Optimizer, scheduler: Any, backend: Any) -> None:
    """Load the optimizer, scheduler and RNG parts of `state`; the data stream and `extra` are the caller's."""
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], backend)


def capture_rng(backend: Any) -> dict:
    """Every random generator a run draws from: python `random`, torch CPU, numpy's global one, and the
    backend's device generators (`backend` may be None)."""
    return {
        "python": random.getstate(),
        "torch_cpu": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "backend": backend.rng_state() if backend is not None else {},
    }


def restore_rng(state: dict, backend: Any) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch_cpu"])
    if state.get("numpy") is not None:
        _set_numpy_state(state["numpy"])
    if backend is not None:
        backend.set_rng_state(state["backend"])


def _numpy_state() -> dict | None:
    try:
        import numpy as np
    except ImportError:
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # Plain types: weights_only loading refuses numpy arrays.
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(state: dict) -> None:
    import numpy as np

    keys = np.asarray(state["keys"], dtype=np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


# ------------------------------------------------------------------------------------------------- files


def _files(folder: Path, include_manifest: bool = False) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() and (include_manifest or path.relative_to(folder).as_posix() != MANIFEST_FILE):
            yield path


def _sha256(path: Path, fsync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(f.fileno())  # flushes the file's dirty pages whichever descriptor wrote them
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------ a run's checkpoints


class RunCheckpoints:
    """A one-process run's checkpoints: the Hugging Face export in the compute dtype, and trainer_state.pt
    with the trainer's state (optimizer, schedule, float32 masters under mixed precision) plus the run's own
    (`run_state`: stream, RNG, iteration, accuracy_before). Written in the background (`CheckpointWriter`).
    The multi-rank twin is engine/parallel/checkpoint.py's ShardedCheckpoints, with the same three methods."""

    def __init__(self, ckpt_root: str | Path, trainer: Any, tokenizer: Any, keep: int) -> None:
        self.root = Path(ckpt_root)
        self.trainer = trainer
        self.writer = CheckpointWriter(self.root, trainer.trimodel.actor, tokenizer, keep)

    def submit(self, iteration: int, run_state: dict) -> None:
        """Snapshot now; the write overlaps what the run does next. Under LoRA the export is the adapter alone,
        in peft's folder format (the actor's save_pretrained is peft's)."""
        actor = self.trainer.trimodel.actor
        weights = adapter_state(actor) if is_lora(actor) else actor.state_dict()
        export = snapshot(weights, dtype=self.trainer.precision.compute)
        state = snapshot({"trainer": self.trainer.state_dict(), **run_state})
        self.writer.submit(iteration, export, state)

    def wait(self) -> None:
        self.writer.wait()

    def restore(self) -> dict | None:
        """Load the newest valid checkpoint into the trainer; return its run state (None: nothing to resume)."""
        path = latest_checkpoint(self.root)
        if path is None:
            return None
        state = load_trainer_state(path)
        if "optimizer" not in state["trainer"]:
            raise CheckpointError(f"{path}: written by a torchrun run (sharded state in dcp/); resume it under "
                                  f"torchrun, with any --nproc-per-node")
        actor = self.trainer.trimodel.actor
        if is_lora(actor):
            load_adapter(path, actor)
        else:
            load_model_weights(path, actor)
        self.trainer.load_state_dict(state["trainer"])
        return {**state, "path": str(path)}
