"""``workbench``: the command line over the same core calls the GUI uses."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import warnings
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import WorkbenchError
from .formats import iter_open_model
from .model import MetaEntry, Model
from .progress import Progress, TextProgressBar, run
from .units import human_bytes, human_count


def _jsonable(value: Any, full: bool) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        if not full and len(value) > 16:
            return {"length": len(value), "head": [_jsonable(v, full) for v in value[:8]]}
        return [_jsonable(v, full) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, full) for k, v in value.items()}
    return value


def model_to_json(model: Model, full_arrays: bool = False) -> dict:
    meta = {}
    for group, entries in model.metadata.items():
        meta[group] = {e.key: {"type": e.vtype, "value": _jsonable(e.value, full_arrays),
                               **({"decoded": e.decoded} if e.decoded else {})} for e in entries}
    return {
        **model.summary(),
        "warnings": model.warnings,
        "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "nbytes": t.nbytes,
                     "file": str(t.file), "offset": t.offset} for t in model.tensors],
        "metadata": meta,
    }


def _short_value(e: MetaEntry, width: int = 70) -> str:
    v = e.value
    if isinstance(v, (list, tuple, np.ndarray)):
        items = ", ".join(repr(x.item() if isinstance(x, np.generic) else x) for x in list(v[:4]))
        text = f"[{len(v)} items] {items}{', …' if len(v) > 4 else ''}"
    elif isinstance(v, dict):
        text = "{" + ", ".join(f"{k}: {val!r}" for k, val in list(v.items())[:4]) + (", …}" if len(v) > 4 else "}")
    else:
        text = repr(v) if isinstance(v, str) else str(v)
    if e.decoded:
        text = f"{e.decoded} ({text})"
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def print_summary(model: Model, out=None, max_tensors: int | None = None) -> None:
    out = out or sys.stdout
    w = out.write
    w(f"Model:        {model.name}\n")
    w(f"Format:       {model.format}\n")
    w(f"Architecture: {model.architecture or '-'}\n")
    w(f"Files:        {', '.join(str(f) for f in model.files)}\n")
    w(f"Tensors:      {len(model.tensors)}   Parameters: {human_count(model.n_params)} ({model.n_params:,})\n")
    w(f"Size:         {human_bytes(model.nbytes)}   Bits per weight: {model.bits_per_weight:.2f}\n")
    w("Types:        " + ", ".join(f"{k} x{v}" for k, v in sorted(model.dtype_counts().items())) + "\n")
    for warning in model.warnings:
        w(f"Warning:      {warning}\n")
    w("\nTensors\n")
    name_w = min(60, max((len(t.name) for t in model.tensors), default=4))
    w(f"  {'name':<{name_w}}  {'shape':<20} {'type':<8} {'params':>12} {'size':>10}\n")
    shown = model.tensors if max_tensors is None else model.tensors[:max_tensors]
    for t in shown:
        w(f"  {t.name:<{name_w}}  {str(list(t.shape)):<20} {t.dtype:<8} {t.n_params:>12,} {human_bytes(t.nbytes):>10}\n")
    if len(shown) < len(model.tensors):
        w(f"  … {len(model.tensors) - len(shown)} more (use --all)\n")
    for group, entries in model.metadata.items():
        w(f"\nMetadata: {group}\n")
        key_w = min(45, max((len(e.key) for e in entries), default=3))
        for e in entries:
            w(f"  {e.key:<{key_w}}  {e.vtype:<14} {_short_value(e)}\n")


def _bar(args) -> TextProgressBar:
    return TextProgressBar(quiet=getattr(args, "quiet", False))


def _open(path, args) -> Model:
    """Open a model (headers only) with progress, and pass its warnings on to the user."""
    bar = _bar(args)
    try:
        model = run(iter_open_model(path), bar)
    finally:
        bar.close()
    _warn(model.warnings)
    return model


def _warn(messages) -> None:
    for text in messages:
        print(f"warning: {text}", file=sys.stderr)


def cmd_inspect(args) -> int:
    model = _open(args.path, args)  # its warnings on stderr (``warning: ...``), also with --json
    if args.json:
        json.dump(model_to_json(model, args.full_arrays), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_summary(model, max_tensors=None if args.all else 40)
    return 0


def _preset(text: str | None, option: str = "--type") -> str | None:
    """A preset name, upper-cased; an unknown one is refused before anything is opened."""
    if text is None:
        return None
    from .plan import PRESETS

    t = text.strip().upper()
    if t not in PRESETS:
        raise WorkbenchError(f"unknown type {text!r} ({option})", hint="Choose one of: " + ", ".join(PRESETS))
    return t


def _load_imatrix(args):
    """``--imatrix FILE``: the importance matrix (GGUF or legacy .dat), or None."""
    if not getattr(args, "imatrix", None):
        return None
    from .optimize.imatrix import Imatrix

    return Imatrix.load(args.imatrix)


def _with_imatrix(plan, imatrix):
    """The plan with llama-quantize's rules for an imatrix's presence (a saved plan follows --imatrix)."""
    if imatrix is not None and not plan.has_imatrix:
        plan.has_imatrix = True
        plan.validate()
    return plan


def cmd_plan(args) -> int:
    from .plan import Plan

    preset = _preset(args.type)
    model = _open(args.path, args)
    plan = _with_imatrix(Plan.load(model, args.plan) if args.plan else Plan(model, preset), _load_imatrix(args))
    if args.rule:
        rules = []
        for r in args.rule:
            pattern, sep, qtype = r.rpartition("=")
            if not sep or not pattern:
                raise WorkbenchError(f"rule {r!r} is not PATTERN=TYPE")
            rules.append((pattern, qtype))
        plan.set_rules(plan.rules + rules)
    if args.save:
        plan.save(args.save)
    if args.tensor_type_file:
        from .fsutil import atomic_write_path

        with atomic_write_path(args.tensor_type_file) as tmp:
            tmp.write_text(plan.tensor_type_file(), encoding="utf-8")
    if args.json:
        json.dump({**plan.to_json(), "bytes": plan.nbytes, "bits_per_weight": plan.bits_per_weight,
                   "tensors": [{"name": e.name, "gguf_name": e.gguf_name, "type": e.type, "reason": e.reason,
                                "nbytes": e.nbytes} for e in plan.entries]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    name_w = min(60, max((len(e.name) for e in plan.entries), default=4))
    print(f"{'tensor':<{name_w}}  {'source':<6} {'type':<7} {'size':>10}  reason")
    for e in plan.entries:
        print(f"{e.name:<{name_w}}  {e.source:<6} {e.type:<7} {human_bytes(e.nbytes):>10}  {e.reason}")
    counts = ", ".join(f"{k} x{v}" for k, v in sorted(plan.type_counts().items()))
    print(f"\nPreset {plan.preset}: {human_bytes(plan.nbytes)}, {plan.bits_per_weight:.2f} bits per weight ({counts})")
    return 0


def _run_job(job, args) -> list:
    """Drive a job with progress on stderr; print its warnings (``warning: ...``) and the written paths."""
    bar = _bar(args)
    warned: list[str] = []
    last: list[Progress] = []

    def on_progress(p: Progress) -> None:
        bar(p)
        last[:] = [p]
        warned.extend(w for w in p.warnings if w not in warned)

    try:
        paths = run(job, on_progress)
    finally:
        bar.close()
    _warn(warned)
    if not warned and last and "warning" in last[0].message.lower():  # a job that only words it in its message
        print(last[0].message, file=sys.stderr)
    for path in paths or ():
        print(path)
    return paths


def parse_size(text: str) -> int:
    """``2G``, ``500M``, ``1.5G``, ``4096`` -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise WorkbenchError(f"{text!r} is not a size (examples: 2G, 500M, 4096)") from None


