"""The T5 encoder-decoder (t5, flan-t5 / t5 v1.1) in float32 numpy.

T5's layer norm is an RMS norm (no mean, no bias); attention scores are not scaled by 1/sqrt(d_kv); positions
enter only as a learned bias per head and relative-position bucket, held by the first layer of each stack and
shared by its other layers (bidirectional buckets in the encoder, causal ones in the decoder; cross-attention
has none).  The feed-forward is relu (t5) or gated-gelu with gelu's tanh approximation (flan-t5).  With tied
embeddings (t5) the decoder output is scaled by d_model**-0.5 before the shared output head; untied models
(t5 v1.1 / flan-t5) have their own lm_head and no scaling.

Decoding keeps the self-attention keys/values of every decoder token in a preallocated float32 cache that
doubles when full, and the cross-attention keys/values of the encoder output, computed once per prompt.
Reference: transformers' ``modeling_t5.py`` (llama.cpp: ``src/models/t5.cpp``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import UnsupportedError, WorkbenchError
from .llama import rms_norm, softmax_  # T5LayerNorm is an RMS norm (no mean, no bias)

F32 = np.float32
_CHUNK = 256  # query rows per attention block (bounds the [heads, rows, keys] score matrix)


# -- math ------------------------------------------------------------------------------------------

def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26), for the exact gelu."""
    s = np.sign(x)
    a = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (s * (1.0 - poly * np.exp(-a * a))).astype(F32)


def activation(name: str, x: np.ndarray) -> np.ndarray:
    """transformers' ACT2FN[name] on float32 x, in place where possible."""
    if name == "relu":
        return np.maximum(x, F32(0.0), out=x)
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):  # 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
        inner = x * x
        inner *= F32(0.044715)
        inner += F32(1.0)
        inner *= x
        inner *= F32(math.sqrt(2.0 / math.pi))
        np.tanh(inner, out=inner)
        inner += F32(1.0)
        inner *= F32(0.5)
        return np.multiply(x, inner, out=x)
    if name == "gelu":  # exact: 0.5 x (1 + erf(x / √2))
        return x * (F32(0.5) * (F32(1.0) + _erf(x * F32(1.0 / math.sqrt(2.0)))))
    if name in ("silu", "swish"):
        return np.divide(x, F32(1.0) + np.exp(-x), out=x)
    raise UnsupportedError(f"feed-forward activation {name!r} is not supported by the t5 engine",
                           hint="Supported: relu, gelu, gelu_new (gated-gelu), silu.")


def feed_forward_kind(cfg: dict[str, Any]) -> tuple[bool, str]:
    """(gated, activation) from config.json's ``feed_forward_proj`` as T5Config reads it."""
    proj = str(cfg.get("feed_forward_proj") or "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise UnsupportedError(f"feed_forward_proj {proj!r} is not of the form 'ACT' or 'gated-ACT'")
    act = parts[-1]
    if proj == "gated-gelu":  # T5Config: the tanh approximation, for backward compatibility
        act = "gelu_new"
    return len(parts) == 2, act


def relative_position_bucket(rel: np.ndarray, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128) -> np.ndarray:
    """T5Attention._relative_position_bucket: bucket of ``rel`` = key position - query position.

    Half the buckets (per direction when bidirectional) are exact distances, the rest log-spaced up to
    ``max_distance``; the log branch is computed in float32 as transformers does.
    """
    rel = np.asarray(rel, dtype=np.int64)
    buckets = np.zeros(rel.shape, np.int64)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    ratio = np.maximum(rel, 1).astype(F32) / F32(max_exact)  # [..] (the small ones are not used)
    large = max_exact + (np.log(ratio) / F32(math.log(max_distance / max_exact))
                         * F32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rel, large)


# -- weights ---------------------------------------------------------------------------------------

@dataclass
class _Attn:
    q: np.ndarray  # [inner, d]
    k: np.ndarray  # [inner, d]
    v: np.ndarray  # [inner, d]
    o: np.ndarray  # [d, inner]


@dataclass
class _FF:
    wi: np.ndarray  # [d_ff, d] (relu) or the gate wi_0 (gated)
    wi_1: np.ndarray | None  # [d_ff, d] the linear half of a gated unit
    wo: np.ndarray  # [d, d_ff]


@dataclass
class _EncLayer:
    ln_sa: np.ndarray  # [d]
    sa: _Attn
    ln_ff: np.ndarray  # [d]
    ff: _FF


@dataclass
class _DecLayer:
    ln_sa: np.ndarray  # [d]
    sa: _Attn
    ln_ca: np.ndarray  # [d]
    ca: _Attn
    ln_ff: np.ndarray  # [d]
    ff: _FF


def _f32(a: np.ndarray) -> np.ndarray:
    """float32, C-contiguous (no copy when it already is)."""
    return np.ascontiguousarray(a, dtype=F32)


class _Cache:
    """Decoder self-attention keys/values [layers, heads, capacity, d_kv]; capacity doubles when full."""

    def __init__(self, n_layer: int, n_head: int, d_kv: int, capacity: int):
        self.shape = (n_layer, n_head, d_kv)
        self.k = np.zeros((n_layer, n_head, capacity, d_kv), F32)
        self.v = np.zeros_like(self.k)
        self.len = 0  # positions filled

    def reserve(self, n: int) -> None:
        cap = self.k.shape[2]
        if n <= cap:
            return
        cap = max(n, 2 * cap)
        k = np.zeros((self.shape[0], self.shape[1], cap, self.shape[2]), F32)
        v = np.zeros_like(k)
        k[:, :, :self.len] = self.k[:, :, :self.len]
        v[:, :, :self.len] = self.v[:, :, :self.len]
        self.k, self.v = k, v

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)


