"""Next-token sampling for the native rollout engine: temperature, top-k, top-p, and the log-probs to record.

Contract with the trainer: the log-prob recorded for a sampled token is `log_softmax(logits / T)` of the FULL
vocabulary (T = 1 when greedy), not of the top-k / top-p truncated distribution the token was drawn from.
That is the quantity the trainer recomputes for the importance ratio, so the two agree at ratio 1 on-policy.
(vLLM's default `logprobs` are likewise the untruncated ones.)

N rows (sequences), V vocabulary.
"""
from __future__ import annotations

import torch

from engine.rollout.base import SamplingParams


def check_sampling_params(params: SamplingParams) -> None:
    """Raise ValueError naming the first field of `params` that the sampler cannot honour."""
    if params.n < 1:
        raise ValueError(f"SamplingParams.n must be >= 1, got {params.n}")
    if params.max_new_tokens < 1:
        raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {params.top_k}")
    if any(not isinstance(s, str) or not s for s in params.stop_strings):
        raise ValueError(f"SamplingParams.stop_strings must be non-empty strings, got {params.stop_strings!r}")


def token_logprobs(logits_NV: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 log_softmax(logits / T) over the whole vocabulary; T == 0 (greedy) uses T = 1."""
    scale = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits_NV.float() / scale, dim=-1)


def mask_top_k(logits_NV: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (ties with the k-th are kept). k <= 0: off."""
    if k <= 0 or k >= logits_NV.shape[-1]:
        return logits_NV
    kth_N1 = torch.topk(logits_NV, k, dim=-1).values[:, -1:]
    return logits_NV.masked_fill(logits_NV < kth_N1, float("-inf"))


def mask_top_p(logits_NV: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest prefix of tokens (by probability) whose mass reaches p, at least one."""
    if p >= 1.0:
        return logits_NV
    sorted_NV, order_NV = torch.sort(logits_NV, dim=-1, descending=True)
    probs_NV = torch.softmax(sorted_NV, dim=-1)
    # A token is dropped when the tokens ranked above it already hold mass p; the top token never is.
    drop_sorted_NV = (torch.cumsum(probs_NV, dim=-1) - probs_NV) >= p
    drop_NV = torch.zeros_like(drop_sorted_NV).scatter(-1, order_NV, drop_sorted_NV)
    return logits_NV.masked_fill(drop_NV, float("-inf"))


def draw(probs_NV: torch.Tensor, generator: torch.Generator | None = None,
         u_N: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from `probs_NV` (rows need not be normalised) by inverting the row's CDF.

    Same distribution as torch.multinomial, but one uniform per row instead of per entry: ~25x faster on CPU
    at V = 8k, and no host synchronisation on accelerators. The uniforms are `u_N` (in [0, 1), one per row)
    when given, else drawn from `generator`: a caller that owns one random stream per prompt passes `u_N`, so
    a row's token does not depend on which other rows share its batch. A zero-probability token is never
    drawn: its CDF step is empty.
    """
    cdf_NV = torch.cumsum(probs_NV, dim=-1)
    total_N1 = cdf_NV[:, -1:]
    if u_N is None:
        u_N1 = torch.rand(total_N1.shape, generator=generator, device=cdf_NV.device, dtype=cdf_NV.dtype)
    else:
        u_N1 = u_N.to(cdf_NV.dtype)[:, None]
    # u * total can round up to total; keep it strictly below so the index stays on a token with mass.
    target_N1 = torch.minimum(u_N1 * total_N1, torch.nextafter(total_N1, torch.zeros_like(total_N1)))
    return torch.searchsorted(cdf_NV, target_N1, right=True).squeeze(-1)


def sample_next(
    logits_NV: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
    u_N: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row with uniforms `u_N` or from `generator` (see `draw`); greedy uses neither.
    Returns (tokens_N int64, logprobs_N float32), see the module docstring."""
    scaled_NV = logits_NV.float() / (params.temperature if params.temperature > 0 else 1.0)
    if params.temperature == 0:
        tokens_N = torch.argmax(scaled_NV, dim=-1)
    else:
        # Same order as HF and vLLM: temperature, then top-k, then top-p on what top-k left.
        filtered_NV = mask_top_p(mask_top_k(scaled_NV, params.top_k), params.top_p)
        tokens_N = draw(torch.softmax(filtered_NV, dim=-1), generator, u_N)
    # log_softmax at one entry per row, without writing out the (N, V) table.
    logp_N = scaled_NV.gather(-1, tokens_N[:, None]).squeeze(-1) - torch.logsumexp(scaled_NV, dim=-1)
    return tokens_N, logp_N