def check_output(output, *, file_suffix: str | None = None) -> None:
    """Refuse an output we cannot write before any tensor is read: a file where a folder must be created,
    or a folder without write permission (a probe file is created and removed in the nearest existing one)."""
    from pathlib import Path

    from .fsutil import check_writable

    out = Path(output).expanduser()
    is_file = file_suffix is not None and out.suffix.lower() == file_suffix and not out.is_dir()
    folder = out.parent if is_file else out
    p = folder
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise WorkbenchError("the output cannot be created: this is a file, not a folder", path=p,
                             hint="Choose another output location.")
    check_writable(p)


def _is_gguf(path: str) -> bool:
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def cmd_export(args) -> int:
    from .convert.export import export_hf, normalize_dtype

    dtype = normalize_dtype(args.type)  # unknown types are refused here, before the model is opened
    check_output(args.output)
    model = _open(args.src, args)
    _run_job(export_hf(model, args.output, dtype=dtype, format=args.format,
                       max_shard_size=parse_size(args.max_shard_size), overwrite=args.force,
                       raw=args.raw), args)
    return 0


def cmd_convert(args) -> int:
    from pathlib import Path

    from .plan import Plan

    gguf_src = _is_gguf(args.src)
    preset = _preset(args.type) or ("Q8_0" if gguf_src else "F16")
    split = dict(split_max_size=parse_size(args.split_max_size) if args.split_max_size else 0,
                 split_max_tensors=args.split_max_tensors or 0)
    check_output(args.output, file_suffix=".gguf")
    src = Path(args.src).expanduser()
    model = _open(src if gguf_src or src.is_dir() else src.parent, args)  # a Hugging Face model is its folder
    imatrix = _load_imatrix(args)
    plan = _with_imatrix(Plan.load(model, args.plan) if args.plan else Plan(model, preset), imatrix)
    if gguf_src:  # GGUF -> GGUF: requantize (a single file or any part of a split set)
        from .convert.requantize import requantize_gguf

        meta = imatrix.meta(args.imatrix) if imatrix is not None else None  # the path as given, as llama-quantize
        _run_job(requantize_gguf(model, args.output, plan, name=args.name, overwrite=args.force, imatrix=imatrix,
                                 imatrix_meta=meta, **split), args)
        return 0
    from .convert.hf_to_gguf import convert_hf_to_gguf

    _run_job(convert_hf_to_gguf(args.src, args.output, plan, name=args.name, overwrite=args.force, imatrix=imatrix,
                                **split), args)
    return 0


