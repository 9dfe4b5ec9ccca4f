"""Several trainer ranks under torchrun: SPMD training with FSDP2, driven by the single controller on rank 0.

    dist.py        the process group and the few collectives the engine uses (through the backend's name)
    fsdp.py        fully_shard with the run's MixedPrecisionPolicy; once-per-iteration gradient reduction
    spmd.py        the command protocol: rank 0's controller deals micro-batch rounds, the other ranks follow
    checkpoint.py  torch.distributed.checkpoint (sharded, reshardable) plus the Hugging Face export
"""
