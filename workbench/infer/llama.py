"""The llama-family decoder (llama, mistral, SmolLM2, qwen2) in float32 numpy.

RMSNorm, rotary embeddings in Hugging Face's half-split layout (GGUF's interleaved Q/K rows are
un-permuted by the loader), grouped-query attention, optional q/k/v biases (qwen2), SwiGLU, tied
or separate output head.  Keys and values go to a preallocated float32 cache that doubles when full.
Reference: transformers' ``modeling_llama.py`` / ``modeling_qwen2.py``.

``numerics="llama-cpu"`` computes as llama.cpp's CPU backend does when it evaluates a prompt batch: every
matrix product rounds its activations to the weight type's dot-product partner first
(:mod:`workbench.infer.activations`), and the KV cache holds F16 keys and values (llama.cpp's default cache
type; its flash attention on CPU multiplies the F16 cache with float32 queries).  ``"exact"`` (the default)
multiplies float32 activations by the weights' values.  (For a single decoded token llama.cpp's attention
also rounds the query to F16 and accumulates in F16; that path only affects generation and is not emulated.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import UnsupportedError, WorkbenchError
from .activations import round_activations, vec_dot_type
from .weights import Weights

F32 = np.float32
NUMERICS = ("exact", "llama-cpu")


def rope_parameters(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling dict or None) from a config in the old (rope_theta/rope_scaling) or
    transformers 5 (rope_parameters) style."""
    params = cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else {}
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = cfg.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    return theta, scaling


def rope_inv_freq(cfg: dict[str, Any], head_dim: int, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] with the config's rope scaling (none, linear, llama3), or divided by
    GGUF's ``rope_freqs`` factors (llama.cpp's form of llama3 scaling)."""
    theta, scaling = rope_parameters(cfg)
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = None if scaling is None else (scaling.get("rope_type") or scaling.get("type") or "default")
    if kind in (None, "default"):
        pass
    elif kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, smoothed, scaled)
    else:
        raise UnsupportedError(f"rope scaling {kind!r} is not supported by the engine",
                               hint="Supported: none, linear, llama3.")
    if freq_factors is not None:
        if kind not in (None, "default"):
            raise WorkbenchError("the model has both rope_freqs factors and a rope_scaling entry")
        inv = inv / np.asarray(freq_factors, np.float64).reshape(-1)[: inv.shape[0]]
    return inv


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x * w / sqrt(mean(x²) + eps) over the last axis.  # [T, H]"""
    if x.shape[0] == 1:  # one token: a dot product and two multiplies (the decode path)
        v = x[0]
        out = x * w
        out *= F32(1.0 / math.sqrt(float(np.dot(v, v)) / v.shape[0] + eps))
        return out
    ms = np.einsum("ij,ij->i", x, x) * F32(1.0 / x.shape[-1])  # [T]
    ms += F32(eps)
    np.sqrt(ms, out=ms)
    out = x / ms[:, None]
    out *= w
    return out


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, in place in ``gate``."""
    den = np.exp(-gate)
    den += F32(1.0)
    gate /= den
    gate *= up
    return gate


def softmax_(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _f32(a: np.ndarray) -> np.ndarray:
    """float32, C-contiguous (no copy when it already is)."""
    return np.ascontiguousarray(a, dtype=F32)


def linear_weight(w: np.ndarray) -> np.ndarray:
    """An HF linear weight [out, in] as the [in, out] matrix of ``y = x @ W``, laid out for BLAS.

    Measured with OpenBLAS on one token (a matrix-vector product, memory bound): a contiguous [in, out]
    matrix streams faster when out >= in (gate/up, q/k/v, the output head: 26 vs 18 GB/s), the HF
    [out, in] rows when in > out (ffn down: 24 vs 13 GB/s).  Prompt batches do not care.
    """
    w = np.asarray(w, dtype=F32)
    if w.shape[1] > w.shape[0]:
        return np.ascontiguousarray(w).T  # a view: [in, out] over the contiguous [out, in] rows
    return np.ascontiguousarray(w.T)


def _matmul(x: np.ndarray, w: np.ndarray, groups: tuple) -> np.ndarray:
    """x @ w; with column groups (llama-cpu numerics) the activations are first rounded as llama.cpp's CPU
    backend rounds them for each group's weight type."""
    if not groups:
        return x @ w
    if len(groups) == 1:
        return round_activations(x, groups[0][2]) @ w
    out = np.empty((x.shape[0], w.shape[1]), F32)
    rounded: dict = {}
    for a, b, vt in groups:
        if vt not in rounded:
            rounded[vt] = round_activations(x, vt)
        out[:, a:b] = rounded[vt] @ w[:, a:b]
    return out