FLOAT_TYPES = ("F32", "F16", "BF16")


def cmd_merge_lora(args) -> int:
    from .convert.lora import merge_lora

    t = args.type.strip().upper() if args.type else None
    out_gguf = str(args.output).lower().endswith(".gguf")
    if args.to:
        to = "gguf" if args.to == "gguf" else "hf"
    else:  # a GGUF base, a plan, a quantized type or a .gguf name mean a GGUF; else a safetensors folder
        to = "gguf" if _is_gguf(args.base) or args.plan or out_gguf or (t and t not in FLOAT_TYPES) else "hf"
    kw: dict = dict(overwrite=args.force)
    if to == "hf":
        if t and t not in FLOAT_TYPES:
            raise WorkbenchError(f"--type {t} is a GGUF type: a safetensors output is F32, F16 or BF16",
                                 hint="Add --to gguf for a quantized GGUF.")
        kw["dtype"] = t
        check_output(args.output)
    else:
        kw.update(plan_or_preset=_preset(t), name=args.name,
                  split_max_size=parse_size(args.split_max_size) if args.split_max_size else 0,
                  split_max_tensors=args.split_max_tensors or 0)
        check_output(args.output, file_suffix=".gguf")
    base = _open(args.base, args)
    adapter = _open(args.adapter, args)
    if to == "gguf" and args.plan:
        from .plan import Plan

        kw["plan_or_preset"] = Plan.load(base, args.plan)
    _run_job(merge_lora(base, adapter, args.output, to=to, **kw), args)
    return 0


def cmd_lora_to_gguf(args) -> int:
    from .convert.lora_gguf import lora_to_gguf, normalize_outtype

    outtype = normalize_outtype(args.type)
    check_output(args.output, file_suffix=".gguf")
    adapter = _open(args.adapter, args)
    _run_job(_single(lora_to_gguf(adapter, args.output, base=args.base, outtype=outtype, overwrite=args.force)), args)
    return 0


def _single(job):
    """A job returning one path, as a job returning a list (what _run_job prints)."""
    path = yield from job
    return [path]


def cmd_set_metadata(args) -> int:
    from .convert.metadata_edit import parse_assignment, set_metadata

    assignments = dict(parse_assignment(a) for a in args.assignments)
    check_output(args.output, file_suffix=".gguf")
    _run_job(set_metadata(args.src, args.output, assignments, remove=args.remove or (), overwrite=args.force), args)
    return 0


def _memory_budget(args) -> int:
    """--memory-budget in bytes (default: half the available memory)."""
    from .infer.weights import default_memory_budget
    from .units import parse_size

    text = getattr(args, "memory_budget", None)
    if text is None or str(text).strip().lower() == "auto":
        return default_memory_budget()
    return parse_size(text, "--memory-budget")


def _budget_option(p) -> None:
    p.add_argument("--memory-budget", metavar="SIZE",
                   help="memory for dequantized layers, e.g. 500MB, 2GB (default auto: half the available memory); "
                        "the weights stay in their level's bytes, so a large model runs in bounded memory")


