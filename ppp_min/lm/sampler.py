"""KV-cached batched sampler: static cache, ragged prefill + fork, decode until stop, extend per turn.

Contract (the rollout codes against it; docs/design.md#sampler)
- ``Sampler(model, batch_rows, max_len, device=None, dtype=None)`` owns ONE static ``KVCache`` of
  ``batch_rows`` rows x ``max_len`` slots, allocated once. Slot index == token position.
- ``prefill(prompts, group_size=1)`` starts a new batch (every row is cleared): the distinct ragged
  prompts are forwarded ONCE, right-padded in one batch, into rows ``i*group_size``; their cache slices
  are then copied (forked) into the other ``group_size - 1`` rows of the group.
- ``decode(rows, params, stop_ids, generator) -> list[Generated]`` samples every listed row until it emits
  a stop id (kept in ``ids``) or ``params.max_new_tokens``. Forked rows draw their first tokens
  independently from the same prefill logits. ``logprobs`` are under the *sampling* distribution:
  log_softmax(logits / T) at the token, renormalised over the top-k / top-p set when those are on
  (temperature 0 = greedy; its logprob is reported at T = 1, the sampling distribution being a point mass).
- ``extend(rows, chunks)`` appends forced tokens (observations) to live rows in one batched forward with
  per-row positions; nothing already cached is re-encoded.
- ``transcript(row) -> (ids, sampled, logprobs)``: everything appended so far; ``sampled`` is 1 exactly on
  decoded tokens (including the stop token), logprob 0.0 on prompt / forced tokens. ``length(row)``.
- ``last_logits(row)``: the float32 logits that predict the row's next token (for tests and scoring).
- ``generate(model, prompts, params, stop_ids, seed=0, max_len=None)``: one-call convenience.

Invariant: every token of a row's transcript is in the cache and ``_last[row]`` holds the logits after
the last one, so decode samples its first token without a forward and extend/decode can interleave freely.
Masks are explicit (slot j visible to the query at position p iff j <= p): pad slots of a ragged batch
are never visible to a real token and are overwritten before they could be. Host syncs while decoding:
one ``.any()`` per step for stop detection (plus one read of the stop flags on the rare steps where some row stops).
Errors are ``ValueError`` with what to do: an empty prompt, a row that is not live, duplicate rows, a
decode whose ``length + max_new_tokens`` or an extend whose ``length + len(chunk)`` exceeds ``max_len``.
Device/dtype default to the model's; a lower-precision ``dtype`` than the weights on CUDA runs under
autocast (bf16); float16 on CPU is refused.
Left out: speculative decoding, paged caches, repetition penalties, beam search (not needed for GRPO).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch

from ppp_min.lm.cache import KVCache
from ppp_min.lm.model import autocast, token_logprobs

_S_ROUND = 8  # attend over S = max live length rounded up to a multiple of 8: little extra work


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy; RL uses the same T in the sampler and the loss
    top_p: float = 1.0  # 1 = off (off in RL by default: the loss must score what was sampled)
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 64

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Generated:
    ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    stopped: bool  # True when the last id is a stop id; False when max_new_tokens ran out


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """Sample one token per row of float32 ``logits [N,V]``; return (tokens Long[N], logprobs Float[N]).

    Inverse-CDF sampling: one uniform u in (0, 1] per row, token = first index whose cumulative
    probability reaches u * total (zero-probability tokens own empty intervals and are never drawn). It
    needs N random numbers instead of N*V (torch.multinomial draws an exponential per vocabulary entry).
    The logprob is ``model.token_logprobs`` of the sampling distribution's logits (the trainer's formula)."""
    if params.temperature == 0:
        tok = logits.argmax(-1)
        return tok, token_logprobs(logits, tok)
    z = logits / params.temperature if params.temperature != 1.0 else logits
    if params.top_k and params.top_k < z.shape[-1]:
        kth = torch.topk(z, params.top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        # nucleus: drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop_sorted = (probs.cumsum(-1) - probs) >= params.top_p
        z = z.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    cdf = torch.softmax(z, dim=-1).cumsum(-1)  # of the (renormalised, truncated) sampling distribution
    u = 1.0 - torch.rand(z.shape[0], 1, generator=generator, device=z.device)
    tok = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_(max=z.shape[-1] - 1)
    return tok, token_logprobs(z, tok)  # -inf entries of z drop out of its logsumexp: renormalised


@dataclass
class _Row:
    """A live row's transcript: its tokens, 1 where sampled, and the sampling logprob (0.0 if forced)."""
    ids: list[int] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def append(self, ids: list[int], logprobs: list[float] | None = None) -> None:
        """Append sampled tokens with their logprobs, or forced ones (``logprobs`` None)."""
        self.ids.extend(ids)
        self.sampled.extend([0 if logprobs is None else 1] * len(ids))
        self.logprobs.extend([0.0] * len(ids) if logprobs is None else logprobs)