class T5Engine:
    """T5 / flan-t5 implementing :class:`~workbench.infer.base.Engine`.

    ``weights``: anything with ``.config`` (config.json as a dict) and ``.tensors`` (HF name -> float32 array),
    e.g. :class:`workbench.infer.weights.Weights`.  ``n_ctx``: initial decoder cache capacity (it grows).
    """

    is_encoder_decoder = True

    def __init__(self, weights: Any, *, n_ctx: int | None = None):
        cfg = self.config = dict(weights.config)
        self._tensors = weights.tensors
        self._source = getattr(weights, "source", None)
        try:
            self.d_model = int(cfg["d_model"])
            self.n_head = int(cfg["num_heads"])
            self.d_kv = int(cfg["d_kv"])
            self.n_enc = int(cfg["num_layers"])
        except KeyError as e:
            raise WorkbenchError(f"config.json has no {e.args[0]!r}, which the t5 engine needs",
                                 path=self._source) from None
        self.n_dec = int(cfg.get("num_decoder_layers") or self.n_enc)
        self.eps = float(cfg.get("layer_norm_epsilon", 1e-6))
        self.num_buckets = int(cfg.get("relative_attention_num_buckets", 32))
        self.max_distance = int(cfg.get("relative_attention_max_distance", 128))
        self.gated, self.act = feed_forward_kind(cfg)
        activation(self.act, np.zeros(1, F32))  # an unsupported activation fails here, not mid-generation
        start = cfg.get("decoder_start_token_id")
        self.decoder_start_id = int(start if start is not None else cfg.get("pad_token_id") or 0)
        # transformers scales the decoder output unless the config says the embeddings are untied
        self.scale_output = cfg.get("tie_word_embeddings", True) is not False
        self.inner = self.n_head * self.d_kv

        t = self._tensors
        shared = next((n for n in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
                       if n in t), "shared.weight")
        self.embed = self._w(shared)  # [V, d] (both stacks read the shared embedding)
        if "lm_head.weight" in t:
            self.lm_head = self._w("lm_head.weight")
        elif self.scale_output:
            self.lm_head = self.embed
        else:
            self._w("lm_head.weight", "the config says the output head is not tied to the embeddings "
                    "(tie_word_embeddings false)")
        self.vocab_size = int(self.lm_head.shape[0])
        if self.lm_head.shape[1] != self.d_model or self.embed.shape[1] != self.d_model:
            raise WorkbenchError(f"embedding width {self.embed.shape[1]} / output head width {self.lm_head.shape[1]} "
                                 f"differ from d_model {self.d_model}", path=self._source)
        self.enc_rel = self._w("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")  # [B, H]
        self.dec_rel = self._w("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")  # [B, H]
        for name, rel in (("encoder", self.enc_rel), ("decoder", self.dec_rel)):
            if rel.shape != (self.num_buckets, self.n_head):
                raise WorkbenchError(f"{name}.block.0 relative_attention_bias has shape {rel.shape}, expected "
                                     f"({self.num_buckets}, {self.n_head}) from config.json", path=self._source)
        self.enc_layers = [
            _EncLayer(ln_sa=self._w(f"encoder.block.{i}.layer.0.layer_norm.weight"),
                      sa=self._attn(f"encoder.block.{i}.layer.0.SelfAttention"),
                      ln_ff=self._w(f"encoder.block.{i}.layer.1.layer_norm.weight"),
                      ff=self._ff(f"encoder.block.{i}.layer.1.DenseReluDense"))
            for i in range(self.n_enc)]
        self.enc_norm = self._w("encoder.final_layer_norm.weight")
        self.dec_layers = [
            _DecLayer(ln_sa=self._w(f"decoder.block.{i}.layer.0.layer_norm.weight"),
                      sa=self._attn(f"decoder.block.{i}.layer.0.SelfAttention"),
                      ln_ca=self._w(f"decoder.block.{i}.layer.1.layer_norm.weight"),
                      ca=self._attn(f"decoder.block.{i}.layer.1.EncDecAttention"),
                      ln_ff=self._w(f"decoder.block.{i}.layer.2.layer_norm.weight"),
                      ff=self._ff(f"decoder.block.{i}.layer.2.DenseReluDense"))
            for i in range(self.n_dec)]
        self.dec_norm = self._w("decoder.final_layer_norm.weight")
        self._nbytes = sum(int(a.nbytes) for a in self._arrays())
        self._tensors = None  # only the arrays above are held

        self._n_ctx = max(1, int(n_ctx or 64))
        self.use_cache = True
        self.prompt_ids: list[int] = []
        self.decoder_ids: list[int] = []
        self.encoder_out: np.ndarray | None = None  # [n, d]
        self.cache: _Cache | None = None
        self.cross_k: np.ndarray | None = None  # [layers, H, n, d_kv]
        self.cross_v: np.ndarray | None = None

    # -- weights -------------------------------------------------------------------------------
    def _w(self, name: str, why: str | None = None) -> np.ndarray:
        t = self._tensors
        if name not in t:
            raise WorkbenchError(f"the model has no tensor {name!r}, which the t5 engine needs"
                                 + (f": {why}" if why else ""), path=self._source)
        return _f32(t[name])

    def _attn(self, p: str) -> _Attn:
        a = _Attn(q=self._w(p + ".q.weight"), k=self._w(p + ".k.weight"), v=self._w(p + ".v.weight"),
                  o=self._w(p + ".o.weight"))
        if a.q.shape != (self.inner, self.d_model) or a.o.shape != (self.d_model, self.inner):
            raise WorkbenchError(f"{p}: q {a.q.shape} / o {a.o.shape} do not fit num_heads {self.n_head} × d_kv "
                                 f"{self.d_kv} and d_model {self.d_model}", path=self._source)
        return a

    def _ff(self, p: str) -> _FF:
        t = self._tensors
        has_gate = p + ".wi_0.weight" in t
        if has_gate != self.gated:
            kind = "gated (wi_0/wi_1)" if has_gate else "plain (wi)"
            raise WorkbenchError(f"{p}: the checkpoint's feed-forward is {kind} but config.json says "
                                 f"feed_forward_proj {self.config.get('feed_forward_proj', 'relu')!r}",
                                 path=self._source, hint="Fix feed_forward_proj in config.json.")
        if self.gated:
            return _FF(wi=self._w(p + ".wi_0.weight"), wi_1=self._w(p + ".wi_1.weight"), wo=self._w(p + ".wo.weight"))
        return _FF(wi=self._w(p + ".wi.weight"), wi_1=None, wo=self._w(p + ".wo.weight"))

    def _arrays(self) -> Iterator[np.ndarray]:
        seen: set[int] = set()
        layers = [*self.enc_layers, *self.dec_layers]
        parts: list[Any] = [self.embed, self.lm_head, self.enc_rel, self.dec_rel, self.enc_norm, self.dec_norm]
        for L in layers:
            for v in vars(L).values():
                parts.extend(vars(v).values() if isinstance(v, (_Attn, _FF)) else [v])
        for a in parts:
            if a is not None and id(a) not in seen:
                seen.add(id(a))
                yield a

    def nbytes(self) -> int:
        """Bytes of weights held (the decoder caches are :meth:`cache_nbytes`)."""
        return self._nbytes

    def cache_nbytes(self) -> int:
        n = self.cache.nbytes if self.cache is not None else 0
        for a in (self.cross_k, self.cross_v):
            n += int(a.nbytes) if a is not None else 0
        return n

    # -- building blocks -----------------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int], what: str) -> np.ndarray:
        arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.embed.shape[0]):
            bad = int(arr.max()) if arr.max() >= self.embed.shape[0] else int(arr.min())
            raise WorkbenchError(f"{what} token id {bad} is outside the vocabulary of {self.embed.shape[0]}")
        return arr

    def _heads(self, x: np.ndarray) -> np.ndarray:
        """[T, H * d_kv] -> [H, T, d_kv]"""
        return x.reshape(x.shape[0], self.n_head, self.d_kv).transpose(1, 0, 2)

    def _position_bias(self, table: np.ndarray, q_pos: np.ndarray, k_len: int, bidirectional: bool) -> np.ndarray:
        """Relative-position bias [H, T, K] for queries at q_pos [T] over keys 0..k_len-1 (-inf on future keys
        in the causal decoder)."""
        rel = np.arange(k_len)[None, :] - q_pos[:, None]  # [T, K] memory - query
        buckets = relative_position_bucket(rel, bidirectional, self.num_buckets, self.max_distance)
        bias = table[buckets].transpose(2, 0, 1)  # [H, T, K]
        if not bidirectional:
            bias = np.where(rel[None] > 0, F32(-np.inf), bias).astype(F32)
        return np.ascontiguousarray(bias, dtype=F32)

    def _attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None, o: np.ndarray) -> np.ndarray:
        """softmax(q kᵀ + bias) v, heads merged and projected by o: q [H, T, d_kv], k/v [H, K, d_kv] -> [T, d].
        No 1/sqrt(d_kv) scaling: T5 folds it into its weights."""
        scores = np.matmul(q, k.transpose(0, 2, 1))  # [H, T, K]
        if bias is not None:
            scores += bias
        softmax_(scores)
        ctx = np.matmul(scores, v)  # [H, T, d_kv]
        return ctx.transpose(1, 0, 2).reshape(q.shape[1], self.inner) @ o.T  # [T, d]

    def _ffn(self, ff: _FF, h: np.ndarray) -> np.ndarray:
        a = activation(self.act, h @ ff.wi.T)  # [T, d_ff]
        if ff.wi_1 is not None:
            a *= h @ ff.wi_1.T
        return a @ ff.wo.T  # [T, d]

    # -- encoder -------------------------------------------------------------------------------
    def encode(self, ids: Sequence[int]) -> np.ndarray:
        """Encoder output [n, d_model] (after the final layer norm) of the prompt ``ids``."""
        arr = self._check_ids(ids, "prompt")
        if not arr.size:
            raise WorkbenchError("the prompt has no tokens: the t5 encoder needs at least one")
        n = arr.size
        x = self.embed[arr]  # [n, d] (a copy)
        pos = np.arange(n)
        for L in self.enc_layers:
            h = rms_norm(x, L.ln_sa, self.eps)
            q = self._heads(h @ L.sa.q.T)  # [H, n, d_kv]
            k = self._heads(h @ L.sa.k.T)
            v = self._heads(h @ L.sa.v.T)
            for a in range(0, n, _CHUNK):  # query blocks bound the [H, rows, n] scores
                b = min(n, a + _CHUNK)
                bias = self._position_bias(self.enc_rel, pos[a:b], n, True)  # [H, rows, n]
                x[a:b] += self._attend(q[:, a:b], k, v, bias, L.sa.o)
            x += self._ffn(L.ff, rms_norm(x, L.ln_ff, self.eps))
        return rms_norm(x, self.enc_norm, self.eps)

    def _cross_kv(self, enc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-attention keys and values of every decoder layer: 2 × [layers, H, n, d_kv]."""
        k = np.stack([self._heads(enc @ L.ca.k.T) for L in self.dec_layers])
        v = np.stack([self._heads(enc @ L.ca.v.T) for L in self.dec_layers])
        return k, v

    # -- decoder -------------------------------------------------------------------------------
    def _decode(self, ids: np.ndarray, cache: _Cache, cross_k: np.ndarray, cross_v: np.ndarray) -> np.ndarray:
        """Run decoder tokens ``ids`` at positions cache.len.. (appending their keys/values to ``cache``);
        the logits [T, vocab]."""
        start, t = cache.len, ids.size
        end = start + t
        cache.reserve(end)
        x = self.embed[ids]  # [T, d] (a copy)
        bias = self._position_bias(self.dec_rel, np.arange(start, end), end, False)  # [H, T, end], causal
        for i, L in enumerate(self.dec_layers):
            h = rms_norm(x, L.ln_sa, self.eps)
            cache.k[i, :, start:end] = self._heads(h @ L.sa.k.T)
            cache.v[i, :, start:end] = self._heads(h @ L.sa.v.T)
            q = self._heads(h @ L.sa.q.T)  # [H, T, d_kv]
            x += self._attend(q, cache.k[i, :, :end], cache.v[i, :, :end], bias, L.sa.o)
            h = rms_norm(x, L.ln_ca, self.eps)
            x += self._attend(self._heads(h @ L.ca.q.T), cross_k[i], cross_v[i], None, L.ca.o)
            x += self._ffn(L.ff, rms_norm(x, L.ln_ff, self.eps))
        cache.len = end
        h = rms_norm(x, self.dec_norm, self.eps)
        if self.scale_output:
            h *= F32(self.d_model ** -0.5)
        return h @ self.lm_head.T  # [T, V]

    def _new_cache(self, n: int) -> _Cache:
        return _Cache(self.n_dec, self.n_head, self.d_kv, max(n, 1))

    # -- Engine interface ----------------------------------------------------------------------
    def reset(self) -> None:
        self.prompt_ids, self.decoder_ids = [], []
        self.encoder_out = self.cross_k = self.cross_v = None
        self.cache = None

    def start(self, prompt_ids: Sequence[int], *, use_cache: bool = True) -> np.ndarray:
        """Encode the prompt and feed the decoder start token; float32 logits [vocab] of the first output token."""
        self.reset()
        enc = self.encode(prompt_ids)
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.encoder_out = enc
        self.use_cache = use_cache
        if use_cache:  # cross-attention keys/values once per prompt; the self-attention cache grows
            self.cross_k, self.cross_v = self._cross_kv(enc)
            self.cache = self._new_cache(self._n_ctx)
        return self._feed(self.decoder_start_id)

    def step(self, token_id: int) -> np.ndarray:
        """Append decoder token ``token_id``; float32 logits [vocab] of the token after it."""
        if self.encoder_out is None:
            raise WorkbenchError("step() before start(): there is no sequence to extend")
        return self._feed(int(token_id))

    def _feed(self, token_id: int) -> np.ndarray:
        arr = self._check_ids([token_id], "decoder")
        self.decoder_ids.append(token_id)
        if self.use_cache:
            return self._decode(arr, self.cache, self.cross_k, self.cross_v)[-1]
        # recompute the whole decoder (fresh cross keys/values, fresh self-attention) from the full sequence
        ids = np.asarray(self.decoder_ids, np.int64)
        cross_k, cross_v = self._cross_kv(self.encoder_out)
        return self._decode(ids, self._new_cache(ids.size), cross_k, cross_v)[-1]

    def iter_score(self, ids: Sequence[int], decoder_ids: Sequence[int] | None = None,
                   chunk: int = _CHUNK) -> Iterator[np.ndarray]:
        """Teacher-forced decoder logits [n, vocab] of consecutive chunks of ``decoder_ids`` (bounded memory)."""
        enc = self.encode(ids)
        if decoder_ids is None:
            decoder_ids = [self.decoder_start_id, *[int(i) for i in ids][:-1]]
        dec = self._check_ids(decoder_ids, "decoder")
        cross_k, cross_v = self._cross_kv(enc)
        cache = self._new_cache(dec.size)
        for a in range(0, dec.size, chunk):
            yield self._decode(dec[a:a + chunk], cache, cross_k, cross_v)

    def score(self, ids: Sequence[int], decoder_ids: Sequence[int] | None = None, *,
              chunk: int = _CHUNK) -> np.ndarray:
        """Teacher-forced logits float32 [len(decoder_ids), vocab] for the encoder prompt ``ids``.

        ``decoder_ids`` is the decoder input as fed (it normally starts with the decoder start token); row i
        predicts decoder token i + 1.  Without it the decoder reads ``ids`` shifted right behind the start
        token, so row i predicts ``ids[i]`` (the model reconstructing its input, used to compare levels).
        Does not disturb a generation in progress.
        """
        parts = list(self.iter_score(ids, decoder_ids, chunk))
        return np.concatenate(parts) if parts else np.zeros((0, self.vocab_size), F32)