def cmd_generate(args) -> int:
    import time

    from .infer.generate import detect_repetition, generate
    from .infer.tokenizer import load_tokenizer
    from .infer.engines import load_engine

    from .infer.weights import model_arch

    plan = _preset(args.type)
    budget = _memory_budget(args)
    model = _open(args.model, args)
    model_arch(model, generate=True)  # an encoder or unknown architecture: refused before any weight is read
    bar = _bar(args)
    try:
        if args.plan:
            from .plan import Plan

            plan = Plan.load(model, args.plan)
        tokenizer = load_tokenizer(model)
        engine = run(load_engine(model, plan, memory_budget=budget), bar)
    finally:
        bar.close()
    ids: list[int] = []
    t0 = time.perf_counter()
    for tok in generate(engine, tokenizer, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, chat=not args.no_chat):
        ids.append(tok.id)
        sys.stdout.write(tok.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    seconds = time.perf_counter() - t0
    if not args.quiet:
        print(f"{len(ids)} tokens in {seconds:.1f} s ({len(ids) / seconds if seconds else 0:.1f} tokens/s)",
              file=sys.stderr)
    if detect_repetition(ids):
        _warn(["the output ends in a repeating loop (try sampling: --temperature 0.8)"])
    return 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from .infer.compare import MIN_N_CTX, compare

    if args.ctx < MIN_N_CTX:
        raise WorkbenchError(f"--ctx {args.ctx} is too small: needs at least {MIN_N_CTX} tokens "
                             "(the second half of each window is scored)")
    if args.chunks is not None and args.chunks < 1:
        raise WorkbenchError(f"--chunks {args.chunks} is too small: score at least 1 window")
    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    budget = _memory_budget(args)
    text = None
    if args.text:
        try:
            text = Path(args.text).expanduser().read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise WorkbenchError(f"cannot read the calibration text: {exc.strerror}", path=args.text) from None
    model = _open(args.model, args)
    bar = _bar(args)
    warned: list[str] = []

    def on_progress(p: Progress) -> None:
        bar(p)
        warned.extend(w for w in p.warnings if w not in warned)

    try:
        result = run(compare(model, levels, base=args.base, text=text, prompt=None if args.no_generate else args.prompt,
                             n_ctx=args.ctx, max_windows=args.chunks, max_tokens=args.max_tokens,
                             chat=args.chat, eval_mode=args.eval, memory_budget=budget,
                             imatrix=_load_imatrix(args)), on_progress)
    finally:
        bar.close()
    _warn(warned)
    if args.json:
        print(result.to_json())
    elif args.csv:
        sys.stdout.write(result.to_csv())
    else:
        sys.stdout.write(result.to_markdown())
        if result.kind != "embedding":
            print(f"\n{result.n_tokens_scored} tokens scored in {result.n_windows} windows of {result.n_ctx} "
                  f"(the second half of each), base: {result.base.label} ({result.base.plan}), "
                  f"evaluated {result.eval_label}")
    _warn(f"{r.label}: the generated text ends in a repeating loop" for r in result.levels if r.repetition)
    return 0


def cmd_imatrix(args) -> int:
    from pathlib import Path

    from .infer.tokenizer import load_tokenizer
    from .optimize.imatrix_compute import check_decoder, compute_imatrix, load_calibration

    out = Path(args.output).expanduser()
    if out.exists() and not args.force:
        raise WorkbenchError("the output file already exists", path=out, hint="Pass --force to replace it.")
    check_output(out, file_suffix=out.suffix.lower() or ".gguf")
    budget = _memory_budget(args)
    model = _open(args.model, args)
    check_decoder(model)
    cal = load_calibration(args.text, load_tokenizer(model), held_out=args.held_out, seed=args.seed)
    bar = _bar(args)
    try:
        imatrix = run(compute_imatrix(model, cal.train, args.ctx, args.chunks, process_output=args.process_output,
                                      parse_special=cal.chat, dataset=cal.label, memory_budget=budget), bar)
    finally:
        bar.close()
    imatrix.save(out, overwrite=True)
    if not args.quiet:
        print(f"{len(imatrix)} tensors, {imatrix.chunk_count} chunks of {imatrix.chunk_size} tokens; "
              f"{cal.describe()}", file=sys.stderr)
    print(out)
    return 0


def _print_desktop_report(report, verb: str) -> None:
    for path in report.files:
        print(path)
    for text in report.ran:
        print(f"ran: {text}", file=sys.stderr)
    if report.skipped:
        print(f"not found (skipped): {', '.join(report.skipped)}", file=sys.stderr)
    for text in report.failed:
        print(f"warning: {text}", file=sys.stderr)
    print(f"{verb} {len(report.files)} files under {report.data_dir}", file=sys.stderr)


def cmd_optimize(args) -> int:
    from pathlib import Path

    from .optimize.optimizer import optimize
    from .optimize.sensitivity import cached_table, estimate_sensitivity, measure_sensitivity
    from .units import parse_size

    out = Path(args.output).expanduser()
    if out.exists() and not args.force:
        raise WorkbenchError("the output file already exists", path=out, hint="Pass --force to replace it.")
    check_output(out, file_suffix=out.suffix.lower() or ".json")
    budgets = [x is not None for x in (args.target_size, args.target_bpw, args.fit)]
    if sum(budgets) != 1:
        raise WorkbenchError("give exactly one budget: --target-size, --target-bpw, or --fit with --ctx")
    if args.fit is not None and not args.ctx:
        raise WorkbenchError("--fit needs --ctx N (the context whose KV cache must fit too)")
    model = _open(args.model, args)
    types = [t.upper() for t in (args.types.split(",") if args.types else
                                 ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS",
                                  "Q3_K", "Q2_K"])]
    imatrix = None
    if args.imatrix:
        from .optimize.imatrix import Imatrix

        imatrix = Imatrix.load(args.imatrix)
    target = dict(target_bytes=parse_size(args.target_size, "--target-size") if args.target_size else None,
                  target_bpw=args.target_bpw,
                  fit=(parse_size(args.fit, "--fit"), int(args.ctx)) if args.fit else None)
    measure = bool(args.measure or args.text)
    text = None
    if args.text:
        from .infer.tokenizer import load_tokenizer
        from .optimize.imatrix_compute import load_calibration

        text = load_calibration(args.text, load_tokenizer(model)).train
    bar = _bar(args)
    try:
        table = cached_table(model, types, text=text, imatrix=imatrix) if measure else None
        if table is None:  # a cached measurement holds its estimate
            table = run(estimate_sensitivity(model, types, imatrix), bar)
        if measure:
            first = optimize(model, table, types=types, **target)
            table = run(measure_sensitivity(model, types, text=text, imatrix=imatrix, estimate=table,
                                            budgets=[first.budget], max_candidates=args.candidates), bar)
    finally:
        bar.close()
    res = optimize(model, table, types=types, **target)
    res.plan.save(out)
    if not args.quiet:
        kv = f" + {human_bytes(res.kv_bytes)} KV cache" if res.kv_bytes else ""
        src = f"measured ({len(table.measured)} candidates" + (
            f", rank correlation with the estimate {table.rank_correlation:.2f})" if table.rank_correlation is not None
            else ")") if table.measured else "estimated (no forward pass; --measure to measure)"
        print(f"{human_bytes(res.nbytes)}{kv} ({res.plan.bits_per_weight:.3f} bpw) within {human_bytes(res.budget)}"
              f"{kv}; predicted mean KLD {res.predicted_kld:.5f}, sensitivity {src}"
              f"{'' if res.exact else '; not proven exact'}", file=sys.stderr)
        print("types: " + ", ".join(f"{t} x{n}" for t, n in sorted(res.plan.type_counts().items())), file=sys.stderr)
    print(out)
    return 0