@dataclass
class _Decoding:
    """The rows of one ``decode`` call still sampling, all fields in the same order; they shrink together
    when some rows stop (``keep``)."""
    out: torch.Tensor  # [L] where each row's tokens go in decode's output buffers (0..len(rows)-1)
    rows: list[int]  # [L] its cache row (host copy)
    rows_t: torch.Tensor  # [L] the same, on the device
    pos: torch.Tensor  # [L] the position (== cache slot) its next token is written to

    def keep(self, keep: torch.Tensor) -> "_Decoding":
        flags = keep.tolist()
        return _Decoding(self.out[keep], [r for r, k in zip(self.rows, flags) if k], self.rows_t[keep],
                         self.pos[keep])


class Sampler:
    def __init__(self, model, batch_rows: int, max_len: int, device=None, dtype=None):
        p = next(model.parameters())
        self.device = torch.device(device) if device is not None else p.device
        self.dtype = dtype if dtype is not None else p.dtype
        if self.device.type == "cpu" and self.dtype == torch.float16:
            raise ValueError("float16 is not supported on CPU; use float32 (or bfloat16)")
        if batch_rows < 1 or max_len < 2:
            raise ValueError(f"need batch_rows >= 1 and max_len >= 2, got {batch_rows}, {max_len}")
        if max_len > model.config.max_position_embeddings:
            raise ValueError(f"max_len={max_len} exceeds the model's max_position_embeddings="
                             f"{model.config.max_position_embeddings}")
        self.model, self.batch_rows, self.max_len = model, batch_rows, max_len
        self.cache = KVCache(model.config, batch_rows, max_len, self.device, self.dtype)
        # a lower precision than the weights: autocast to it on CUDA; on CPU only the cache is stored in it
        lower = self.device.type == "cuda" and self.dtype != p.dtype
        self._compute_dtype = self.dtype if lower else None
        self._slots = torch.arange(max_len, device=self.device)
        self._views: dict[tuple[int, int], KVCache] = {}
        self._last = torch.zeros(batch_rows, model.config.vocab_size, device=self.device)
        self._rows: list[_Row | None] = [None] * batch_rows  # None: not live

    # ------------------------------------------------------------------ bookkeeping
    def length(self, row: int) -> int:
        return len(self._row(row).ids)

    def transcript(self, row: int) -> tuple[list[int], list[int], list[float]]:
        r = self._row(row)
        return list(r.ids), list(r.sampled), list(r.logprobs)

    def last_logits(self, row: int) -> torch.Tensor:
        self._row(row)
        return self._last[row].clone()

    def _row(self, row: int) -> _Row:
        try:
            ok = 0 <= operator.index(row) < self.batch_rows and self._rows[row] is not None
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"row {row!r} is not a live row (rows are 0..{self.batch_rows - 1}; only "
                             "rows filled by prefill are live)")
        return self._rows[row]

    def _check_rows(self, rows: list[int]) -> list[int]:
        for r in rows:
            self._row(r)
        rows = [operator.index(r) for r in rows]
        if len(set(rows)) != len(rows):
            raise ValueError(f"rows must be distinct, got {rows}")
        return rows

    def _round_s(self, n: int) -> int:
        return min(self.max_len, -(-n // _S_ROUND) * _S_ROUND)

    def _target(self, rows: list[int]):
        """(cache, rows tensor) for the model. Consecutive rows [a, b) -- e.g. every live row -- use a view
        of those cache rows with rows=None, so attention reads slices instead of gathering copies."""
        a = rows[0]
        if rows == list(range(a, a + len(rows))):
            key = (a, len(rows))
            if key not in self._views:
                self._views[key] = self.cache.row_view(a, a + len(rows))
            return self._views[key], None
        return self.cache, torch.tensor(rows, device=self.device)

    def _forward(self, ids, positions, target, mask, hidden_only=False):
        with autocast(self.device, self._compute_dtype):
            return self.model(ids, positions=positions, cache=target[0], mask=mask, rows=target[1],
                              hidden_only=hidden_only)

    def _chunk_forward(self, rows: list[int], chunks: list[list[int]]) -> None:
        """Write ragged ``chunks`` after each row's current length; set ``_last`` from each chunk's end."""
        starts = [len(self._rows[r].ids) for r in rows]
        lens = [len(c) for c in chunks]
        c_max = max(lens)
        ids = torch.tensor([c + [c[-1]] * (c_max - len(c)) for c in chunks], device=self.device)
        start_t = torch.tensor(starts, device=self.device)
        positions = start_t[:, None] + torch.arange(c_max, device=self.device)[None, :]
        s = self._round_s(max(starts) + c_max)
        mask = (self._slots[:s][None, None, :] <= positions[:, :, None])[:, None]  # [B,1,T,S]
        rows_t = torch.tensor(rows, device=self.device)
        hidden = self._forward(ids, positions, self._target(rows), mask, hidden_only=True)
        last_h = hidden[torch.arange(len(rows), device=self.device),
                        torch.tensor(lens, device=self.device) - 1]
        self._last[rows_t] = self.model.logits(last_h[:, None])[:, 0].float()

    # ------------------------------------------------------------------ operations
    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], group_size: int = 1) -> None:
        if not prompts or group_size < 1:
            raise ValueError("prefill needs at least one prompt and group_size >= 1")
        if len(prompts) * group_size > self.batch_rows:
            raise ValueError(f"{len(prompts)} prompts x group_size {group_size} = "
                             f"{len(prompts) * group_size} rows > batch_rows={self.batch_rows}")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
            if len(p) > self.max_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens > max_len={self.max_len}; "
                                 "raise max_len or shorten the prompt")
        prompts = [[int(t) for t in p] for p in prompts]
        self._rows = [None] * self.batch_rows
        heads = [i * group_size for i in range(len(prompts))]
        for r in heads:
            self._rows[r] = _Row()
        self._chunk_forward(heads, prompts)  # each distinct prompt forwarded once
        if group_size > 1:  # fork: copy each head row's cache slice into its group
            src = torch.tensor(heads, device=self.device).repeat_interleave(group_size - 1)
            dst = torch.tensor([h + j for h in heads for j in range(1, group_size)], device=self.device)
            self.cache.fork(src, dst, max(len(p) for p in prompts))
            self._last[dst] = self._last[src]
        for i, p in enumerate(prompts):
            for r in range(heads[i], heads[i] + group_size):
                self._rows[r] = _Row()
                self._rows[r].append(p)

    @torch.inference_mode()
    def extend(self, rows: list[int], chunks: list[list[int]]) -> None:
        if len(rows) != len(chunks):
            raise ValueError(f"extend got {len(rows)} rows but {len(chunks)} chunks")
        rows = self._check_rows(rows)
        pairs = [(r, [int(t) for t in c]) for r, c in zip(rows, chunks) if len(c) > 0]
        for r, c in pairs:
            if self.length(r) + len(c) > self.max_len:
                raise ValueError(f"row {r}: {self.length(r)} tokens + a chunk of {len(c)} exceeds "
                                 f"max_len={self.max_len}; raise max_len or end the episode")
        # Pad slots of a row lie after its chunk; a batch whose padding would run past max_len is split
        # (rows that do not fit the common padded width are forwarded alone, without padding).
        c_max = max((len(c) for _, c in pairs), default=0)
        fits = [self.length(r) + c_max <= self.max_len for r, _ in pairs]
        fit = [pc for pc, f in zip(pairs, fits) if f]
        groups = ([fit] if fit else []) + [[pc] for pc, f in zip(pairs, fits) if not f]
        for g in groups:
            self._chunk_forward([r for r, _ in g], [c for _, c in g])
        for r, c in pairs:
            self._rows[r].append(c)

    @torch.inference_mode()
    def decode(self, rows: list[int], params: SamplingParams, stop_ids: set[int],
               generator: torch.Generator | None = None) -> list[Generated]:
        rows = self._check_rows(rows)
        if not rows:
            return []
        n_new = params.max_new_tokens
        for r in rows:
            if self.length(r) + n_new > self.max_len:
                raise ValueError(f"row {r} holds {self.length(r)} tokens; decoding up to {n_new} more "
                                 f"would exceed max_len={self.max_len}; raise max_len or lower "
                                 "max_new_tokens")
        dev = self.device
        if generator is not None and generator.device.type != dev.type:
            raise ValueError(f"the generator lives on {generator.device} but the sampler on {dev}; "
                             f"make it with torch.Generator(device='{dev.type}')")
        stops = {int(s) for s in stop_ids}
        stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=dev)
        n = len(rows)
        tokens = torch.zeros(n, n_new, dtype=torch.long, device=dev)  # row i's step-t token; 0 after it stops
        logps = torch.zeros(n, n_new, dtype=torch.float32, device=dev)
        rows_t = torch.tensor(rows, device=dev)
        live = _Decoding(torch.arange(n, device=dev), list(rows), rows_t,
                         torch.tensor([self.length(r) for r in rows], device=dev))
        max_pos = max(self.length(r) for r in rows)  # host-side bound on live.pos, no sync needed
        target = self._target(rows)
        logits = self._last[rows_t]
        for step in range(n_new):
            tok, lp = sample_tokens(logits, params, generator)
            if len(live.rows) == n:  # every requested row still sampling: plain column writes
                tokens[:, step], logps[:, step] = tok, lp
            else:
                tokens[live.out, step], logps[live.out, step] = tok, lp
            # forward the sampled token so the cache always holds the whole transcript (invariant)
            s = self._round_s(max_pos + 1)
            mask = (self._slots[:s][None, :] <= live.pos[:, None])[:, None, None, :]  # [L,1,1,S]
            out = self._forward(tok[:, None], live.pos[:, None], target, mask)[:, -1].float()
            live.pos, max_pos = live.pos + 1, max_pos + 1
            if step == n_new - 1:  # budget spent
                self._last[live.rows_t] = out
                break
            is_stop = torch.isin(tok, stop_t)
            if stop_t.numel() and bool(is_stop.any()):  # the one host sync per step (none without stops)
                self._last[live.rows_t[is_stop]] = out[is_stop]
                keep = ~is_stop
                live, out = live.keep(keep), out[keep]
                if not live.rows:
                    break
                target = self._target(live.rows)
            logits = out
        # a row stopped at its first stop id (kept), or ran to n_new tokens
        result = []
        for r, toks, lps in zip(rows, tokens.tolist(), logps.tolist()):
            k = next((j + 1 for j, t in enumerate(toks) if t in stops), n_new)
            ids, lp = toks[:k], lps[:k]
            self._rows[r].append(ids, lp)
            result.append(Generated(tuple(ids), tuple(lp), ids[-1] in stops))
        return result


def generate(model, prompts: list[list[int]], params: SamplingParams, stop_ids: set[int],
             seed: int = 0, max_len: int | None = None) -> list[Generated]:
    """Sample one continuation per prompt (batched, KV-cached) with a generator seeded by ``seed``."""
    if not prompts:
        return []
    if max_len is None:
        max_len = min(max(len(p) for p in prompts) + params.max_new_tokens,
                      model.config.max_position_embeddings)
    sampler = Sampler(model, len(prompts), max_len)
    sampler.prefill(prompts)
    gen = torch.Generator(device=sampler.device).manual_seed(seed)
    return sampler.decode(list(range(len(prompts))), params, stop_ids, gen)
