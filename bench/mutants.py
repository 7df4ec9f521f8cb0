#!/usr/bin/env python3
"""Mutation check: one-line deliberate bugs, each applied alone to a copy of the repository, with the
nearest tests run against it.  Every mutant must be *killed* (a test fails); a survivor names a line
that no test guards.

    python bench/mutants.py               # every mutant (a few minutes on 2 cores)
    python bench/mutants.py plan- ui-     # only the mutants whose id starts with one of these
    python bench/mutants.py --list        # ids, files and test selections
    python bench/mutants.py --baseline    # first run every selection unmutated (must pass, nothing skipped)

The working tree is never touched: the tracked (and new, not ignored) files are copied to a temporary
folder with ``git ls-files``, each mutant edits the copy (an exact source-string replacement that must
apply exactly once), pytest runs there with ``PYTHONPATH`` pointing at the copy, and the file is restored.
A mutant whose string no longer matches the source is reported as ``stale`` (update its strings) and
counts as a failure of the check, as does a survivor, or a selection that errors even unmutated
(``BROKEN``: the copy was taken while someone's edit was half done, or a test is broken).  Tests that
need a real model or the ggml oracle use the shared cache (``tests/fetch_models.py``): run that first;
offline they skip and their mutants survive (``tests/core/test_kernel_digests.py`` needs no oracle).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # file to mutate, relative to the repository
    old: str  # exact source text (may span lines for context; the bug itself is one line)
    new: str
    tests: tuple[str, ...]  # pytest arguments: the nearest tests
    why: str = ""


def M(id, path, old, new, *tests, why=""):  # noqa: N802 - a table row
    return Mutant(id, path, old, new, tuple(tests), why)


K = "tests/core/test_kernels.py"
P = "tests/core/test_plan.py"
MUTANTS: list[Mutant] = [
    # -- kernels ------------------------------------------------------------------------------------
    M("kernels-q4_0-rounding", "workbench/kernels/legacy.py",
      "L = _quant_offset(xq, safe_recip(d), nmax + 0.5, 2 * nmax - 1)",
      "L = _quant_offset(xq, safe_recip(d), nmax + 0.4999, 2 * nmax - 1)",
      K, "-k", "matches_ggml and Q4_0", why="round half up becomes just below half (the issue's Q4_0 bug)"),
    M("kernels-scratch-unaligned", "workbench/kernels/common.py",
      "    start = -buf.ctypes.data % ALIGN", "    start = 16",
      K, "-k", "cache_line", why="scratch arrays off the cache line (a silent 30-40% loss in the searches)"),
    M("kernels-q4_0-rounding-offline", "workbench/kernels/legacy.py",
      "L = _quant_offset(xq, safe_recip(d), nmax + 0.5, 2 * nmax - 1)",
      "L = _quant_offset(xq, safe_recip(d), nmax + 0.4999, 2 * nmax - 1)",
      "tests/core/test_kernel_digests.py", "-k", "Q4_0", why="the same bug caught without the oracle"),
    M("kernels-q8_0-scale", "workbench/kernels/legacy.py",
      "d = amax.view(np.float32) / F32(127)",
      "d = amax.view(np.float32) / F32(127.5)",
      K, "-k", "matches_ggml and Q8_0"),
    M("kernels-q4_1-offset", "workbench/kernels/legacy.py",
      "L = _quant_offset(xq, safe_recip(d), 0.5, nmax, minus=mn)",
      "L = _quant_offset(xq, safe_recip(d), 0.4999, nmax, minus=mn)",
      K, "-k", "matches_ggml and Q4_1"),
    M("kernels-q6_k-dequant", "workbench/kernels/kquants.py",
      "scale_codes(b.view(np.int8), d * sc, out)  # d * sc[is] * q",
      "scale_codes(b.view(np.int8), d * sc * np.float32(1.0001), out)  # d * sc[is] * q",
      K, "-k", "dequantize_bit_identical and Q6_K"),
    M("kernels-q6_k-dequant-offline", "workbench/kernels/kquants.py",
      "scale_codes(b.view(np.int8), d * sc, out)  # d * sc[is] * q",
      "scale_codes(b.view(np.int8), d * sc * np.float32(1.0001), out)  # d * sc[is] * q",
      "tests/core/test_kernel_digests.py", "-k", "dequantize and Q6_K"),
    M("kernels-iq4_nl-table", "workbench/kernels/iquants.py",
      "KVALUES = np.array([-127, -104, -83,", "KVALUES = np.array([-127, -103, -83,",
      K, "-k", "matches_ggml and IQ4_NL"),
    # -- formats ------------------------------------------------------------------------------------
    M("formats-gguf-int16-signedness", "workbench/formats/gguf.py",
      'GGUFValueType.INT16: np.dtype("<i2"),', 'GGUFValueType.INT16: np.dtype("<u2"),',
      "tests/core/test_gguf_int_values.py"),
    M("formats-gguf-alignment", "workbench/formats/gguf.py",
      "    data_offset = -(-cur.pos // alignment) * alignment",
      "    data_offset = -(-cur.pos // 32) * 32",
      "tests/core/test_convert_export.py", "-k", "custom_alignment"),
    M("formats-safetensors-data-start", "workbench/formats/safetensors.py",
      "    data_start = 8 + hlen", "    data_start = 8 + hlen + 4",
      "tests/core/test_open_formats.py", "-x", "-k", "safetensors"),
    M("formats-torch-unpickler-global", "workbench/formats/torchbin.py",
      "        if obj is None:\n            raise self._where.unsafe(",
      "        if obj is None and module == '':\n            raise self._where.unsafe(",
      "tests/core/test_torchbin.py", "-k", "forbidden_global or malicious"),
    M("formats-peft-rslora-scale", "workbench/formats/peft.py",
      'scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r',
      "scale = alpha / r", "tests/core/test_open_formats.py", "tests/core/test_lora.py",
      "-k", "peft or adapter or lora"),
    # -- plan ---------------------------------------------------------------------------------------
    M("plan-70b-attn_v", "workbench/plan.py",
      '        if facts.is_70b and new in ("Q3_K", "Q4_K"):', '        if False and new in ("Q3_K", "Q4_K"):',
      P, "-k", "llama_quantize", why="the 70B attn_v rule (issue survivor)"),
    M("plan-70b-gqa-condition", "workbench/plan.py",
      "            return self.n_head != self.n_head_kv and self.n_expert != 8",
      "            return self.n_expert != 8", P, "-k", "llama_quantize"),
    M("plan-70b-other-archs", "workbench/plan.py",
      '_70B_LAYERS = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}',
      '_70B_LAYERS = {"llama": 80}', P, "-k", "llama_quantize"),
    M("plan-imatrix-ffn_down-iq4", "workbench/plan.py",
      '        elif i < n // 8 and p in ("IQ4_NL", "IQ4_XS") and not has_imatrix:',
      '        elif i < n // 8 and p in ("IQ4_NL", "IQ4_XS"):', P, "-k", "llama_quantize",
      why="the imatrix ffn_down rule (issue survivor)"),
    M("plan-imatrix-ffn_down-q4_0", "workbench/plan.py",
      '        elif p in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:',
      '        elif p in ("Q4_0", "Q5_0") and has_imatrix and i < n // 16:', P, "-k", "llama_quantize"),
    M("plan-moe-attn_k", "workbench/plan.py",
      '        return "Q8_0" if facts.n_expert == 8 else new', "        return new", P, "-k", "llama_quantize",
      why="the MoE attn_k rule (issue survivor)"),
    M("plan-moe-layer-from-name", "workbench/plan.py",
      "            i = int(m.group(1))", "            i = i", P, "-k", "llama_quantize"),
    M("plan-use-more-bits", "workbench/plan.py",
      "    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2",
      "    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 1", P, "-k", "llama_quantize"),
    M("plan-fallback-q4_k", "workbench/plan.py", '"Q4_K": "Q5_0"', '"Q4_K": "Q4_0"', P, "-k", "llama_quantize"),
    M("plan-tied-embd", "workbench/plan.py", '        tied = "output.weight" not in gnames.values()',
      "        tied = False", P, "-k", "llama_quantize", why="gemma's tied token_embd takes the output rule"),
    M("plan-hf-expert-stack", "workbench/plan.py", "    m = _HF_EXPERT.match(name) if gname == name else None",
      "    m = None", P, "-k", "hf_moe"),
    M("plan-hf-router-f32", "workbench/plan.py",
      '    return gname in ("position_embd.weight", "token_types.weight") or any(s in gname for s in _CONVERTER_F32)',
      "    return False", P, "-k", "hf_moe"),
    M("requant-moe-imatrix-per-expert", "workbench/convert/requantize.py",
      "    rows_per_expert = _rows_cols(info)[0] // (w.shape[0] if w is not None else 1)",
      "    rows_per_expert = _rows_cols(info)[0]", "tests/core/test_requantize.py", "-k", "byte_identical and qwen3moe",
      why="every expert's rows quantized with the first expert's importance"),
    # -- convert ------------------------------------------------------------------------------------
    M("convert-llama3-rope-smoothing", "workbench/convert/hf_to_gguf.py",
      "            factors.append(1 / ((1 - smooth) / factor + smooth))",
      "            factors.append(1 / ((1 - smooth) / factor + smooth * 0.99))",
      "tests/core/test_convert_hf.py", "-k", "llama3", why="issue survivor: no frequency in the band"),
    M("convert-bf16-rounding", "workbench/convert/export.py",
      "rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))",
      "rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(0))) >> np.uint32(16))",
      "tests/core/test_convert_export.py", "-k", "bf16"),
    M("convert-lora-scale", "workbench/convert/lora.py",
      '    return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else float(r))',
      '    return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else math.sqrt(r))',
      "tests/core/test_lora.py", "-k", "scale"),
    M("convert-qk-permutation", "workbench/convert/hf_to_gguf.py",
      "    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)",
      "    return np.arange(rows).reshape(heads, 2, rows // heads // 2).reshape(-1)",
      "tests/core/test_convert_hf.py", "-k", "llama_f32_exact"),
    M("requant-stale-spans", "workbench/convert/requantize.py",
      "                and model.kv_stamp == (stamp.st_size, stamp.st_mtime_ns)):", "                ):",
      "tests/core/test_requantize.py", "-k", "metadata_bytes"),
    M("kernels-interactive-processes", "workbench/kernels/base.py",
      "    if threads > 1 and kernel.gil_bound and x.size >= _process_min:",
      "    if threads > 1 and kernel.gil_bound and x.size >= PROCESS_MIN_ELEMENTS:",
      "tests/core/test_kernel_stream.py", "-k", "interactive"),
    M("kernels-worker-nice", "workbench/kernels/procpool.py", "    _lower_priority(worker_nice)\n", "",
      "tests/core/test_kernel_stream.py", "-k", "lowest_priority"),
    M("kernels-q3_k-pass-limit", "workbench/kernels/kquants_low.py",
      "_NEXT_END = np.minimum(16 * np.arange(2, 7), 80)", "_NEXT_END = np.minimum(16 * np.arange(2, 7), 96)",
      K, "-k", "q3_k_rmse", why="a sixth rmse pass (a few uniform sub-blocks in 10,000 still move)"),
    M("kernels-q3_k-next-pass", "workbench/kernels/kquants_low.py",
      "_NEXT_END = np.minimum(16 * np.arange(2, 7), 80)", "_NEXT_END = np.minimum(16 * np.arange(3, 8), 80)", K, "-k", "q3_k_rmse",
      why="a pass that moved a quant may be followed by two: one that moved none goes on"),
    M("kernels-q3_k-limit", "workbench/kernels/kquants_low.py", "                bits &= _AVAIL.take(lim - u)\n",
      "                bits &= _AVAIL.take(lim - u + 1)\n", K, "-k", "q3_k_rmse",
      why="a row tries one position past the end of its last pass"),
    M("kernels-q3_k-kept-quants", "workbench/kernels/kquants_low.py", "                    Lout[idf] = Lia[fin]\n",
      "                    pass\n", K, "-k", "refined_together",
      why="a sub-block whose 6-bit scale is 0 keeps its first quants, not the refined ones"),
    M("kernels-q3_k-kept-quants-last", "workbench/kernels/kquants_low.py", "                        Lout[ids] = Lia\n",
      "                        pass\n", K, "-k", "refined_together",
      why="the sub-blocks a refinement finishes last keep their first quants"),
    M("kernels-q3_k-exact-rounding", "workbench/kernels/kquants_low.py",
      "exact = ~(amax < _RD_BIG * np.abs(d))", "exact = amax < 0", K, "-k", "huge and Q3_K",
      why="quotients of 120 and more (saturated fp16 scales) rounded as small ones"),
    M("kernels-round-div-int8", "workbench/kernels/kquants_low.py", "_RD_BIG = F32(120)", "_RD_BIG = F32(2.0 ** 21)",
      K, "-k", "matches_ggml and (Q2_K or Q3_K)", why="quotients past an int8 rounded in bytes (they wrap)"),
    M("kernels-q3_k-finite", "workbench/kernels/kquants_low.py",
      "    check_finite(amax)  # NaN and Inf reach", "    pass  # NaN and Inf reach",
      "tests/core/test_kernels.py", "-k", "non_finite and Q3_K"),
    M("convert-requantize-file-type", "workbench/convert/requantize.py",
      'out["general.file_type"] = TypedValue(GGUFValueType.UINT32, int(ftype))',
      'out["general.file_type"] = TypedValue(GGUFValueType.UINT32, int(ftype) + 1)',
      "tests/core/test_requantize.py"),
    M("convert-gguf-to-hf-unpermute", "workbench/convert/gguf_to_hf.py",
      "    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)",
      "    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).reshape(w.shape)",
      "tests/core/test_convert_export.py", "-k", "permute"),
    # -- fsutil (atomic writes) ---------------------------------------------------------------------
    M("fsutil-fsync-removed", "workbench/fsutil.py",
      "                try:\n                    os.fsync(fd)\n"
      "                finally:\n                    os.close(fd)\n"
      "                os.replace(tmp, target)",
      "                try:\n                    pass\n                finally:\n                    os.close(fd)\n"
      "                os.replace(tmp, target)",
      "tests/core/test_faults.py", "-k", "fsync", why="issue survivor"),
    M("fsutil-failed-overwrite-deletes-target", "workbench/fsutil.py",
      "            with contextlib.suppress(OSError):\n                tmp.unlink()\n            raise",
      "            with contextlib.suppress(OSError):\n"
      "                tmp.unlink(); target.unlink()\n            raise",
      "tests/core/test_faults.py", "-k", "overwrite", why="issue survivor"),
    # -- infer --------------------------------------------------------------------------------------
    M("infer-rms-norm-eps-ignored", "workbench/infer/decoder.py",
      '        self.eps = float(cfg.get("rms_norm_eps", 1e-6))', "        self.eps = 1e-6",
      "tests/core/test_infer_llama.py", "-k", "logits", why="issue survivor"),
    M("infer-llama3-rope-smoothing", "workbench/infer/decoder.py",
      "        smoothed = (1 - smooth) * scaled / factor + smooth * scaled",
      "        smoothed = (1 - smooth) * scaled / factor + smooth * scaled * 0.99",
      "tests/core/test_infer_llama.py", "-k", "rope or logits", why="issue survivor"),
    M("infer-ggml-norm-float-sum", "workbench/infer/decoder.py",
      "    mean = (np.add.reduce(sq, axis=-1, dtype=np.float64) / x.shape[-1]).astype(F32)",
      "    mean = (np.add.reduce(sq, axis=-1) / x.shape[-1]).astype(F32)",
      "tests/core/test_llama_cpu_ops.py", why="ggml sums the squares in double"),
    M("infer-ggml-rope-unfused", "workbench/infer/decoder.py",
      "    x64 = x1.astype(np.float64)", "    x64 = x1",
      "tests/core/test_llama_cpu_ops.py", why="the rotation rounded twice instead of fused"),
    M("infer-ggml-rope-theta-float64", "workbench/infer/decoder.py",
      "        np.multiply(theta[:, i - 1], ts, out=theta[:, i])  # theta *= theta_scale",
      "        theta[:, i] = np.arange(cap) * np.float64(base) ** (-2.0 * i / rot)",
      "tests/core/test_llama_cpu_ops.py", why="exact angles instead of ggml's running float32 product"),
    M("infer-ggml-rope-not-used", "workbench/infer/decoder.py",
      "            rope.ggml = (float(rc[\"rope_theta\"]), scale, freqs)", "            pass",
      "tests/core/test_llama_cpu_ops.py", why="llama-cpu numerics keeping the float64 tables"),
    M("infer-q8_0-activation-roundf", "workbench/infer/activations.py",
      "    q = np.rint(b * inv[:, None])  # _mm256_round_ps(_MM_ROUND_NEAREST): halves to even",
      "    q = np.floor(np.abs(b * inv[:, None]) + F32(0.5)) * np.sign(b)",
      "tests/core/test_infer_activations.py", "tests/core/test_llama_cpu_ops.py",
      why="the reference quantizer's roundf instead of the AVX2 row quantizer's rounding"),
    M("infer-arch-no-window", "workbench/infer/decoder.py",
      "        self.windows: list[int | None] = [window if k == SLIDING else None for k in kinds]",
      "        self.windows: list[int | None] = [None for k in kinds]",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits", why="sliding windows ignored"),
    M("infer-arch-window-mask-off-by-one", "workbench/infer/decoder.py",
      "            ok = (j <= i) & (i - j < window)", "            ok = (j <= i) & (i - j <= window)",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits"),
    M("infer-arch-ring-unbounded", "workbench/infer/decoder.py",
      "            size = cap if win is None else min(win, cap)", "            size = cap",
      "tests/core/test_infer_archs.py", "-k", "window", why="a sliding layer caching every position"),
    M("infer-arch-attn-softcap", "workbench/infer/decoder.py",
      "        if self.attn_softcap:\n            softcap_(scores, self.attn_softcap)\n        if mask", "        if mask",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma2"),
    M("infer-arch-attn-softcap-step", "workbench/infer/decoder.py",
      "        if self.attn_softcap:\n            softcap_(scores, self.attn_softcap)\n        softmax_(scores)",
      "        softmax_(scores)", "tests/core/test_infer_archs.py", "-k", "step and gemma2"),
    M("infer-arch-final-softcap", "workbench/infer/decoder.py",
      "        if self.final_softcap:\n            softcap_(out, self.final_softcap)\n", "",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma2"),
    M("infer-arch-gemma-norm-offset", "workbench/infer/decoder.py",
      "        out = _f32(w) + F32(self.spec.norm_offset) if self.spec.norm_offset else _f32(w)",
      "        out = _f32(w)", "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma"),
    M("infer-arch-embed-scale", "workbench/infer/decoder.py",
      "        if self.embed_scale is not None:\n            x *= self.embed_scale\n", "",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma"),
    M("infer-arch-sandwich-norm", "workbench/infer/decoder.py",
      "        if L.post_attn_norm is not None:\n            a = self._norm(a, L.post_attn_norm, eps)\n", "",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma"),
    M("infer-arch-k-norm", "workbench/infer/decoder.py",
      "            _head_norm_(heads[:, nh:nh + nkv], L.k_norm, self.eps)\n", "",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and qwen3"),
    M("infer-arch-gelu-tanh", "workbench/infer/decoder.py", "    inner *= F32(0.044715)", "    inner *= F32(0.05)",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma"),
    M("infer-arch-local-rope-base", "workbench/infer/specs.py",
      "    if isinstance(params.get(layer_type), dict):  # per layer kind (gemma3)\n        params = params[layer_type]",
      "    if isinstance(params.get(layer_type), dict):  # per layer kind (gemma3)\n        params = params[FULL]",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and gemma3"),
    M("infer-arch-longrope-attention-factor", "workbench/infer/decoder.py",
      "            return _Rope(base / short, rot, longrope_attention_factor(rc), base / long, orig)",
      "            return _Rope(base / short, rot, 1.0, base / long, orig)",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and phi3"),
    M("infer-arch-longrope-switch", "workbench/infer/decoder.py",
      "        long = any(r.long_inv_freq is not None and start + t > r.switch for r in self._ropes.values())",
      "        long = any(r.long_inv_freq is not None and start + t >= r.switch for r in self._ropes.values())",
      "tests/core/test_infer_archs.py", "-k", "longrope"),
    M("infer-arch-gguf-gemma-norm-offset", "workbench/infer/weights.py",
      "                x = x + np.float32(offset)", "                x = x + np.float32(0.0)",
      "tests/core/test_infer_archs.py", "-k", "gguf and gemma"),
    M("infer-arch-stacked-experts", "workbench/infer/decoder.py",
      "np.concatenate([take(ex[0]), take(ex[1])], axis=1)", "np.concatenate([take(ex[1]), take(ex[0])], axis=1)",
      "tests/core/test_infer_archs.py", "-k", "gguf and qwen3moe"),
    M("infer-arch-moe-renormalize", "workbench/infer/decoder.py",
      "        if self.norm_topk:\n            wts /= wts.sum(axis=1, keepdims=True)\n", "",
      "tests/core/test_infer_archs.py", "-k", "prompt_logits and qwen3moe"),
    M("infer-arch-cache-over-budget", "workbench/infer/decoder.py",
      "        return max(0, self.budget - self.reserve - self.nbytes)",
      "        return max(0, 2 * self.budget - self.reserve - self.nbytes)",
      "tests/core/test_infer_archs.py", "-k", "budget"),
    M("infer-ppl-ratio-uncertainty", "workbench/infer/metrics.py",
      "        ratio_unc = math.sqrt(max(lp_unc ** 2 + lb_unc ** 2 - 2.0 * cov, 0.0))",
      "        ratio_unc = math.sqrt(max(lp_unc ** 2 + lb_unc ** 2 + 2.0 * cov, 0.0))",
      "tests/core/test_infer_metrics.py", "tests/core/test_infer_compare.py", why="issue survivor"),
    M("infer-percentile-interpolation", "workbench/infer/metrics.py", "    p -= ip\n", "    p = 0.0\n",
      "tests/core/test_infer_metrics.py", why="issue survivor: non-integer percentiles"),
    M("infer-mean-uncertainty", "workbench/infer/metrics.py",
      "    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)",
      "    return f, (math.sqrt(df / n) if df > 0 and n > 10 else 0.0)", "tests/core/test_infer_metrics.py"),
    M("infer-kld-direction", "workbench/infer/metrics.py",
      '        kld[a:b] = np.einsum("ij,ij->i", np.exp(lb), lb - lq)',
      '        kld[a:b] = np.einsum("ij,ij->i", np.exp(lq), lq - lb)', "tests/core/test_infer_metrics.py"),
    M("infer-top-p-prefix", "workbench/infer/sampling.py",
      "        n = int(np.searchsorted(cum, top_p * (1 - 1e-12))) + 1",
      "        n = max(1, int(np.searchsorted(cum, top_p * (1 - 1e-12))))", "tests/core/test_generate.py",
      "-k", "probabilities"),
    # -- stats, cli ---------------------------------------------------------------------------------
    M("stats-std", "workbench/stats.py", "float(np.sqrt(var))", "float(var)", "tests/core/test_stats.py"),
    M("cli-error-exit-code", "workbench/cli.py",
      '        print(f"error: {err}", file=sys.stderr)\n        return 1',
      '        print(f"error: {err}", file=sys.stderr)\n        return 0',
      "tests/core/test_cli.py", "-k", "bad_input"),
    # -- ui -----------------------------------------------------------------------------------------
    M("ui-natural-sort", "ui/models/tensor_tree_model.py", "        keys = (natural_key(g.name), (n, ()),",
      "        keys = (g.name.lower(), (n, ()),", "tests/ui/test_tensor_tree.py", "-k", "sort_by_name",
      why="issue survivor: blk.9 before blk.10"),
    M("ui-worker-stale-result-guard", "ui/worker.py",
      "    def _on_result(self, job_id: int, value: object) -> None:\n        if job_id == self._current:",
      "    def _on_result(self, job_id: int, value: object) -> None:\n        if True:",
      "tests/ui/test_worker.py", why="issue survivor: the guard was never reached"),
    M("ui-worker-stale-error-guard", "ui/worker.py",
      "    def _on_error(self, job_id: int, message: str) -> None:\n        if job_id == self._current:",
      "    def _on_error(self, job_id: int, message: str) -> None:\n        if True:", "tests/ui/test_worker.py"),
    M("ui-filter-slash-regex", "ui/widgets/filter_edit.py",
      '    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):', "    if False:",
      "tests/ui/test_tensor_tree.py", "-k", "filter_substring"),
    M("ui-plan-undo", "ui/controllers/plan_controller.py",
      "    def undo(self) -> None:\n        self.controller._apply(self.before)",
      "    def undo(self) -> None:\n        self.controller._apply(self.after)",
      "tests/ui/test_plan_editing.py", "-k", "undo"),
    M("ui-group-size-sum", "ui/models/tensor_tree_model.py",
      "sum(k.obj.nbytes for k in kids)",
      "max(k.obj.nbytes for k in kids)",
      "tests/ui/test_tensor_tree.py", "-k", "drop_folder"),
    M("ui-gc-on-gui-thread", "ui/gc_guard.py", "        gc.disable()\n", "        pass\n",
      "tests/ui/test_gc_guard.py", why="a worker-thread collection destroyed Qt objects: CI deadlock"),
    M("ui-gguf-point-same-model", "ui/pages/optimize_view.py", "            if got is None:\n", "            if False:\n",
      "tests/ui/test_optimize_view.py", "-k", "gguf"),
    M("ui-layer-error-follows-plan", "ui/pages/tensor_detail.py", "            self._show_layer_rows(self._item)\n",
      "            pass\n", "tests/ui/test_layer_summary.py"),
    M("ui-error-table-in-cpp", "ui/models/error_table.py", "    def column(self, key: str) -> int:\n",
      "    def data(self, index, role=Qt.ItemDataRole.DisplayRole):\n        return super().data(index, role)\n\n"
      "    def column(self, key: str) -> int:\n", "tests/ui/test_analysis_view.py", "-k", "sorted_table",
      why="a Python data() makes every repaint wait for the interpreter lock"),
    M("ui-tensor-tree-in-cpp", "ui/models/tensor_tree_model.py", "    def index_of(self, name: str) -> QModelIndex:\n",
      "    def data(self, index, role=Qt.ItemDataRole.DisplayRole):\n        return super().data(index, role)\n\n"
      "    def index_of(self, name: str) -> QModelIndex:\n", "tests/ui/test_gui_latency.py", "-k", "call_no_python",
      why="a Python data() makes every repaint of the tensor tree wait for the interpreter lock"),
]


def tracked_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and (root / p).is_file()]


def make_copy(root: Path, dest: Path) -> None:
    for rel in tracked_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """('passed'|'skipped'|'no tests'|'failed'|'error'|'timeout', last line of pytest's output).  Only a
    failure, an error (e.g. the mutant breaks an import) or a timeout kills a mutant; tests that all skip
    or a selection that matches nothing do not."""
    env = dict(os.environ, PYTHONPATH=str(copy), QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    env.pop("CI", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result in {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else proc.stderr.strip()[-200:]
    if proc.returncode == 0:
        return ("skipped" if " skipped" in last and " passed" not in last else "passed"), last
    if proc.returncode == 5:
        return "no tests", "no test matched the selection"
    return ("failed" if proc.returncode == 1 else "error"), last


def check_imports(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy), QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", "import workbench, ui; print(workbench.__file__); print(ui.__file__)"],
                         cwd=copy, env=env, capture_output=True, text=True, check=True).stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in out):
        raise SystemExit(f"the copy's packages are not the ones imported: {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("prefixes", nargs="*", help="run only mutants whose id starts with one of these")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--baseline", action="store_true", help="first run every selection on the unmutated copy")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant (a hang counts as killed)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the copy is removed, pytest is killed
    chosen = [m for m in MUTANTS if not args.prefixes or any(m.id.startswith(p) for p in args.prefixes)]
    if args.list:
        for m in chosen:
            print(f"{m.id:40s} {m.path:34s} {' '.join(m.tests)}")
        parts = {m.path.split("/")[1] if m.path.startswith("workbench/") else m.path.split("/")[0] for m in chosen}
        print(f"{len(chosen)} mutants over {len(parts)} modules and packages")
        return 0
    with tempfile.TemporaryDirectory(prefix="wb-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        make_copy(ROOT, copy)
        check_imports(copy)
        if args.baseline:
            for sel in sorted({m.tests for m in chosen}):
                status, last = run_tests(copy, sel, args.timeout)
                print(f"baseline {status:8s} {' '.join(sel)}: {last}", flush=True)
                if status != "passed":
                    print("the unmutated selection must pass (and not skip): fix it before judging mutants")
                    return 2
        results: dict[str, str] = {}
        for m in chosen:
            path = copy / m.path
            original = path.read_text(encoding="utf-8")
            n = original.count(m.old)
            if n != 1:
                results[m.id] = "stale"
                print(f"{m.id:40s} STALE    (the source string occurs {n} times in {m.path}: update the mutant)",
                      flush=True)
                continue
            path.write_text(original.replace(m.old, m.new), encoding="utf-8")
            t0 = time.monotonic()
            try:
                status, last = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            verdict = "killed" if status in ("failed", "error", "timeout") else "SURVIVED"
            if status == "error":  # a collection error: make sure the unmutated selection is sound
                base, base_last = run_tests(copy, m.tests, args.timeout)
                if base != "passed":
                    verdict, last = "BROKEN", f"fails unmutated too ({base}): {base_last}"
            results[m.id] = verdict
            print(f"{m.id:40s} {verdict:8s} {time.monotonic() - t0:5.1f}s  {last}", flush=True)
    killed = sum(v == "killed" for v in results.values())
    print(f"\n{killed} of {len(results)} mutants killed", end="")
    bad = [k for k, v in results.items() if v != "killed"]
    print(f"; not killed: {', '.join(bad)}" if bad else "")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