def cmd_imatrix_stats(args) -> int:
    from .optimize.imatrix import Imatrix
    from .optimize.imatrix_stats import format_table, layer_statistics, sort_stats, statistics

    im = Imatrix.load(args.file)
    stats = statistics(im)
    if args.sort:
        stats = sort_stats(stats, args.sort)
    layers = layer_statistics(stats)
    if args.json:
        print(json.dumps({"file": str(args.file), "entries": len(im), "chunks": im.chunk_count,
                          "datasets": list(im.datasets), "tensors": [t.to_dict() for t in stats],
                          "layers": [s.to_dict() for s in layers]}, indent=1))
        return 0
    print(f"{args.file}: {len(stats)} tensors with activations of {len(im)} entries, {im.chunk_count} chunks")
    print(format_table(stats, layers))
    return 0


def cmd_install_desktop(args) -> int:
    from .desktop import install_desktop

    command = None
    if args.exec:  # a program path (spaces allowed) or a command line
        command = [args.exec] if os.path.isfile(args.exec) else shlex.split(args.exec)
    _print_desktop_report(install_desktop(args.prefix, command, set_default=not args.no_default), "installed")
    return 0


def cmd_uninstall_desktop(args) -> int:
    from .desktop import uninstall_desktop

    _print_desktop_report(uninstall_desktop(args.prefix), "removed")
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return n


def _common(p: argparse.ArgumentParser, *, threads: bool = False, force: bool = False) -> None:
    """The options every command spells the same way."""
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output (warnings and errors are still "
                                                              "printed)")
    if threads:
        p.add_argument("--threads", type=_positive_int, metavar="N",
                       help="threads (and worker processes) for the quantization kernels and numpy's BLAS "
                            "(default: one per core; or set WORKBENCH_THREADS)")
    if force:
        p.add_argument("--force", action="store_true", help="replace an existing output")
        p.add_argument("--overwrite", dest="force", action="store_true", help=argparse.SUPPRESS)  # the old name