@dataclass
class _Layer:
    attn_norm: np.ndarray  # [H]
    w_qkv: np.ndarray  # [H, (n_head + 2 n_kv) * hd]; the q columns pre-scaled by 1/sqrt(hd)
    b_qkv: np.ndarray | None  # [(n_head + 2 n_kv) * hd]
    w_o: np.ndarray  # [n_head * hd, H]
    ffn_norm: np.ndarray  # [H]
    w_gate_up: np.ndarray  # [H, 2F]
    w_down: np.ndarray  # [F, H]
    # llama-cpu numerics: (first column, end column, activation type) of each matrix's column groups
    act_qkv: tuple = ()
    act_o: tuple = ()
    act_gate_up: tuple = ()
    act_down: tuple = ()


class LlamaEngine:
    """Decoder-only llama-family model implementing :class:`~workbench.infer.base.Engine`.

    ``consume=True`` lets the engine take the tensors out of ``weights.tensors`` as it repacks them (fused
    q/k/v and gate/up matrices), so building it does not hold the model twice; :func:`~workbench.infer.engines.load_engine` does so.
    """

    is_encoder_decoder = False

    def __init__(self, weights: Weights, *, n_ctx: int | None = None, consume: bool = False,
                 numerics: str = "exact"):
        if numerics not in NUMERICS:
            raise WorkbenchError(f"unknown numerics {numerics!r}", hint="Use one of: " + ", ".join(NUMERICS))
        self.numerics = numerics
        llama_cpu = numerics == "llama-cpu"
        cfg = self.config = weights.config
        self.arch = weights.arch
        self.hidden = int(cfg["hidden_size"])
        self.n_layer = int(cfg["num_hidden_layers"])
        self.n_head = int(cfg["num_attention_heads"])
        self.n_kv = int(cfg.get("num_key_value_heads") or self.n_head)
        self.head_dim = int(cfg.get("head_dim") or self.hidden // self.n_head)
        self.eps = float(cfg.get("rms_norm_eps", 1e-6))
        if self.n_head % self.n_kv:
            raise WorkbenchError(f"{self.n_head} attention heads cannot share {self.n_kv} key/value heads")
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedError(f"activation {act!r} is not supported by the llama engine")
        self.max_positions = int(cfg.get("max_position_embeddings") or 1 << 20)
        w = weights

        def take(name: str) -> np.ndarray:
            a = w[name]
            if consume:
                del w.tensors[name]
            return a

        def take_opt(name: str) -> np.ndarray | None:
            return take(name) if name in w else None

        def act(*parts: tuple[str, int]) -> tuple:
            """Column groups (start, end, activation type) of a matrix made of the named weights."""
            if not llama_cpu:
                return ()
            groups: list[list] = []
            col = 0
            for name, width in parts:
                vt = vec_dot_type(w.file_types.get(name) or w.types.get(name, "F32"))
                if groups and groups[-1][2] == vt:
                    groups[-1][1] = col + width
                else:
                    groups.append([col, col + width, vt])
                col += width
            return tuple(tuple(g) for g in groups)

        tied = "lm_head.weight" not in w and cfg.get("tie_word_embeddings", True)
        head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        embed = take("model.embed_tokens.weight")  # [V, H]
        # the output head [H, V]; tied models look their embeddings up in the same matrix
        self.w_out = linear_weight(embed if tied else take("lm_head.weight"))
        self.embed = None if tied else np.ascontiguousarray(embed, dtype=F32)
        self.vocab_size = int(self.w_out.shape[1])
        self.act_out = act((head_name, self.vocab_size))
        self.n_embd_rows = int(embed.shape[0])
        del embed
        self.norm = _f32(take("model.norm.weight"))
        scale = F32(1.0 / math.sqrt(self.head_dim))
        self.layers: list[_Layer] = []
        q_cols, kv_cols = self.n_head * self.head_dim, self.n_kv * self.head_dim
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            ff = int(w[p + "mlp.gate_proj.weight"].shape[0])
            acts = dict(
                act_qkv=act((p + "self_attn.q_proj.weight", q_cols), (p + "self_attn.k_proj.weight", kv_cols),
                            (p + "self_attn.v_proj.weight", kv_cols)),
                act_o=act((p + "self_attn.o_proj.weight", self.hidden)),
                act_gate_up=act((p + "mlp.gate_proj.weight", ff), (p + "mlp.up_proj.weight", ff)),
                act_down=act((p + "mlp.down_proj.weight", self.hidden)))
            wq = take(p + "self_attn.q_proj.weight") * scale  # softmax scale folded into q (rope is linear)
            qkv = np.concatenate([wq, take(p + "self_attn.k_proj.weight"), take(p + "self_attn.v_proj.weight")])
            del wq
            biases = [take_opt(p + f"self_attn.{n}_proj.bias") for n in "qkv"]
            b_qkv = None
            if any(b is not None for b in biases):
                sizes = (self.n_head * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim)
                b_qkv = np.concatenate([np.zeros(n, F32) if b is None else np.asarray(b, F32) for b, n in
                                        zip(biases, sizes)])
                b_qkv[:sizes[0]] *= scale
            gate_up = np.concatenate([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
            self.layers.append(_Layer(
                attn_norm=_f32(take(p + "input_layernorm.weight")),
                w_qkv=linear_weight(qkv), b_qkv=b_qkv,
                w_o=linear_weight(take(p + "self_attn.o_proj.weight")),
                ffn_norm=_f32(take(p + "post_attention_layernorm.weight")),
                w_gate_up=linear_weight(gate_up),
                w_down=linear_weight(take(p + "mlp.down_proj.weight")),
                **acts,
            ))
            del qkv, gate_up
        freqs = w.tensors.get("rope_freqs.weight")
        self.inv_freq = rope_inv_freq(cfg, self.head_dim, freqs)  # [hd/2] float64
        self.n_ff = self.layers[0].w_down.shape[0] if self.layers else 0
        self._cap = 0
        self._n_ctx = n_ctx
        self.k_cache: list[np.ndarray] = []
        self.v_cache: list[np.ndarray] = []
        self.pos = 0  # tokens in the cache
        self.ids: list[int] = []
        self.use_cache = True
        self._nbytes = sum(int(a.nbytes) for a in self._arrays())

    # -- bookkeeping ---------------------------------------------------------------------------
    def _arrays(self) -> Iterator[np.ndarray]:
        for a in [self.embed, self.w_out, self.norm] + [x for L in self.layers for x in vars(L).values()]:
            if isinstance(a, np.ndarray):
                yield a

    def nbytes(self) -> int:
        """Bytes of weights held (the KV cache is :meth:`cache_nbytes`)."""
        return self._nbytes

    def cache_nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.k_cache + self.v_cache)

    def _reserve(self, n: int) -> None:
        """Make room for ``n`` cached positions (capacity doubles; the contents are kept)."""
        if n > self.max_positions:
            raise WorkbenchError(f"the sequence of {n} tokens is longer than the model's context "
                                 f"({self.max_positions} positions)", hint="Use a shorter prompt or fewer new tokens.")
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, self._n_ctx or 256)
        cap = min(cap, self.max_positions)
        shape = (self.n_kv, cap, self.head_dim)
        for i in range(self.n_layer):
            k, v = np.zeros(shape, F32), np.zeros(shape, F32)  # [n_kv, cap, hd]
            if self._cap:
                k[:, :self.pos] = self.k_cache[i][:, :self.pos]
                v[:, :self.pos] = self.v_cache[i][:, :self.pos]
                self.k_cache[i], self.v_cache[i] = k, v
            else:
                self.k_cache.append(k)
                self.v_cache.append(v)
        angles = np.arange(cap, dtype=np.float64)[:, None] * self.inv_freq[None, :]  # [cap, hd/2]
        self.cos = np.cos(angles).astype(F32)
        self.sin = np.sin(angles).astype(F32)
        self._cap = cap

    def reset(self) -> None:
        self.pos = 0
        self.ids = []

    # -- the model -----------------------------------------------------------------------------
    def _embed(self, ids: np.ndarray) -> np.ndarray:
        """Token embeddings [T, H] (a fresh array)."""
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_embd_rows):
            raise WorkbenchError(f"token id {int(ids.max() if ids.max() >= 0 else ids.min())} is outside the "
                                 f"vocabulary of {self.n_embd_rows} tokens")
        if self.embed is not None:
            return self.embed[ids]
        return np.ascontiguousarray(self.w_out[:, ids].T)  # tied: columns of the output head

    def _rope(self, x: np.ndarray, start: int) -> None:
        """Rotate x [T, heads, hd] in place for positions start.. (HF's rotate_half layout)."""
        t, half = x.shape[0], self.head_dim // 2
        if t == 1:
            cos, sin = self.cos[start], self.sin[start]  # [hd/2]
        else:
            cos = self.cos[start:start + t, None, :]  # [T, 1, hd/2]
            sin = self.sin[start:start + t, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        r1 = x2 * sin
        r2 = x1 * sin
        x1 *= cos
        x1 -= r1
        x2 *= cos
        x2 += r2

    def _attention(self, L: _Layer, i: int, x: np.ndarray, start: int, mask: np.ndarray | None) -> np.ndarray:
        """Self-attention of x [T, H] at positions start..start+T over the cache; returns [T, H]."""
        t, hd, nh, nkv = x.shape[0], self.head_dim, self.n_head, self.n_kv
        g = nh // nkv
        qkv = _matmul(x, L.w_qkv, L.act_qkv)  # [T, (nh + 2 nkv) * hd]
        if L.b_qkv is not None:
            qkv += L.b_qkv
        heads = qkv.reshape(t, nh + 2 * nkv, hd)
        self._rope(heads[:, :nh + nkv], start)  # q and k together
        end = start + t
        kc, vc = self.k_cache[i], self.v_cache[i]  # [n_kv, cap, hd]
        k_new = heads[:, nh:nh + nkv].transpose(1, 0, 2)  # [n_kv, T, hd]
        v_new = heads[:, nh + nkv:].transpose(1, 0, 2)
        if self.numerics == "llama-cpu":  # llama.cpp's F16 cache
            k_new, v_new = k_new.astype(np.float16), v_new.astype(np.float16)
        kc[:, start:end] = k_new
        vc[:, start:end] = v_new
        if t == 1:
            qg = heads[0, :nh].reshape(nkv, g, hd)  # [n_kv, g, hd]
        else:  # heads sharing a KV head become rows of one matrix: [n_kv, g * T, hd]
            qg = heads[:, :nh].reshape(t, nkv, g, hd).transpose(1, 2, 0, 3).reshape(nkv, g * t, hd)
        scores = np.matmul(qg, kc[:, :end].transpose(0, 2, 1))  # [n_kv, g * T, end]
        if mask is not None:
            scores.reshape(nkv, g, t, end)[...] += mask  # [T, end]
        softmax_(scores)
        ctx = np.matmul(scores, vc[:, :end])  # [n_kv, g * T, hd]
        if t == 1:
            ctx = ctx.reshape(1, nh * hd)
        else:
            ctx = ctx.reshape(nkv, g, t, hd).transpose(2, 0, 1, 3).reshape(t, nh * hd)
        return _matmul(ctx, L.w_o, L.act_o)  # [T, H]

    @staticmethod
    def _mask(t: int, start: int) -> np.ndarray:
        """Causal mask [T, start + T]: 0 where position start+i may see j, -inf elsewhere."""
        j = np.arange(start + t)
        i = np.arange(start, start + t)[:, None]
        return np.where(j[None, :] <= i, F32(0.0), F32(-np.inf)).astype(F32)

    def _forward(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Run tokens at positions start.. through the layers (filling the cache); final-normed [T, H]."""
        ids_arr = np.asarray(ids, dtype=np.int64)
        t = len(ids_arr)
        self._reserve(start + t)
        x = self._embed(ids_arr)  # [T, H]
        mask = self._mask(t, start) if t > 1 else None
        nf = self.n_ff
        for i, L in enumerate(self.layers):
            x += self._attention(L, i, rms_norm(x, L.attn_norm, self.eps), start, mask)
            gu = _matmul(rms_norm(x, L.ffn_norm, self.eps), L.w_gate_up, L.act_gate_up)  # [T, 2F]
            x += _matmul(silu_mul(gu[:, :nf], gu[:, nf:]), L.w_down, L.act_down)  # [T, H]
        self.pos = start + t
        return rms_norm(x, self.norm, self.eps)

    def _logits(self, h: np.ndarray) -> np.ndarray:
        return _matmul(h, self.w_out, self.act_out)  # [T, V]

    # -- Engine interface ----------------------------------------------------------------------
    def start(self, prompt_ids: Sequence[int], *, use_cache: bool = True) -> np.ndarray:
        """Reset, run the prompt; float32 logits [vocab] of the next token (the output head runs on the last
        position only)."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise WorkbenchError("the prompt has no tokens")
        self.reset()
        self.use_cache = use_cache
        self.ids = ids
        h = self._forward(ids, 0)
        return self._logits(h[-1:])[0]

    def step(self, token_id: int) -> np.ndarray:
        """Append one token; float32 logits [vocab] of the token after it."""
        if not self.ids:
            raise WorkbenchError("step() before start(): there is no sequence to extend")
        self.ids.append(int(token_id))
        if self.use_cache:
            h = self._forward([int(token_id)], self.pos)
        else:
            h = self._forward(self.ids, 0)  # recompute everything from the full sequence
        return self._logits(h[-1:])[0]

    def iter_score(self, ids: Sequence[int], chunk: int = 256, first: int = 0) -> Iterator[np.ndarray]:
        """Logits [n, vocab] of consecutive chunks of positions of ``ids`` (bounded memory for long texts);
        positions before ``first`` run through the layers but get no logits (the output head is skipped)."""
        ids = [int(t) for t in ids]
        self.reset()
        self.use_cache = True
        self.ids = list(ids)
        for a in range(0, len(ids), chunk):
            h = self._forward(ids[a:a + chunk], a)
            if a + len(h) > first:
                yield self._logits(h[max(0, first - a):])

    def score(self, ids: Sequence[int], decoder_ids: Sequence[int] | None = None, *, chunk: int = 256,
              first: int = 0) -> np.ndarray:
        """Logits float32 [len - first, vocab] of the positions from ``first`` on (the prompt runs in chunks of
        ``chunk`` tokens)."""
        if decoder_ids is not None:
            raise WorkbenchError("decoder_ids are for encoder-decoder models; a llama model scores one sequence")
        parts = list(self.iter_score(ids, chunk, first))
        return np.concatenate(parts) if parts else np.zeros((0, self.vocab_size), F32)
