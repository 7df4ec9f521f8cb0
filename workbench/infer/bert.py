"""The BERT encoder (e.g. all-MiniLM-L6-v2) in float32 numpy, with sentence-transformers' pooling.

Embeddings (word + position + token type 0, LayerNorm), post-norm encoder layers (self-attention with
a padding mask, GELU feed-forward), then the mean of the token states over the attention mask and an
L2 normalization.  Reference: transformers' ``modeling_bert.py`` and sentence-transformers' ``Pooling``
+ ``Normalize`` modules as all-MiniLM-L6-v2 configures them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UnsupportedError, WorkbenchError
from .weights import Weights

F32 = np.float32


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to ~1.5e-7 (Abramowitz & Stegun 7.1.26), float32."""
    a = np.abs(x)
    t = F32(1.0) / (F32(1.0) + F32(0.3275911) * a)
    poly = t * (F32(0.254829592) + t * (F32(-0.284496736) + t * (F32(1.421413741)
                                                                  + t * (F32(-1.453152027) + t * F32(1.061405429)))))
    y = F32(1.0) - poly * np.exp(-a * a)
    return np.copysign(y, x).astype(F32, copy=False)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT's ``hidden_act="gelu"``."""
    return F32(0.5) * x * (F32(1.0) + erf(x * F32(1.0 / math.sqrt(2.0))))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """The tanh approximation (``gelu_new`` / ``gelu_pytorch_tanh``)."""
    c = F32(math.sqrt(2.0 / math.pi))
    return F32(0.5) * x * (F32(1.0) + np.tanh(c * (x + F32(0.044715) * x * x * x)))


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
               "relu": lambda x: np.maximum(x, F32(0.0))}


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis.  # [..., H]"""
    mean = x.mean(axis=-1, keepdims=True)
    d = x - mean
    var = (d * d).mean(axis=-1, keepdims=True)
    d /= np.sqrt(var + F32(eps))
    d *= w
    d += b
    return d


