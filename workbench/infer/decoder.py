"""One decoder-only engine for every architecture of :mod:`workbench.infer.specs` (llama, mistral, qwen2,
qwen3, qwen3moe, gemma2, gemma3, phi3) in float32 numpy.

RMSNorm (w, or Gemma's 1 + w) before and optionally after attention and MLP, optional per-head q/k RMSNorm,
rotary embeddings in Hugging Face's half-split layout (GGUF's interleaved Q/K rows are un-permuted by the
loader; partial rotary; llama3 / linear / longrope scaling; a rope base per layer kind), grouped-query
attention with optional q/k/v biases, soft-caps and per-layer sliding windows, SwiGLU or GeGLU MLPs or routed
experts, tied or separate output head.  The spec (data) says which of these a model uses; the config.json
supplies the numbers.  Reference: transformers' ``modeling_<arch>.py``.

KV cache: full-attention layers keep every position in a preallocated float32 cache that doubles when full;
sliding-window layers keep at most ``window`` positions in a ring buffer (attention over a set of keys does
not depend on their order, so the ring is used as is; a prompt chunk attends over the window's older keys
gathered in front of its own).  A decoded token (:meth:`DecoderEngine.step`) takes a shorter path with fewer
numpy calls, and its attention output product runs on zero-padded columns so that BLAS threads it
(:func:`gemv_pad`): one token's cost is the weights' bytes streamed through BLAS plus per-call overhead.

``numerics="llama-cpu"`` computes as llama.cpp's CPU backend does when it evaluates a prompt batch: every
matrix product rounds its activations to the weight type's dot-product partner first
(:mod:`workbench.infer.activations`), the KV cache holds F16 keys and values (llama.cpp's default cache
type; its flash attention on CPU multiplies the F16 cache with float32 queries), and rms_norm and rope round
as ggml's do (:func:`rms_norm_ggml`, :func:`ggml_rope_tables`, :func:`rope_fma_`): bit for bit, so that
only the float sums of the products and of attention add in another order.  ``"exact"`` (the default)
multiplies float32 activations by the weights' values.  (For a single decoded token llama.cpp's attention
also rounds the query to F16 and accumulates in F16; that path only affects generation and is not emulated.)

``memory_budget`` (bytes): None, or at least the prepared (float32, fused) size of the model, prepares every
layer when the engine is built.  A smaller budget keeps only the source tensors (float32 arrays or the
loader's stored tensors with ``to_float32()``) and prepares layers on demand into a :class:`LayerCache`: the
first layers that fit stay prepared (pinned), the others are prepared for each pass and dropped, so that the
pinned bytes plus the one layer in use stay within the budget (unless a single layer is larger).  Embeddings
are decoded by the rows looked up; the output head is pinned when it fits the room left, else multiplied by
row blocks of at most one layer's size (at least 256 rows) decoded from its stored bytes, never held whole.
Preparing a layer decodes its matrices block by block straight into their fused layout.  The logits are bit
for bit those of the fully prepared engine.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import UnsupportedError, WorkbenchError
from .activations import round_activations, vec_dot_type
from .specs import SLIDING, SPECS, ArchSpec, layer_types, longrope_attention_factor, rope_config, spec_for

if TYPE_CHECKING:
    from .weights import Weights

F32 = np.float32
NUMERICS = ("exact", "llama-cpu")


# -- numeric helpers (also used by t5.py and the tests) --------------------------------------------------
def rope_parameters(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling dict or None) from a config in the old (rope_theta/rope_scaling) or
    transformers 5 (rope_parameters) style."""
    rc = rope_config(cfg)
    scaling = rc if rc.get("rope_type", "default") != "default" else None
    return rc["rope_theta"], scaling


def rope_inv_freq(cfg: dict[str, Any], head_dim: int, freq_factors: np.ndarray | None = None,
                  rc: dict[str, Any] | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] with the config's rope scaling (none, linear, llama3), or divided by
    GGUF's ``rope_freqs`` factors (llama.cpp's form of llama3 scaling).  ``rc``: the flat rope parameters of
    one layer kind (:func:`~workbench.infer.specs.rope_config`; default: the config's full-attention ones);
    longrope's factors are applied by the caller."""
    rc = rope_config(cfg) if rc is None else rc
    theta = rc["rope_theta"]
    scaling = rc if rc.get("rope_type", "default") != "default" else None
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = None if scaling is None else (scaling.get("rope_type") or scaling.get("type") or "default")
    if kind in (None, "default", "longrope", "su"):
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
                               hint="Supported: none, linear, llama3, longrope.")
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


