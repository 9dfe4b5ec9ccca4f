"""Which (dtype, head_dim, T) FlexAttention's compiled kernels take, forward + backward, with the shared-prompt
block mask, and their error against the reference. A diagnostic for a CUDA machine, from the repository root:

    python .ci/flex_probe.py [device]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels.shared_prompt_attention.flex_cuda as flex  # noqa: E402
from kernels.shared_prompt_attention.layout import GroupSpan, SharedPromptLayout  # noqa: E402
from kernels.shared_prompt_attention.reference import reference_shared_prompt_attention  # noqa: E402

DEV = sys.argv[1] if len(sys.argv) > 1 else "cuda"
CASES = [(torch.float32, D, T) for D in (16, 32, 64) for T in (96, 256)] + [(torch.bfloat16, 16, 96)]

flex.MIN_HEAD_DIM = 1  # probe the real kernel at every size
torch._dynamo.config.cache_size_limit = 64  # every case compiled, none left to the eager fallback
for dtype, D, T in CASES:
    P = T // 4
    layout = SharedPromptLayout.from_spans((GroupSpan(0, P, (T // 4, T // 4 - 1)),), T).to(DEV)
    q, k, v = (torch.randn(h, T, D, device=DEV, dtype=dtype, requires_grad=True) for h in (4, 2, 2))
    try:
        out = flex.flex_shared_prompt_attention(q, k, v, layout)
        out.float().sum().backward()
        ref = reference_shared_prompt_attention(q, k, v, layout)
        print(f"{dtype} D={D} T={T}: ok, rel err {((out - ref).abs().max() / ref.abs().max()).item():.1e}", flush=True)
    except Exception as exc:  # report and go on: the point is the table
        print(f"{dtype} D={D} T={T}: FAILS {type(exc).__name__}: {str(exc).splitlines()[0][:150]}", flush=True)