@dataclass
class _Layer:
    w_qkv: np.ndarray  # [H, 3H]
    b_qkv: np.ndarray  # [3H]
    w_o: np.ndarray  # [H, H]
    b_o: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    w_up: np.ndarray  # [H, F]
    b_up: np.ndarray
    w_down: np.ndarray  # [F, H]
    b_down: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class BertEncoder:
    """Sentence embeddings from a BERT model, implementing :class:`~workbench.infer.base.Encoder`."""

    def __init__(self, weights: Weights, *, batch_size: int = 32, consume: bool = False):
        cfg = self.config = weights.config
        self.hidden = int(cfg["hidden_size"])
        self.n_head = int(cfg["num_attention_heads"])
        self.n_layer = int(cfg["num_hidden_layers"])
        self.head_dim = self.hidden // self.n_head
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.batch_size = batch_size
        act = cfg.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise UnsupportedError(f"activation {act!r} is not supported by the bert engine")
        self.act = ACTIVATIONS[act]
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise UnsupportedError(f"position embeddings {cfg['position_embedding_type']!r} are not supported")
        w = weights

        def take(name: str) -> np.ndarray:
            a = np.asarray(w[name], dtype=F32)
            if consume:
                del w.tensors[name]
            return a

        def lin(name: str) -> np.ndarray:  # HF [out, in] -> [in, out] for x @ W
            return np.ascontiguousarray(take(name).T)

        self.word = np.ascontiguousarray(take("embeddings.word_embeddings.weight"))  # [V, H]
        self.position = take("embeddings.position_embeddings.weight")  # [P, H]
        self.token_type = take("embeddings.token_type_embeddings.weight")  # [types, H]
        self.emb_ln = (take("embeddings.LayerNorm.weight"), take("embeddings.LayerNorm.bias"))
        self.layers: list[_Layer] = []
        for i in range(self.n_layer):
            p = f"encoder.layer.{i}."
            a = p + "attention.self."
            w_qkv = np.concatenate([lin(a + "query.weight"), lin(a + "key.weight"), lin(a + "value.weight")], axis=1)
            b_qkv = np.concatenate([take(a + "query.bias"), take(a + "key.bias"), take(a + "value.bias")])
            self.layers.append(_Layer(
                w_qkv=w_qkv, b_qkv=b_qkv,
                w_o=lin(p + "attention.output.dense.weight"), b_o=take(p + "attention.output.dense.bias"),
                ln1_w=take(p + "attention.output.LayerNorm.weight"), ln1_b=take(p + "attention.output.LayerNorm.bias"),
                w_up=lin(p + "intermediate.dense.weight"), b_up=take(p + "intermediate.dense.bias"),
                w_down=lin(p + "output.dense.weight"), b_down=take(p + "output.dense.bias"),
                ln2_w=take(p + "output.LayerNorm.weight"), ln2_b=take(p + "output.LayerNorm.bias"),
            ))
        self.vocab_size = int(self.word.shape[0])
        self.max_positions = int(self.position.shape[0])
        arrays = [self.word, self.position, self.token_type, *self.emb_ln,
                  *(x for L in self.layers for x in vars(L).values())]
        self._nbytes = sum(int(x.nbytes) for x in arrays)

    def nbytes(self) -> int:
        return self._nbytes

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states [B, T, H] of padded ids [B, T] with attention mask [B, T] (1 = token)."""
        b, t = ids.shape
        h, nh, hd = self.hidden, self.n_head, self.head_dim
        x = self.word[ids] + self.position[:t][None] + self.token_type[0]  # [B, T, H]
        x = layer_norm(x, *self.emb_ln, self.eps)
        bias = np.where(mask[:, None, None, :] > 0, F32(0.0), F32(np.finfo(F32).min)).astype(F32)  # [B, 1, 1, T]
        scale = F32(1.0 / math.sqrt(hd))
        for L in self.layers:
            qkv = (x.reshape(b * t, h) @ L.w_qkv + L.b_qkv).reshape(b, t, 3, nh, hd)
            q = qkv[:, :, 0].transpose(0, 2, 1, 3)  # [B, nh, T, hd]
            k = qkv[:, :, 1].transpose(0, 2, 3, 1)  # [B, nh, hd, T]
            v = qkv[:, :, 2].transpose(0, 2, 1, 3)
            scores = np.matmul(q, k) * scale + bias  # [B, nh, T, T]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = np.matmul(scores, v).transpose(0, 2, 1, 3).reshape(b * t, h)  # [B*T, H]
            attn = (ctx @ L.w_o + L.b_o).reshape(b, t, h)
            x = layer_norm(attn + x, L.ln1_w, L.ln1_b, self.eps)
            ff = self.act(x.reshape(b * t, h) @ L.w_up + L.b_up) @ L.w_down + L.b_down
            x = layer_norm(ff.reshape(b, t, h) + x, L.ln2_w, L.ln2_b, self.eps)
        return x

    def embed(self, batch_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [batch, hidden]: mean of the token states over each sequence's tokens, L2-normalized.

        Sequences are padded to the longest of each chunk of ``batch_size``; longer ones than the model's
        positions are cut to fit (as sentence-transformers truncates)."""
        seqs = [[int(t) for t in s][: self.max_positions] for s in batch_ids]
        out = np.zeros((len(seqs), self.hidden), F32)
        for a in range(0, len(seqs), self.batch_size):
            part = seqs[a:a + self.batch_size]
            t = max((len(s) for s in part), default=0)
            if t == 0:
                continue
            ids = np.zeros((len(part), t), np.int64)
            mask = np.zeros((len(part), t), F32)
            for r, s in enumerate(part):
                ids[r, :len(s)] = s
                mask[r, :len(s)] = 1.0
            if ids.max() >= self.vocab_size or ids.min() < 0:
                raise WorkbenchError(f"token id {int(ids.max())} is outside the vocabulary of {self.vocab_size}")
            x = self.hidden_states(ids, mask)
            n = np.maximum(mask.sum(axis=1, keepdims=True), F32(1e-9))
            pooled = np.einsum("bth,bt->bh", x, mask) / n  # [B, H]
            norm = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), F32(1e-12))
            out[a:a + len(part)] = pooled / norm
        return out