def rms_norm_ggml(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """rms_norm as ggml's CPU backend rounds it: the float32 squares summed in double, ``mean = (float)
    (sum/n)``, ``scale = 1.0f/sqrtf(mean + eps)``, then ``x*scale*w`` in float32 (bit for bit: a double sum of
    float32 squares is exact, in any order, unless their magnitudes span more than 29 bits).  # [T, H]"""
    sq = np.multiply(x, x)
    mean = (np.add.reduce(sq, axis=-1, dtype=np.float64) / x.shape[-1]).astype(F32)
    mean += F32(eps)
    scale = np.divide(F32(1), np.sqrt(mean), dtype=F32)
    out = np.multiply(x, scale[..., None], out=sq)
    out *= w
    return out


def _head_norm_(x: np.ndarray, w: np.ndarray, eps: float) -> None:
    """RMSNorm of every head of x [T, heads, hd] in place (q/k norms)."""
    ms = np.einsum("thd,thd->th", x, x) * F32(1.0 / x.shape[-1])  # [T, heads]
    ms += F32(eps)
    np.sqrt(ms, out=ms)
    x /= ms[..., None]
    x *= w


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, in place in ``gate``."""
    den = np.exp(-gate)
    den += F32(1.0)
    gate /= den
    gate *= up
    return gate


_GELU_C = F32(math.sqrt(2.0 / math.pi))


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) * up (GeGLU), in place in ``gate``."""
    inner = gate * gate
    inner *= F32(0.044715)
    inner += F32(1.0)
    inner *= gate
    inner *= _GELU_C
    np.tanh(inner, out=inner)
    inner += F32(1.0)
    gate *= F32(0.5)
    gate *= inner
    gate *= up
    return gate


GLU = {"silu": silu_mul, "gelu_tanh": gelu_tanh_mul}


def softmax_(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def softcap_(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap), in place."""
    x *= F32(1.0 / cap)
    np.tanh(x, out=x)
    x *= F32(cap)
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


# OpenBLAS runs a matrix-vector product on one thread when rows * cols < 115200 * GEMM_MULTITHREAD_THRESHOLD
# (interface/gemv.c; the threshold is 4 in its builds, numpy's wheels included)
_GEMV_THREADED = 115200 * 4


@functools.lru_cache(maxsize=1)
def _blas_splits_gemv() -> bool:
    """Whether numpy's BLAS is OpenBLAS running on more than one thread (then a one-token product below
    :data:`_GEMV_THREADED` values stays on one core)."""
    from ..threads import blas_threads

    try:
        name = str(np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"])
    except Exception:  # noqa: BLE001 - an unknown build: assume nothing
        return False
    return "openblas" in name.lower() and (blas_threads() or 1) > 1 and (os.cpu_count() or 1) > 1


def gemv_pad(n_in: int, n_out: int) -> int:
    """Zero output columns that make a one-token product with an [n_in, n_out] matrix large enough for
    OpenBLAS to split it over its threads: 0 when it already is, BLAS runs on one thread, or the padding
    would add more than half the matrix.  SmolLM2's attention output (576 x 576) then takes ~70 us instead
    of ~105 us in a decode step on 2 cores, for 39 % more bytes; the threads split the outputs, so each one is
    the same sum (the logits are bit for bit those without padding)."""
    if n_in * n_out >= _GEMV_THREADED or not _blas_splits_gemv():
        return 0
    pad = -(-_GEMV_THREADED // n_in) - n_out
    pad += -(n_out + pad) % 16  # whole 64-byte lines per row
    return pad if 2 * pad <= n_out else 0


def _source(t: Any) -> np.ndarray:
    """float32 values of a source tensor: an ndarray, or a stored tensor with ``to_float32()``."""
    f = getattr(t, "to_float32", None)
    return f() if f is not None and not isinstance(t, np.ndarray) else np.asarray(t, dtype=F32)


def _source_nbytes(t: Any) -> int:
    return int(getattr(t, "nbytes", 0))


_MIN_BLOCK, _MAX_BLOCK = 1 << 18, 64 << 20  # elements / bytes of the blocks a large matrix is decoded in


def _row_blocks(t: Any, max_elements: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 [rows, cols]) blocks of a 2-D source tensor (a stored tensor's
    ``iter_row_blocks``, or slices of an array), each ~``max_elements`` values at most."""
    if not isinstance(t, np.ndarray) and hasattr(t, "iter_row_blocks"):
        yield from t.iter_row_blocks(max_elements)
        return
    a = np.asarray(t)
    a = a.reshape(-1, a.shape[-1])
    step = max(1, max_elements // max(a.shape[1], 1))
    for r in range(0, a.shape[0], step):
        yield r, np.asarray(a[r:r + step], dtype=F32)


@dataclass
class _Layer:
    attn_norm: np.ndarray  # [H]
    w_qkv: np.ndarray  # [H, (n_head + 2 n_kv) * hd]; the q columns pre-scaled by the attention scale (no q norm)
    b_qkv: np.ndarray | None  # [(n_head + 2 n_kv) * hd]
    w_o: np.ndarray  # [n_head * hd, H]
    ffn_norm: np.ndarray  # [H]
    w_gate_up: np.ndarray | None  # [H, 2F] (dense MLP)
    w_down: np.ndarray | None  # [F, H]
    q_norm: np.ndarray | None = None  # [hd], times the attention scale
    k_norm: np.ndarray | None = None  # [hd]
    post_attn_norm: np.ndarray | None = None  # [H] (sandwich norms)
    post_ffn_norm: np.ndarray | None = None  # [H]
    router: np.ndarray | None = None  # [H, n_experts] (MoE)
    e_gate_up: np.ndarray | None = None  # [n_experts, H, 2F]
    e_down: np.ndarray | None = None  # [n_experts, F, H]
    # llama-cpu numerics: (first column, end column, activation type) of each matrix's column groups
    act_qkv: tuple = ()
    act_o: tuple = ()
    act_gate_up: tuple = ()
    act_down: tuple = ()
    # [n_head * hd, H + pad]: w_o's memory with zero columns that let BLAS thread one token's product
    # (:func:`gemv_pad`); w_o is its first H columns
    w_o_1: np.ndarray | None = None

    @property
    def n_ff(self) -> int:
        return int(self.w_down.shape[0] if self.w_down is not None else self.e_down.shape[1])

    def arrays(self) -> Iterator[np.ndarray]:
        for f in fields(self):
            a = getattr(self, f.name)
            if f.name == "w_o" and self.w_o_1 is not None:  # a view of w_o_1
                continue
            if isinstance(a, np.ndarray):
                yield a

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays())


@functools.lru_cache(maxsize=1)
def _libm_cos_sin():
    """The C library's cosf and sinf (what ggml's rope calls), or None where ctypes cannot load them."""
    import ctypes
    import ctypes.util

    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fns = libm.cosf, libm.sinf
    except (OSError, AttributeError, TypeError):
        return None
    for f in fns:
        f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    return fns


def ggml_rope_tables(cap: int, rot: int, base: float, freq_scale: float = 1.0,
                     factors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [cap, rot / 2] float32 as ggml_rope_cache_init makes them: theta starts at the position and is
    multiplied by ``powf(base, -2.0f/rot)`` from one pair to the next in float32, divided by the pair's
    rope_freqs factor and scaled by ``freq_scale``; cosf/sinf are the C library's (correctly rounded cos/sin of
    the float32 angle where it cannot be called: they differ in ~1% of the entries, by one ulp)."""
    ts = F32(np.float64(base) ** np.float64(F32(-2.0) / F32(rot)))  # powf(freq_base, -2.0f/n_dims)
    theta = np.empty((cap, rot // 2), F32)
    theta[:, 0] = np.arange(cap, dtype=F32)
    for i in range(1, rot // 2):
        np.multiply(theta[:, i - 1], ts, out=theta[:, i])  # theta *= theta_scale
    if factors is not None:
        theta = theta / np.asarray(factors, F32)[None, : rot // 2]
    if freq_scale != 1.0:
        theta = theta * F32(freq_scale)
    fns = _libm_cos_sin()
    if fns is None:
        t64 = theta.astype(np.float64)
        return np.cos(t64).astype(F32), np.sin(t64).astype(F32)
    cosf, sinf = fns
    # the table is (positions x pairs) but only its distinct angles need a call (position 0 is all zeros)
    uniq, inv = np.unique(theta, return_inverse=True)
    cu = np.fromiter((cosf(v) for v in uniq.tolist()), F32, uniq.size)
    su = np.fromiter((sinf(v) for v in uniq.tolist()), F32, uniq.size)
    return cu[inv].reshape(theta.shape), su[inv].reshape(theta.shape)


def rope_fma_(x1: np.ndarray, x2: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """ggml's rotate_pairs in place, as compiled with FMA contraction: ``x1' = fma(x1, cos, -(x2*sin))``,
    ``x2' = fma(x1, sin, x2*cos)`` (each float32 product of x1 is exact in float64, so the float64 sum rounded
    once to float32 is the fused result)."""
    a = x2 * sin
    b = x2 * cos
    x64 = x1.astype(np.float64)
    np.subtract(x64 * cos, a, out=x1, casting="same_kind")
    np.add(x64 * sin, b, out=x2, casting="same_kind")


@dataclass
class _Rope:
    """Rotary tables of one layer kind."""

    inv_freq: np.ndarray  # float64 [rot / 2]
    rot: int  # rotated dimensions of each head (partial rotary: fewer than head_dim)
    scale: float = 1.0  # cos/sin multiplier (longrope's attention factor)
    long_inv_freq: np.ndarray | None = None  # longrope: used when the sequence goes beyond ``switch``
    switch: int = 0
    cos: np.ndarray | None = None  # [cap, rot / 2] float32
    sin: np.ndarray | None = None
    long_cos: np.ndarray | None = None
    long_sin: np.ndarray | None = None
    # whole-head tables [cap, 2, rot / 2]: (cos, cos) and (-sin, sin), so that rotating is three numpy calls
    cos2: np.ndarray | None = None
    sin2: np.ndarray | None = None
    long_cos2: np.ndarray | None = None
    long_sin2: np.ndarray | None = None
    # ggml's own tables and rotation (llama-cpu numerics): (freq_base, freq_scale, rope_freqs factors or None)
    ggml: tuple[float, float, np.ndarray | None] | None = None

    def build(self, cap: int) -> None:
        if self.ggml is not None:
            self.cos, self.sin = ggml_rope_tables(cap, self.rot, *self.ggml)
            return
        pos = np.arange(cap, dtype=np.float64)[:, None]
        self.cos, self.sin = (np.cos(pos * self.inv_freq) * self.scale).astype(F32), \
            (np.sin(pos * self.inv_freq) * self.scale).astype(F32)
        self.cos2, self.sin2 = np.stack([self.cos, self.cos], 1), np.stack([-self.sin, self.sin], 1)
        if self.long_inv_freq is not None:
            self.long_cos = (np.cos(pos * self.long_inv_freq) * self.scale).astype(F32)
            self.long_sin = (np.sin(pos * self.long_inv_freq) * self.scale).astype(F32)
            self.long_cos2 = np.stack([self.long_cos, self.long_cos], 1)
            self.long_sin2 = np.stack([-self.long_sin, self.long_sin], 1)


class LayerCache:
    """Prepared entries (layers, the output head) within ``budget`` bytes.

    Every forward visits the layers 0..n-1 and then the head, always in that order (a cycle), so a least-recently
    used cache smaller than the model would evict each entry just before it is needed again and never hit.  The
    policy instead keeps (pins) the entries prepared first while they fit in ``budget - reserve`` bytes and
    streams the others: a miss that does not fit is prepared, used and dropped.  Each pass then hits on the pinned
    entries, in proportion to the budget.  ``reserve`` (the largest streamed entry) keeps the pinned entries plus
    the one being used within the budget.  ``hits`` / ``misses`` count lookups; ``peak`` is the most prepared
    bytes held at once (pinned plus the streamed entry or block in use), ``nbytes`` the pinned bytes."""

    def __init__(self, budget: int, prepare: Callable[[Any], tuple[Any, int]], reserve: int = 0):
        self.budget = int(budget)
        self.reserve = int(reserve)
        self.prepare = prepare
        self.items: dict[Any, tuple[Any, int]] = {}
        self.nbytes = self.peak = self.misses = self.hits = 0

    def room(self) -> int:
        """Bytes still free for pinned entries."""
        return max(0, self.budget - self.reserve - self.nbytes)

    def note(self, n: int) -> None:
        """A transient of ``n`` prepared bytes is held beside the pinned entries (peak accounting)."""
        self.peak = max(self.peak, self.nbytes + int(n))

    def get(self, key: Any) -> Any:
        hit = self.items.get(key)
        if hit is not None:
            self.hits += 1
            return hit[0]
        self.misses += 1
        obj, n = self.prepare(key)
        self.note(n)
        if n <= self.room():
            self.items[key] = (obj, n)
            self.nbytes += n
        return obj


class DecoderEngine:
    """Decoder-only model implementing :class:`~workbench.infer.base.Engine`, computing as ``spec`` says
    (default: the spec of the weights' config / arch).

    ``consume=True`` lets the engine take the tensors out of ``weights.tensors`` as it repacks them (fused
    q/k/v and gate/up matrices), so building it does not hold the model twice;
    :func:`~workbench.infer.engines.load_engine` does so.  ``memory_budget``: see the module docstring.
    """

    is_encoder_decoder = False
    # None, or called as observer(layer, role, x, expert=None) with the input activations x [T, in] of every
    # matrix product before it runs (importance matrices): role "qkv", "o", "gate_up", "down", "router",
    # "experts_gate_up" / "experts_down" (with the expert, x its routed tokens), "out" (layer -1)
    observer: Callable[..., None] | None = None

    def __init__(self, weights: Weights, *, n_ctx: int | None = None, consume: bool = False,
                 numerics: str = "exact", memory_budget: int | None = None, spec: ArchSpec | None = None):
        if numerics not in NUMERICS:
            raise WorkbenchError(f"unknown numerics {numerics!r}", hint="Use one of: " + ", ".join(NUMERICS))
        spec = spec or spec_for(weights.config, weights.arch)
        if spec is None:
            raise UnsupportedError(f"no decoder spec for architecture {weights.arch!r}",
                                   hint="Supported: " + ", ".join(SPECS))
        self.spec = spec
        self.numerics = numerics
        self._llama_cpu = numerics == "llama-cpu"
        self._norm = rms_norm_ggml if self._llama_cpu else rms_norm  # ggml's rounding, or the reference's
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
        act = next((cfg[k] for k in spec.activation_keys if cfg.get(k)), spec.activation)
        from .specs import ACTIVATIONS

        if ACTIVATIONS.get(act) != spec.activation:
            raise UnsupportedError(f"activation {act!r} is not supported by the {spec.name} engine",
                                   hint=f"The {spec.name} spec computes {spec.activation}.")
        self._glu = GLU[spec.activation]
        if cfg.get("use_bidirectional_attention"):
            raise UnsupportedError("bidirectional attention (an embedding model) is not supported by the decoder")
        self.max_positions = int(cfg.get("max_position_embeddings") or 1 << 20)
        self.attn_scale = float(spec.attn_scale(cfg, self.head_dim))
        self.attn_softcap = float(cfg.get(spec.attn_softcap_key) or 0) if spec.attn_softcap_key else 0.0
        self.final_softcap = float(cfg.get(spec.final_softcap_key) or 0) if spec.final_softcap_key else 0.0
        self.embed_scale = F32(math.sqrt(self.hidden)) if spec.embed_scale else None
        kinds = layer_types(cfg, self.n_layer, spec.window_rule)
        window = int(cfg.get("sliding_window") or 0)
        self.windows: list[int | None] = [window if k == SLIDING else None for k in kinds]
        # MoE
        self.n_experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0) if spec.moe else 0
        self.top_k = int(cfg.get("num_experts_per_tok") or 0)
        self.norm_topk = bool(cfg.get("norm_topk_prob", False))
        sparse_step = int(cfg.get("decoder_sparse_step") or 1)
        mlp_only = set(cfg.get("mlp_only_layers") or [])
        self.moe_layers = {i for i in range(self.n_layer) if self.n_experts and i not in mlp_only
                           and (i + 1) % sparse_step == 0}
        self._w = weights
        w = weights
        # rope per layer kind
        freqs = w.tensors.get("rope_freqs.weight")
        freqs = None if freqs is None else _source(freqs)
        self._ropes: dict[str, _Rope] = {}
        for kind in dict.fromkeys(kinds):
            self._ropes[kind] = self._make_rope(kind, freqs)
        self.layer_rope = [self._ropes[k] for k in kinds]
        self.inv_freq = self._ropes[kinds[0]].inv_freq if kinds else None
        # output head / embeddings
        self.tied = "lm_head.weight" not in w  # no separate head: the embeddings are the head
        self._head_name = "model.embed_tokens.weight" if self.tied else "lm_head.weight"
        self.vocab_size = int(w.tensors[self._head_name].shape[0])
        self.n_embd_rows = int(w.tensors["model.embed_tokens.weight"].shape[0]) if "model.embed_tokens.weight" in w \
            else self.vocab_size
        self.act_out = self._act((self._head_name, self.vocab_size))
        # sizes of every prepared entry (float32), from the shapes alone
        self._sizes = {i: self._layer_size(i) for i in range(self.n_layer)}
        self._sizes["out"] = 4 * self.vocab_size * self.hidden
        if not self.tied:
            self._sizes["embed"] = 4 * self.n_embd_rows * self.hidden
        self.prepared_nbytes = sum(self._sizes.values()) + 4 * self.hidden
        self.norm = self._norm_weight(self._take("model.norm.weight", consume))
        self.memory_budget = memory_budget
        self.cache: LayerCache | None = None
        # zero columns of o's matrix for the decode step (:func:`gemv_pad`), when the whole model is prepared
        # and the budget (if any) holds them too
        q_cols = self.n_head * self.head_dim
        self._o_pad = gemv_pad(q_cols, self.hidden)
        pad_bytes = 4 * q_cols * self._o_pad * self.n_layer
        if memory_budget is not None and memory_budget < self.prepared_nbytes + pad_bytes:
            self._o_pad = 0
        if memory_budget is None or memory_budget >= self.prepared_nbytes:
            self.w_out, self.embed = self._prepare("out", consume), None
            if not self.tied:
                self.embed = self._prepare("embed", consume)
            self.layers: list[_Layer] = [self._prepare(i, consume) for i in range(self.n_layer)]
            self._nbytes = sum(L.nbytes for L in self.layers) + int(self.w_out.nbytes) + int(self.norm.nbytes) + \
                (int(self.embed.nbytes) if self.embed is not None else 0)
            self._w = None  # everything is prepared: the engine does not pin the weights
        else:
            self.layers = []
            self.w_out = self.embed = None
            # room for one streamed layer beside the pinned ones; the head and the embeddings are never
            # prepared whole unless they can be pinned: logits by row blocks of the stored head, embeddings by rows
            reserve = max((self._sizes[i] for i in range(self.n_layer)), default=0)
            self.cache = LayerCache(max(0, int(memory_budget)), lambda key: (self._prepare(key), self._sizes[key]),
                                    reserve)
            # values of one block of the head: whole multiples of 256 rows (BLAS then splits each block's
            # columns as it splits the whole head's: the same logits bit for bit)
            rows = max(_MIN_BLOCK, min(reserve, _MAX_BLOCK) // 4) // self.hidden // 256 * 256
            self._block = max(256, rows) * self.hidden
            self._nbytes = sum(_source_nbytes(t) for t in w.tensors.values())
        self._cap = 0
        self._n_ctx = n_ctx
        self.k_cache: list[np.ndarray] = []
        self.v_cache: list[np.ndarray] = []
        self.pos = 0  # tokens in the cache
        self.ids: list[int] = []
        self.use_cache = True

    # -- building ------------------------------------------------------------------------------
    def _make_rope(self, kind: str, freqs: np.ndarray | None) -> _Rope:
        rc = rope_config(self.config, kind)
        rot = int(self.head_dim * float(rc.get("partial_rotary_factor") or 1.0))
        rot -= rot % 2
        rtype = rc.get("rope_type", "default")
        if rtype in ("longrope", "su"):
            orig = int(rc["original_max_position_embeddings"] or self.max_positions)
            base = rope_inv_freq(self.config, rot, rc=rc)
            short = np.asarray(rc["short_factor"], np.float64)
            long = np.asarray(rc["long_factor"], np.float64)
            return _Rope(base / short, rot, longrope_attention_factor(rc), base / long, orig)
        rope = _Rope(rope_inv_freq(self.config, rot, freqs, rc=rc), rot)
        if self._llama_cpu and rtype in ("default", "linear"):
            scale = 1.0 / float(rc["factor"]) if rtype == "linear" else 1.0
            rope.ggml = (float(rc["rope_theta"]), scale, freqs)
        return rope

    def _act(self, *parts: tuple[str, int]) -> tuple:
        """Column groups (start, end, activation type) of a matrix made of the named weights (llama-cpu)."""
        if not self._llama_cpu:
            return ()
        w = self._w
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

    def _names(self, i: int) -> dict[str, list[str]]:
        """Source tensor names of layer i by role."""
        p = f"model.layers.{i}."
        w = self._w
        a = p + "self_attn."
        out: dict[str, list[str]] = {
            "qkv": [a + "qkv_proj.weight"] if self.spec.fused_qkv else [a + f"{n}_proj.weight" for n in "qkv"],
            "bias": [a + f"{n}_proj.bias" for n in "qkv" if a + f"{n}_proj.bias" in w],
            "o": [a + "o_proj.weight"],
            "norms": [n for n in (p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                                  p + "pre_feedforward_layernorm.weight", p + "post_feedforward_layernorm.weight",
                                  a + "q_norm.weight", a + "k_norm.weight") if n in w],
        }
        if i in self.moe_layers:
            m = p + "mlp."
            if m + "experts.gate_up_proj" in w:  # transformers 5's fused 3-D parameters
                out["experts"] = [m + "experts.gate_up_proj", m + "experts.down_proj"]
            elif m + "experts.gate_proj.weight" in w:  # stacked [E, rows, cols] (GGUF's ffn_*_exps)
                out["experts"] = [m + f"experts.{n}_proj.weight" for n in ("gate", "up", "down")]
                out["stacked"] = []
            else:
                out["experts"] = [m + f"experts.{e}.{n}_proj.weight" for e in range(self.n_experts)
                                  for n in ("gate", "up", "down")]
            out["router"] = [m + "gate.weight"]
        elif self.spec.fused_gate_up:
            out["gate_up"] = [p + "mlp.gate_up_proj.weight"]
            out["down"] = [p + "mlp.down_proj.weight"]
        else:
            out["gate_up"] = [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
            out["down"] = [p + "mlp.down_proj.weight"]
        return out

    def _layer_size(self, i: int) -> int:
        w = self._w
        total = 0
        for names in self._names(i).values():
            for n in names:
                if n not in w:
                    raise WorkbenchError(f"the model has no tensor {n!r}, which the {self.spec.name} engine needs",
                                         path=w.source)
                total += 4 * int(np.prod(w.tensors[n].shape))
        return total

    def _take(self, name: str, consume: bool) -> np.ndarray:
        a = _source(self._w[name])
        if consume:
            del self._w.tensors[name]
        return a

    def _norm_weight(self, w: np.ndarray, scale: float = 1.0) -> np.ndarray:
        out = _f32(w) + F32(self.spec.norm_offset) if self.spec.norm_offset else _f32(w)
        if scale != 1.0:
            out = out * F32(scale)
        return out

    def _linear(self, names: Sequence[str], consume: bool, scaled_rows: int = 0, scale: F32 = F32(1.0),
                pad: int = 0) -> np.ndarray:
        """HF linear weights [out_i, in] stacked along out, as :func:`linear_weight` lays them out, decoded block
        by block straight into place (no whole float32 copy of a source beside the result); the first
        ``scaled_rows`` output rows are multiplied by ``scale``; ``pad`` zero output columns follow the real ones."""
        srcs = [self._w.tensors[n] for n in names]
        rows = [int(np.prod(t.shape[:-1])) for t in srcs]
        n_in, n_out = int(srcs[0].shape[-1]), sum(rows)
        transposed = n_out >= n_in  # contiguous [in, out]; else [out, in] rows seen as [in, out]
        dst = np.empty((n_in, n_out + pad) if transposed else (n_out + pad, n_in), F32)
        if pad:
            (dst[:, n_out:] if transposed else dst[n_out:])[...] = 0
        off = 0
        for name, t, r in zip(names, srcs, rows):
            for a, blk in _row_blocks(t, 1 << 22):
                g, n = off + a, blk.shape[0]
                part = dst[:, g:g + n] if transposed else dst[g:g + n]
                part[...] = blk.T if transposed else blk
                if g < scaled_rows:
                    k = min(n, scaled_rows - g)
                    if transposed:
                        part[:, :k] *= scale
                    else:
                        part[:k] *= scale
            off += r
            if consume:
                del self._w.tensors[name]
        return dst if transposed else dst.T

    def _prepare(self, key: Any, consume: bool = False) -> Any:
        """The prepared (float32, fused, laid out for BLAS) form of layer ``key``, or "out" / "embed"."""
        if key == "out":  # tied: the embeddings are looked up in the head's columns
            return self._linear([self._head_name], consume)
        if key == "embed":
            return _f32(self._take("model.embed_tokens.weight", consume))
        return self._prepare_layer(int(key), consume)

    def _prepare_layer(self, i: int, consume: bool) -> _Layer:
        w, spec = self._w, self.spec
        names = self._names(i)
        take = lambda n: self._take(n, consume)  # noqa: E731
        p = f"model.layers.{i}."
        a = p + "self_attn."
        hd, nh, nkv, h = self.head_dim, self.n_head, self.n_kv, self.hidden
        q_cols, kv_cols = nh * hd, nkv * hd
        scale = F32(self.attn_scale)
        fold = not spec.qk_norm  # the attention scale goes into q's weights (rope is linear), or its norm
        if spec.fused_qkv:
            act_qkv = self._act((names["qkv"][0], q_cols + 2 * kv_cols))
        else:
            act_qkv = self._act((names["qkv"][0], q_cols), (names["qkv"][1], kv_cols), (names["qkv"][2], kv_cols))
        # the softmax scale folded into q's rows (rope is linear)
        w_qkv = self._linear(names["qkv"], consume, q_cols if fold else 0, scale)
        b_qkv = None
        if names["bias"]:
            biases = [take(a + f"{n}_proj.bias") if a + f"{n}_proj.bias" in w else None for n in "qkv"]
            b_qkv = np.concatenate([np.zeros(n, F32) if b is None else np.asarray(b, F32) for b, n in
                                    zip(biases, (q_cols, kv_cols, kv_cols))])
            if fold:
                b_qkv[:q_cols] *= scale
        # fully prepared: o's matrix padded for the decode step (BLAS threads it); a budget keeps its byte count
        pad = self._o_pad if self.cache is None else 0
        w_o = self._linear([a + "o_proj.weight"], consume, pad=pad)
        layer = _Layer(
            attn_norm=self._norm_weight(take(p + "input_layernorm.weight")),
            w_qkv=w_qkv, b_qkv=b_qkv, w_o=w_o[:, :h] if pad else w_o, w_o_1=w_o if pad else None,
            ffn_norm=self._norm_weight(take(p + ("pre_feedforward_layernorm.weight" if spec.sandwich_norms
                                                 else "post_attention_layernorm.weight"))),
            w_gate_up=None, w_down=None, act_qkv=act_qkv, act_o=self._act((a + "o_proj.weight", h)))
        if spec.sandwich_norms:
            layer.post_attn_norm = self._norm_weight(take(p + "post_attention_layernorm.weight"))
            layer.post_ffn_norm = self._norm_weight(take(p + "post_feedforward_layernorm.weight"))
        if spec.qk_norm:
            layer.q_norm = self._norm_weight(take(a + "q_norm.weight"), float(scale))
            layer.k_norm = self._norm_weight(take(a + "k_norm.weight"))
        if "experts" in names:
            ex = names["experts"]
            layer.router = linear_weight(take(names["router"][0]))
            if len(ex) == 2:  # fused [E, 2F, H] / [E, H, F]
                layer.e_gate_up = np.ascontiguousarray(take(ex[0]).transpose(0, 2, 1), dtype=F32)
                layer.e_down = np.ascontiguousarray(take(ex[1]).transpose(0, 2, 1), dtype=F32)
            elif "stacked" in names:  # [E, F, H] gate and up, [E, H, F] down
                layer.e_gate_up = np.concatenate([take(ex[0]), take(ex[1])], axis=1).transpose(0, 2, 1).copy()
                layer.e_down = np.ascontiguousarray(take(ex[2]).transpose(0, 2, 1), dtype=F32)
            else:
                ne = self.n_experts
                f = int(w.tensors[ex[0]].shape[0])
                gu = np.empty((ne, h, 2 * f), F32)
                dn = np.empty((ne, f, h), F32)
                for e in range(ne):
                    gu[e, :, :f] = take(ex[3 * e]).T
                    gu[e, :, f:] = take(ex[3 * e + 1]).T
                    dn[e] = take(ex[3 * e + 2]).T
                layer.e_gate_up, layer.e_down = gu, dn
            f = layer.e_down.shape[1]
            layer.act_gate_up = self._act((ex[0], 2 * f))
            layer.act_down = self._act((ex[-1], h))
        else:
            gnames = names["gate_up"]
            if len(gnames) == 1:
                f = int(w.tensors[gnames[0]].shape[0]) // 2
                layer.act_gate_up = self._act((gnames[0], 2 * f))
            else:
                f = int(w.tensors[gnames[0]].shape[0])
                layer.act_gate_up = self._act((gnames[0], f), (gnames[1], f))
            layer.act_down = self._act((names["down"][0], h))
            layer.w_gate_up = self._linear(gnames, consume)
            layer.w_down = self._linear(names["down"], consume)
        return layer

    # -- bookkeeping ---------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes of weights held (the KV cache is :meth:`cache_nbytes`; with a memory budget: the source
        tensors, plus at most the budget of prepared entries)."""
        return self._nbytes + (self.cache.nbytes if self.cache is not None else 0)

    def cache_nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.k_cache + self.v_cache)

    def _layer(self, i: int) -> _Layer:
        return self.layers[i] if self.cache is None else self.cache.get(i)

    def _out(self) -> np.ndarray:
        return self.w_out if self.cache is None else self.cache.get("out")

    def _reserve(self, n: int) -> None:
        """Make room for ``n`` positions (capacity doubles; the contents are kept).  Sliding-window layers
        keep a ring of min(window, capacity) positions."""
        if n > self.max_positions:
            raise WorkbenchError(f"the sequence of {n} tokens is longer than the model's context "
                                 f"({self.max_positions} positions)", hint="Use a shorter prompt or fewer new tokens.")
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, self._n_ctx or 256)
        cap = min(cap, self.max_positions)
        for i in range(self.n_layer):
            win = self.windows[i]
            size = cap if win is None else min(win, cap)
            if i < len(self.k_cache) and self.k_cache[i].shape[1] >= size:
                continue
            shape = (self.n_kv, size, self.head_dim)
            k, v = np.zeros(shape, F32), np.zeros(shape, F32)  # [n_kv, size, hd]
            if i < len(self.k_cache):
                # a ring smaller than its window has never wrapped: its slots are positions 0..pos-1
                k[:, :self.pos] = self.k_cache[i][:, :self.pos]
                v[:, :self.pos] = self.v_cache[i][:, :self.pos]
                self.k_cache[i], self.v_cache[i] = k, v
            else:
                self.k_cache.append(k)
                self.v_cache.append(v)
        for r in self._ropes.values():
            r.build(cap)
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
        src = self._w.tensors.get("model.embed_tokens.weight") if self.cache is not None else None
        if src is not None:  # bounded memory: decode only the rows looked up
            x = np.array(src.rows(ids) if hasattr(src, "rows") and not isinstance(src, np.ndarray)
                         else np.asarray(src)[ids], dtype=F32)
        elif not self.tied:
            x = self.embed[ids]
        else:
            x = np.ascontiguousarray(self._out()[:, ids].T)  # tied: columns of the output head
        if self.embed_scale is not None:
            x *= self.embed_scale
        return x

    def _rope(self, x: np.ndarray, start: int, r: _Rope, long: bool) -> None:
        """Rotate x [T, heads, hd] in place for positions start.. (HF's rotate_half layout)."""
        t, half = x.shape[0], r.rot // 2
        # whole heads: x * (cos, cos) + (x2, x1) * (-sin, sin), the same arithmetic
        if r.rot == x.shape[-1] and r.ggml is None:
            cos2, sin2 = (r.long_cos2, r.long_sin2) if long else (r.cos2, r.sin2)
            c, s = cos2[start:start + t, None], sin2[start:start + t, None]  # [T, 1, 2, rot/2]
            xv = x.reshape(t, x.shape[1], 2, half)
            rot = xv[:, :, ::-1] * s  # (x2 * -sin, x1 * sin)
            xv *= c
            xv += rot
            return
        if r.ggml is not None:  # ggml's tables and fused arithmetic (llama-cpu numerics)
            rope_fma_(x[..., :half], x[..., half:r.rot], r.cos[start:start + t, None], r.sin[start:start + t, None])
            return
        cos_t, sin_t = (r.long_cos, r.long_sin) if long else (r.cos, r.sin)
        if t == 1:
            cos, sin = cos_t[start], sin_t[start]  # [rot/2]
        else:
            cos = cos_t[start:start + t, None, :]  # [T, 1, rot/2]
            sin = sin_t[start:start + t, None, :]
        x1, x2 = x[..., :half], x[..., half:r.rot]
        r1 = x2 * sin
        r2 = x1 * sin
        x1 *= cos
        x1 -= r1
        x2 *= cos
        x2 += r2

    def _attention(self, L: _Layer, i: int, x: np.ndarray, start: int, masks: dict, long: bool) -> np.ndarray:
        """Self-attention of x [T, H] at positions start..start+T over the cache; returns [T, H]."""
        t, hd, nh, nkv = x.shape[0], self.head_dim, self.n_head, self.n_kv
        g = nh // nkv
        if self.observer is not None:
            self.observer(i, "qkv", x)
        qkv = _matmul(x, L.w_qkv, L.act_qkv)  # [T, (nh + 2 nkv) * hd]
        if L.b_qkv is not None:
            qkv += L.b_qkv
        heads = qkv.reshape(t, nh + 2 * nkv, hd)
        if L.q_norm is not None:
            _head_norm_(heads[:, :nh], L.q_norm, self.eps)
            _head_norm_(heads[:, nh:nh + nkv], L.k_norm, self.eps)
        self._rope(heads[:, :nh + nkv], start, self.layer_rope[i], long)  # q and k together
        if t == 1:
            return self._attend_one(L, i, heads[0], start)
        end = start + t
        kc, vc = self.k_cache[i], self.v_cache[i]  # [n_kv, size, hd]
        k_new = heads[:, nh:nh + nkv].transpose(1, 0, 2)  # [n_kv, T, hd]
        v_new = heads[:, nh + nkv:].transpose(1, 0, 2)
        if self._llama_cpu:  # llama.cpp's F16 cache
            k_new, v_new = k_new.astype(np.float16), v_new.astype(np.float16)
        win = self.windows[i]
        mask = masks.get(win)
        if win is None:
            kc[:, start:end] = k_new
            vc[:, start:end] = v_new
            keys, values = kc[:, :end], vc[:, :end]
        else:  # the window's older keys (gathered from the ring) in front of the chunk's own
            size = kc.shape[1]
            old = np.arange(start - min(start, win - 1), start) % size
            keys = np.concatenate([kc[:, old], k_new.astype(F32)], axis=1)
            values = np.concatenate([vc[:, old], v_new.astype(F32)], axis=1)
            keep = np.arange(max(start, end - size), end)
            kc[:, keep % size] = k_new[:, keep - start]
            vc[:, keep % size] = v_new[:, keep - start]
        n = keys.shape[1]
        # heads sharing a KV head become rows of one matrix: [n_kv, g * T, hd]
        qg = heads[:, :nh].reshape(t, nkv, g, hd).transpose(1, 2, 0, 3).reshape(nkv, g * t, hd)
        scores = np.matmul(qg, keys.transpose(0, 2, 1))  # [n_kv, g * T, n]
        if self.attn_softcap:
            softcap_(scores, self.attn_softcap)
        if mask is not None:
            scores.reshape(nkv, g, t, n)[...] += mask  # [T, n]
        softmax_(scores)
        ctx = np.matmul(scores, values)  # [n_kv, g * T, hd]
        ctx = ctx.reshape(nkv, g, t, hd).transpose(2, 0, 1, 3).reshape(t, nh * hd)
        if self.observer is not None:
            self.observer(i, "o", ctx)
        return _matmul(ctx, L.w_o, L.act_o)  # [T, H]

    def _attend_one(self, L: _Layer, i: int, hv: np.ndarray, start: int) -> np.ndarray:
        """The decode step's attention: hv [nh + 2 n_kv, hd] (q and k rotated) of the token at ``start``; returns
        [1, H].  The same products as a chunk of one token, in fewer numpy calls (the per-token cost is mostly
        call overhead): the new key and value go straight into their cache slot and no mask is needed (the full
        cache up to ``start`` or the window's ring holds exactly the visible keys)."""
        hd, nh, nkv = self.head_dim, self.n_head, self.n_kv
        kc, vc = self.k_cache[i], self.v_cache[i]  # [n_kv, size, hd]
        size = kc.shape[1]
        slot, n = (start, start + 1) if self.windows[i] is None else (start % size, min(start + 1, size))
        if self._llama_cpu:  # llama.cpp's F16 cache
            kc[:, slot] = hv[nh:nh + nkv].astype(np.float16)
            vc[:, slot] = hv[nh + nkv:].astype(np.float16)
        else:
            kc[:, slot] = hv[nh:nh + nkv]
            vc[:, slot] = hv[nh + nkv:]
        scores = np.matmul(hv[:nh].reshape(nkv, nh // nkv, hd), kc[:, :n].transpose(0, 2, 1))  # [n_kv, g, n]
        if self.attn_softcap:
            softcap_(scores, self.attn_softcap)
        softmax_(scores)
        ctx = np.matmul(scores, vc[:, :n]).reshape(1, nh * hd)
        if self.observer is not None:
            self.observer(i, "o", ctx)
        if L.w_o_1 is not None:  # the padded matrix: BLAS splits the product over its threads
            return _matmul(ctx, L.w_o_1, L.act_o)[:, :self.hidden]
        return _matmul(ctx, L.w_o, L.act_o)  # [1, H]

    @staticmethod
    def _mask(t: int, start: int, window: int | None = None) -> np.ndarray:
        """Mask [T, keys]: 0 where position start+i may see a key, -inf elsewhere.  Full attention: keys are
        positions 0..start+T-1; a window: the min(start, window - 1) positions before start, then the chunk."""
        i = np.arange(start, start + t)[:, None]
        if window is None:
            j = np.arange(start + t)[None, :]
            ok = j <= i
        else:
            j = np.arange(start - min(start, window - 1), start + t)[None, :]
            ok = (j <= i) & (i - j < window)
        return np.where(ok, F32(0.0), F32(-np.inf)).astype(F32)

    def _moe(self, L: _Layer, h: np.ndarray, i: int = -1) -> np.ndarray:
        """Routed experts of h [T, H]: softmax over the router logits, top-k, renormalized when the config says;
        each expert runs once on the tokens routed to it."""
        t = h.shape[0]
        k = self.top_k
        if self.observer is not None:
            self.observer(i, "router", h)
        probs = softmax_(h @ L.router)  # [T, E]
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]  # [T, k]
        wts = np.take_along_axis(probs, top, axis=1)
        if self.norm_topk:
            wts /= wts.sum(axis=1, keepdims=True)
        experts = top.ravel()
        tokens = np.repeat(np.arange(t), k)
        order = np.argsort(experts, kind="stable")
        counts = np.bincount(experts, minlength=self.n_experts)
        out = np.zeros_like(h)
        f = L.e_down.shape[1]
        a = 0
        for e in np.flatnonzero(counts):
            sel = order[a:a + counts[e]]
            a += counts[e]
            tok = tokens[sel]  # distinct: a token picks an expert once
            if self.observer is not None:
                self.observer(i, "experts_gate_up", h[tok], int(e))
            gu = _matmul(h[tok], L.e_gate_up[e], L.act_gate_up)  # [n, 2F]
            g = self._glu(gu[:, :f], gu[:, f:])
            if self.observer is not None:
                self.observer(i, "experts_down", g, int(e))
            y = _matmul(g, L.e_down[e], L.act_down)  # [n, H]
            y *= wts.ravel()[sel][:, None]
            out[tok] += y
        return out

    def _forward(self, ids: Sequence[int], start: int) -> np.ndarray:
        """Run tokens at positions start.. through the layers (filling the cache); final-normed [T, H]."""
        ids_arr = np.asarray(ids, dtype=np.int64)
        t = len(ids_arr)
        self._reserve(start + t)
        x = self._embed(ids_arr)  # [T, H]
        masks: dict = {}
        if t > 1:
            for win in set(self.windows):
                masks[win] = self._mask(t, start, win)
        long = any(r.long_inv_freq is not None and start + t > r.switch for r in self._ropes.values())
        for i in range(self.n_layer):
            self.layer_step(i, x, start, masks, long)
        self.pos = start + t
        return self._norm(x, self.norm, self.eps)

    def layer_step(self, i: int, x: np.ndarray, start: int, masks: dict, long: bool) -> np.ndarray:
        """Layer ``i`` on the hidden states ``x`` [T, H] of positions start.. (in place; fills the layer's KV
        cache); returns ``x``.  ``masks``: window -> mask of :meth:`_mask` for a prompt chunk; ``long``: phi3
        longrope's long factors.  The on-demand layer is released when this returns."""
        eps = self.eps
        L = self._layer(i)
        a = self._attention(L, i, self._norm(x, L.attn_norm, eps), start, masks, long)
        if L.post_attn_norm is not None:
            a = self._norm(a, L.post_attn_norm, eps)
        x += a
        h = self._norm(x, L.ffn_norm, eps)
        if L.router is not None:
            m = self._moe(L, h, i)
        else:
            nf = L.w_down.shape[0]
            if self.observer is not None:
                self.observer(i, "gate_up", h)
            gu = _matmul(h, L.w_gate_up, L.act_gate_up)  # [T, 2F]
            g = self._glu(gu[:, :nf], gu[:, nf:])
            if self.observer is not None:
                self.observer(i, "down", g)
            m = _matmul(g, L.w_down, L.act_down)  # [T, H]
        if L.post_ffn_norm is not None:
            m = self._norm(m, L.post_ffn_norm, eps)
        x += m
        return x

    def _logits(self, h: np.ndarray) -> np.ndarray:
        if self.observer is not None:
            self.observer(-1, "out", h)
        c = self.cache
        if c is None or "out" in c.items or self._sizes["out"] <= c.room():
            out = _matmul(h, self._out(), self.act_out)  # [T, V]
        else:  # a head larger than the budget's room: by row blocks of the stored head, never held whole
            out = self._logits_by_blocks(h)
        if self.final_softcap:
            softcap_(out, self.final_softcap)
        return out

    def _logits_by_blocks(self, h: np.ndarray) -> np.ndarray:
        """h [T, H] times the stored head, decoded ``self._block`` values at a time."""
        groups = self.act_out  # one tensor: at most one activation type
        x = round_activations(h, groups[0][2]) if groups else h
        out = np.empty((h.shape[0], self.vocab_size), F32)
        buf = None
        for a, blk in _row_blocks(self._w.tensors[self._head_name], self._block):
            n = blk.shape[0]
            self.cache.note(blk.nbytes)
            if buf is None or buf.shape[1] < n:
                buf = np.empty((self.hidden, n), F32)
            wt = buf[:, :n]
            wt[...] = blk.T  # the prepared head's [in, out] layout: the same products as the whole head
            np.matmul(x, wt, out=out[:, a:a + n])
            del blk
        return out

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
            raise WorkbenchError("decoder_ids are for encoder-decoder models; a decoder scores one sequence")
        parts = list(self.iter_score(ids, chunk, first))
        return np.concatenate(parts) if parts else np.zeros((0, self.vocab_size), F32)