def _alias(p: argparse.ArgumentParser, *names: str, dest: str, **kw) -> None:
    """Old spellings of an option, still accepted, not listed in --help."""
    p.add_argument(*names, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workbench", description="Model Workbench: inspect, quantize and convert model weights.")
    p.add_argument("--version", action="version", version=f"Model Workbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    ins = sub.add_parser("inspect", help="show a model's format, tensors and metadata",
                         description="Show a model's format, architecture, tensor table and metadata.")
    ins.add_argument("path", help="a .gguf, .safetensors, .bin file or a model folder")
    ins.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins.add_argument("--all", action="store_true", help="list every tensor (the table shows 40 by default)")
    ins.add_argument("--full-arrays", action="store_true", help="with --json, include long arrays whole")
    _common(ins)
    ins.set_defaults(func=cmd_inspect)
    pl = sub.add_parser("plan", help="show the type each tensor gets under a preset (llama-quantize's rules)",
                        description="Per-tensor quantization plan: preset, rules, size and bits per weight.")
    pl.add_argument("path", help="a model file or folder")
    pl.add_argument("--type", default="Q4_K_M", help="preset: F16, Q8_0, Q4_K_M, ... (default Q4_K_M)")
    pl.add_argument("--plan", help="load a saved plan (JSON) instead of a preset")
    pl.add_argument("--rule", action="append", metavar="PATTERN=TYPE", help="regex rule on GGUF names (repeatable)")
    pl.add_argument("--save", metavar="PLAN.json", help="save the plan as JSON")
    pl.add_argument("--tensor-type-file", metavar="FILE", help="export llama-quantize's --tensor-type-file")
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.add_argument("--imatrix", metavar="FILE", help="an importance matrix (llama-imatrix .gguf or .dat): the "
                                                      "preset rules that depend on one apply")
    _common(pl)
    pl.set_defaults(func=cmd_plan)
    cv = sub.add_parser("convert", help="convert a Hugging Face folder to GGUF, or requantize a GGUF",
                        description="HF folder (llama, mistral, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3, bert, "
                                    "t5) -> GGUF with full metadata and tokenizer, or GGUF -> GGUF (llama-quantize: "
                                    "metadata copied, tensors whose type does not change copied byte for byte); "
                                    "tensors typed by a preset or a saved plan.")
    cv.add_argument("src", help="a Hugging Face model folder, or a .gguf file (any part of a split set)")
    cv.add_argument("-o", "--output", required=True, help="output folder (or a .gguf file name)")
    cv.add_argument("--type", help="preset: F32, F16, BF16, Q8_0, Q4_K_M, ... (default F16 for a Hugging Face "
                                   "folder, Q8_0 for a GGUF)")
    cv.add_argument("--plan", help="a saved plan (JSON) instead of a preset")
    cv.add_argument("--name", help="output file name (default: the GGUF naming convention from the metadata)")
    cv.add_argument("--split-max-size", metavar="SIZE", help="split into shards of at most SIZE (e.g. 2G)")
    cv.add_argument("--split-max-tensors", type=int, metavar="N", help="split into shards of at most N tensors")
    cv.add_argument("--imatrix", metavar="FILE", help="importance matrix (llama-imatrix .gguf or .dat) weighting "
                                                      "the quantization, as llama-quantize --imatrix")
    _alias(cv, "--outtype", dest="type")
    _common(cv, threads=True, force=True)
    cv.set_defaults(func=cmd_convert)
    ex = sub.add_parser("export", help="write a Hugging Face folder (safetensors or .bin) from a GGUF or any model",
                        description="GGUF -> HF folder (dequantized, Q/K un-permuted, config and tokenizer rebuilt), "
                                    "or a .bin checkpoint -> safetensors.")
    ex.add_argument("src", help="a model file or folder")
    ex.add_argument("-o", "--output", required=True, help="output folder")
    ex.add_argument("--format", choices=("safetensors", "bin"), default="safetensors")
    ex.add_argument("--type", type=str.lower, choices=("f32", "f16", "bf16", "keep"), default="f16",
                    help="float type of the written tensors (default f16; keep: as stored, quantized ones "
                         "become f32)")
    _alias(ex, "--dtype", "--outtype", dest="type", type=str.lower, choices=("f32", "f16", "bf16", "keep"))
    ex.add_argument("--max-shard-size", default="5G", help="shard above this size (default 5G)")
    ex.add_argument("--raw", action="store_true",
                    help="a GGUF architecture without a Hugging Face mapping: write its tensors under their GGUF "
                         "names, with no config.json or tokenizer (otherwise refused)")
    _common(ex, threads=True, force=True)
    ex.set_defaults(func=cmd_export)
    ml = sub.add_parser("merge-lora", help="merge a PEFT LoRA adapter into its base model (HF folder or GGUF)",
                        description="W + scale * B @ A for every LoRA module (rsLoRA, rank/alpha patterns, "
                                    "fan_in_fan_out, modules_to_save). A Hugging Face base gives a safetensors "
                                    "folder with the config and tokenizer files copied beside it, or with --to gguf "
                                    "a GGUF written directly; a GGUF base (any type, quantized too) gives a GGUF "
                                    "with every other tensor copied.")
    ml.add_argument("base", help="the base model: a Hugging Face folder (safetensors or .bin) or a .gguf")
    ml.add_argument("adapter", help="the PEFT adapter folder (adapter_config.json + adapter_model.*)")
    ml.add_argument("-o", "--output", required=True, help="output folder (or a .gguf file name with --to gguf)")
    ml.add_argument("--to", choices=("safetensors", "gguf"),
                    help="output format (default: gguf for a GGUF base, a quantized --type, --plan or an "
                         "output name ending in .gguf; else safetensors)")
    ml.add_argument("--type", help="type of the result: F32, F16 or BF16 for a safetensors folder (default: the "
                                   "base's), any preset (Q8_0, Q4_K_M, ...) for a GGUF (default: F16 for a "
                                   "Hugging Face base; a GGUF base keeps each tensor's type)")
    _alias(ml, "--dtype", "--outtype", dest="type")
    ml.add_argument("--plan", help="a saved plan (JSON, made on the base) for the GGUF tensor types")
    ml.add_argument("--name", help="GGUF file name (default: the GGUF naming convention)")
    ml.add_argument("--split-max-size", metavar="SIZE", help="split the GGUF into shards of at most SIZE")
    ml.add_argument("--split-max-tensors", type=int, metavar="N", help="split the GGUF into shards of at most N tensors")
    _common(ml, threads=True, force=True)
    ml.set_defaults(func=cmd_merge_lora)
    lg = sub.add_parser("lora-to-gguf", help="convert a PEFT LoRA adapter to a GGUF adapter for llama.cpp --lora",
                        description="PEFT LoRA adapter -> GGUF LoRA adapter as llama.cpp's convert_lora_to_gguf.py "
                                    "writes it (lora_a / lora_b per module, llama Q/K permutation, one alpha per "
                                    "file with differing per-module scales folded into lora_b).")
    lg.add_argument("adapter", help="the PEFT adapter folder (adapter_config.json + adapter_model.*)")
    lg.add_argument("-o", "--output", required=True, help="output folder or .gguf file name")
    lg.add_argument("--base", required=True, help="the base model: a Hugging Face folder (config.json) or a .gguf")
    lg.add_argument("--type", type=str.lower, choices=("f32", "f16", "bf16", "q8_0"), default="f16",
                    help="type of the LoRA tensors (default f16)")
    _alias(lg, "--outtype", "--dtype", dest="type", type=str.lower, choices=("f32", "f16", "bf16", "q8_0"))
    _common(lg, threads=True, force=True)
    lg.set_defaults(func=cmd_lora_to_gguf)
    sm = sub.add_parser("set-metadata", help="add, change or remove GGUF keys (tensors copied unchanged)",
                        description="Write a copy of a GGUF with metadata edited; tensor data is copied byte for byte.")
    sm.add_argument("src", help="a .gguf file")
    sm.add_argument("-o", "--output", required=True, help="the new .gguf file")
    sm.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                    help="e.g. general.name=\"My Model\", tokenizer.chat_template=@template.jinja, llama.context_length=uint32:8192")
    sm.add_argument("--remove", action="append", metavar="KEY", help="remove a key (repeatable)")
    _common(sm, force=True)
    sm.set_defaults(func=cmd_set_metadata)
    gn = sub.add_parser("generate", help="complete a prompt with the model (numpy test inference)",
                        description="Run the model in float32 numpy (llama family, qwen2, t5) and stream the "
                                    "completion to stdout; --type / --plan first round every tensor through that "
                                    "quantization level (nothing is written).")
    gn.add_argument("model", help="a .gguf file or a Hugging Face model folder")
    gn.add_argument("--prompt", required=True, help="the prompt text")
    gn.add_argument("--type", help="quantization level to test: Q8_0, Q4_K_M, ... (default: the weights as stored)")
    gn.add_argument("--plan", help="a saved plan (JSON) instead of a preset")
    gn.add_argument("--max-tokens", type=int, default=128, metavar="N", help="tokens to generate (default 128)")
    gn.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    gn.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K most likely tokens (0: off)")
    gn.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling threshold (1: off)")
    gn.add_argument("--seed", type=int, help="random seed for sampling (repeatable output)")
    gn.add_argument("--no-chat", action="store_true", help="use the prompt as is, without the chat template")
    _budget_option(gn)
    _common(gn, threads=True)
    gn.set_defaults(func=cmd_generate)
    cp = sub.add_parser("compare", help="compare quantization levels against the base: PPL, KL divergence, texts",
                        description="Score a calibration text (the bundled one by default) with the base and with each "
                                    "level (the second half of each context window, as llama-perplexity "
                                    "--kl-divergence does) and generate from one prompt with every level.")
    cp.add_argument("model", help="a .gguf file or a Hugging Face model folder")
    cp.add_argument("--levels", required=True, help="comma-separated presets or saved plans: F16,Q8_0,Q4_K_M,plan.json")
    cp.add_argument("--base", default="F32", help="the reference level (default F32: the weights as stored)")
    cp.add_argument("--text", metavar="FILE", help="calibration text file (default: the bundled text)")
    cp.add_argument("--imatrix", metavar="FILE", help="importance matrix (.gguf or .dat) the levels are quantized "
                                                      "with, as convert --imatrix")
    cp.add_argument("--prompt", default="The capital of France is", help="prompt every level completes greedily")
    cp.add_argument("--no-generate", action="store_true", help="skip the generation")
    cp.add_argument("--max-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    cp.add_argument("--chat", action="store_true", help="apply the chat template to the prompt")
    cp.add_argument("--ctx", type=int, default=512, metavar="N", help="context window (default 512)")
    cp.add_argument("--chunks", type=int, metavar="N", help="score at most N windows")
    cp.add_argument("--eval", choices=("llama-cpu", "exact"), default="llama-cpu",
                    help="llama-cpu (default): as llama.cpp CPU runs it (activations rounded to the weight type's "
                         "dot-product partner, F16 KV cache, 16-bit base log-probs), the numbers llama-perplexity "
                         "prints; exact: what the weights alone cost")
    fmt = cp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the full result as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    _budget_option(cp)
    _common(cp, threads=True)
    cp.set_defaults(func=cmd_compare)
    im = sub.add_parser("imatrix", help="compute an importance matrix (llama-imatrix's GGUF format) with the engine",
                        description="Run the model over a calibration text in windows of --ctx tokens and write, for "
                                    "every matrix multiplication's weight, the sum of squared input activations per "
                                    "column and the token count (as llama-imatrix). A held-out part of the text "
                                    "(--held-out) is kept apart and never used.")
    im.add_argument("model", help="a .gguf file or a Hugging Face model folder (decoder models)")
    im.add_argument("--text", metavar="FILE", help="calibration text, or a chat set (.json list / .jsonl lines of "
                                                   "{\"messages\": [...]}) rendered with the model's chat template "
                                                   "(default: the bundled text)")
    im.add_argument("-o", "--output", required=True, metavar="FILE", help="the imatrix file to write (.gguf)")
    im.add_argument("--ctx", type=int, default=512, metavar="N", help="tokens per chunk (default 512)")
    im.add_argument("--chunks", type=_positive_int, metavar="N", help="use at most N chunks (default: all)")
    im.add_argument("--held-out", type=float, default=0.2, metavar="F",
                    help="fraction of the text kept apart, never used (default 0.2; 0: use everything)")
    im.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    im.add_argument("--process-output", action="store_true", help="also collect the output head (output.weight)")
    _budget_option(im)
    _common(im, threads=True, force=True)
    im.set_defaults(func=cmd_imatrix)
    opt = sub.add_parser("optimize", help="choose a type per tensor for a size budget (least predicted KL divergence)",
                         description="Choose, for every tensor group (one kind in one layer), the allowed type whose "
                                     "blocks fit its rows that minimizes the predicted mean KL divergence within the "
                                     "budget, and write the result as a plan (a preset plus overrides): use it with "
                                     "`convert --plan`, `compare`, or export it as a --tensor-type-file.")
    opt.add_argument("model", help="a .gguf file or a Hugging Face model folder")
    opt.add_argument("--target-size", metavar="SIZE", help="the tensors' bytes: 120MB, 1.5GiB...")
    opt.add_argument("--target-bpw", type=float, metavar="BITS", help="bits per weight over all tensors, e.g. 4.8")
    opt.add_argument("--fit", metavar="SIZE", help="memory the file plus the F16 KV cache at --ctx must fit in")
    opt.add_argument("--ctx", type=_positive_int, metavar="N", help="context length for --fit")
    opt.add_argument("--types", metavar="T1,T2", help="allowed types (default: Q8_0 down to Q2_K)")
    opt.add_argument("--imatrix", metavar="FILE", help="importance matrix: weights the error estimate and the "
                                                       "quantizer")
    opt.add_argument("--text", metavar="FILE", help="calibration text for --measure (its held-out part is never used;"
                                                    " default: the bundled text)")
    opt.add_argument("--measure", action="store_true", help="measure the sensitivity with the engine (cached) instead "
                                                           "of only estimating it")
    opt.add_argument("--candidates", type=_positive_int, default=96, metavar="N",
                     help="measure at most N (group, type) candidates near the budget (default 96)")
    opt.add_argument("-o", "--output", required=True, metavar="FILE", help="the plan to write (.json)")
    _common(opt, force=True)
    opt.set_defaults(func=cmd_optimize)
    ist = sub.add_parser("imatrix-stats", help="per-tensor statistics of an importance matrix (llama-imatrix "
                                               "--show-statistics)",
                         description="Print, per tensor of an importance matrix (.gguf or legacy .dat), what "
                                     "llama-imatrix --show-statistics prints: sum, min, max, mean and deviation of the "
                                     "squared activations, % active, entropy, ZD score, cosine similarity to the "
                                     "previous layer, and the per-layer weighted means.")
    ist.add_argument("file", help="an importance matrix (.gguf or .dat)")
    ist.add_argument("--json", action="store_true", help="print the statistics as JSON")
    from .optimize.imatrix_stats import SORT_KEYS
    ist.add_argument("--sort", choices=SORT_KEYS, metavar="KEY",
                     help="order the rows by KEY (numbers descending): " + ", ".join(SORT_KEYS) +
                          " (default: llama-imatrix's order, by tensor kind then sum)")
    ist.set_defaults(func=cmd_imatrix_stats)
    idk = sub.add_parser("install-desktop", help="add the app to the desktop menu and open .gguf/.safetensors with it",
                         description="Install a .desktop entry, the GGUF and safetensors file types and the icon for "
                                     "the current user (freedesktop.org desktops: Linux, BSD).")
    idk.add_argument("--prefix", help="install under PREFIX/share (default: $XDG_DATA_HOME or ~/.local/share)")
    idk.add_argument("--exec", metavar="COMMAND", help="the command the entry runs (default: this installation's "
                                                       "model-workbench, or the bundle when run from it)")
    idk.add_argument("--no-default", action="store_true",
                     help="register the file types without making the app their default")
    idk.set_defaults(func=cmd_install_desktop)
    udk = sub.add_parser("uninstall-desktop", help="remove what install-desktop installed",
                         description="Remove the .desktop entry, file types and icons install-desktop wrote.")
    udk.add_argument("--prefix", help="the prefix given to install-desktop")
    udk.set_defaults(func=cmd_uninstall_desktop)
    return p


@contextlib.contextmanager
def _warnings_as_lines():
    """Python warnings and library log warnings (gguf-py logs some) raised while a command runs reach the
    user as ``warning: ...`` lines, each once, instead of a source-code excerpt or a logger's format."""
    import logging

    seen: set[str] = set()

    def say(message) -> None:
        text = str(message).strip().replace("\n", " ")
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr)

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            say(record.getMessage())

    root = logging.getLogger()
    handler = Lines(logging.WARNING) if not root.handlers else None  # a program's own logging setup wins
    if handler is not None:
        root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, *a, **kw: say(message)
            yield
    finally:
        if handler is not None:
            root.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE assignments may follow options (SRC -o OUT KEY=VALUE ...), which argparse leaves over
    if getattr(args, "func", None) is cmd_set_metadata and all("=" in e and not e.startswith("-") for e in extra):
        args.assignments = [*args.assignments, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "threads", None):
        from .threads import set_threads

        set_threads(args.threads)
    try:
        with _warnings_as_lines():
            return args.func(args)
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
