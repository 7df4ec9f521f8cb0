"""``workbench``: the command line over the same core calls the GUI uses."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Sequence

import numpy as np

from . import __version__
from .errors import WorkbenchError
from .formats import iter_open_model
from .model import MetaEntry, Model
from .progress import TextProgressBar, run
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


def cmd_inspect(args) -> int:
    bar = TextProgressBar()
    try:
        model = run(iter_open_model(args.path), bar)
    finally:
        bar.close()
    if args.json:
        json.dump(model_to_json(model, args.full_arrays), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print_summary(model, max_tensors=None if args.all else 40)
    return 0


def cmd_plan(args) -> int:
    from .plan import Plan

    model = run(iter_open_model(args.path))
    plan = Plan.load(model, args.plan) if args.plan else Plan(model, args.type.upper())
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


def _run_job(job) -> list:
    """Drive a job with a progress bar on stderr; print the written paths on stdout."""
    bar = TextProgressBar()
    last: list[str] = []

    def on_progress(p) -> None:
        bar(p)
        last[:] = [p.message]

    try:
        paths = run(job, on_progress)
    finally:
        bar.close()
    if last and "warning" in last[0].lower():  # e.g. ignored adapter keys, an already quantized source
        print(last[0], file=sys.stderr)
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


def cmd_export(args) -> int:
    from .convert.export import export_hf

    _run_job(export_hf(args.src, args.output, dtype=None if args.dtype == "keep" else args.dtype.upper(),
                       format=args.format, max_shard_size=parse_size(args.max_shard_size), overwrite=args.overwrite))
    return 0


def _is_gguf(path: str) -> bool:
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def cmd_convert(args) -> int:
    from .plan import Plan

    gguf_src = _is_gguf(args.src)
    plan = (args.type or ("Q8_0" if gguf_src else "F16")).upper()
    if args.plan:
        plan = Plan.load(run(iter_open_model(args.src)), args.plan)
    split = dict(split_max_size=parse_size(args.split_max_size) if args.split_max_size else 0,
                 split_max_tensors=args.split_max_tensors or 0)
    if gguf_src:  # GGUF -> GGUF: requantize (a single file or any part of a split set)
        from .convert.requantize import requantize_gguf

        _run_job(requantize_gguf(args.src, args.output, plan, name=args.name, overwrite=args.overwrite, **split))
        return 0
    from .convert.hf_to_gguf import convert_hf_to_gguf

    _run_job(convert_hf_to_gguf(args.src, args.output, plan, name=args.name, overwrite=args.overwrite, **split))
    return 0


def cmd_merge_lora(args) -> int:
    from .convert.lora import merge_lora

    to = "gguf" if args.to == "gguf" or args.type or args.plan or _is_gguf(args.base) else "hf"
    kw: dict = dict(dtype=args.dtype.upper() if args.dtype else None, overwrite=args.overwrite)
    if to == "gguf":
        plan = args.type.upper() if args.type else None
        if args.plan:
            from .plan import Plan

            plan = Plan.load(run(iter_open_model(args.base)), args.plan)
        kw.update(plan_or_preset=plan, name=args.name,
                  split_max_size=parse_size(args.split_max_size) if args.split_max_size else 0,
                  split_max_tensors=args.split_max_tensors or 0)
    _run_job(merge_lora(args.base, args.adapter, args.output, to=to, **kw))
    return 0


def cmd_lora_to_gguf(args) -> int:
    from .convert.lora_gguf import lora_to_gguf

    _run_job(_single(lora_to_gguf(args.adapter, args.output, base=args.base, outtype=args.outtype,
                                  overwrite=args.overwrite)))
    return 0


def _single(job):
    """A job returning one path, as a job returning a list (what _run_job prints)."""
    path = yield from job
    return [path]


def cmd_set_metadata(args) -> int:
    from .convert.metadata_edit import parse_assignment, set_metadata

    assignments = dict(parse_assignment(a) for a in args.assignments)
    _run_job(set_metadata(args.src, args.output, assignments, remove=args.remove or (), overwrite=args.overwrite))
    return 0


def cmd_generate(args) -> int:
    import time

    from .infer.generate import detect_repetition, generate
    from .infer.tokenizer import load_tokenizer
    from .infer.weights import load_engine

    bar = TextProgressBar()
    try:
        model = run(iter_open_model(args.model), bar)
        plan = args.type.upper() if args.type else None
        if args.plan:
            from .plan import Plan

            plan = Plan.load(model, args.plan)
        tokenizer = load_tokenizer(model)
        engine = run(load_engine(model, plan), bar)
    finally:
        bar.close()
    if not hasattr(engine, "start"):
        raise WorkbenchError("this model is an encoder: it makes sentence embeddings, not text", path=model.path,
                             hint="Generate with a llama-family, qwen2 or t5 model.")
    ids: list[int] = []
    t0 = time.perf_counter()
    for tok in generate(engine, tokenizer, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, chat=not args.no_chat):
        ids.append(tok.id)
        sys.stdout.write(tok.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    seconds = time.perf_counter() - t0
    print(f"{len(ids)} tokens in {seconds:.1f} s ({len(ids) / seconds if seconds else 0:.1f} tokens/s)",
          file=sys.stderr)
    if detect_repetition(ids):
        print("warning: the output ends in a repeating loop (try sampling: --temperature 0.8)", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from .infer.compare import compare

    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    text = None
    if args.text:
        try:
            text = Path(args.text).expanduser().read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise WorkbenchError(f"cannot read the calibration text: {exc.strerror}", path=args.text) from None
    bar = TextProgressBar()
    try:
        model = run(iter_open_model(args.model), bar)
        result = run(compare(model, levels, base=args.base, text=text, prompt=None if args.no_generate else args.prompt,
                             n_ctx=args.ctx, max_windows=args.chunks, max_tokens=args.max_tokens,
                             chat=args.chat), bar)
    finally:
        bar.close()
    if args.json:
        print(result.to_json())
    elif args.csv:
        sys.stdout.write(result.to_csv())
    else:
        sys.stdout.write(result.to_markdown())
        if result.kind != "embedding":
            print(f"\n{result.n_tokens_scored} tokens scored in {result.n_windows} windows of {result.n_ctx} "
                  f"(the second half of each), base: {result.base.label} ({result.base.plan})")
    for r in result.levels:
        if r.repetition:
            print(f"warning: {r.label}: the generated text ends in a repeating loop", file=sys.stderr)
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
    pl.set_defaults(func=cmd_plan)
    cv = sub.add_parser("convert", help="convert a Hugging Face folder to GGUF, or requantize a GGUF",
                        description="HF folder (llama, mistral, qwen2, bert, t5) -> GGUF with full metadata and "
                                    "tokenizer, or GGUF -> GGUF (llama-quantize: metadata copied, tensors whose "
                                    "type does not change copied byte for byte); tensors typed by a preset or a "
                                    "saved plan.")
    cv.add_argument("src", help="a Hugging Face model folder, or a .gguf file (any part of a split set)")
    cv.add_argument("-o", "--output", required=True, help="output folder (or a .gguf file name)")
    cv.add_argument("--type", help="preset: F32, F16, BF16, Q8_0, Q4_K_M, ... (default F16 for a Hugging Face "
                                   "folder, Q8_0 for a GGUF)")
    cv.add_argument("--plan", help="a saved plan (JSON) instead of a preset")
    cv.add_argument("--name", help="output file name (default: the GGUF naming convention from the metadata)")
    cv.add_argument("--split-max-size", metavar="SIZE", help="split into shards of at most SIZE (e.g. 2G)")
    cv.add_argument("--split-max-tensors", type=int, metavar="N", help="split into shards of at most N tensors")
    cv.add_argument("--overwrite", action="store_true", help="replace existing output files")
    cv.set_defaults(func=cmd_convert)
    ex = sub.add_parser("export", help="write a Hugging Face folder (safetensors or .bin) from a GGUF or any model",
                        description="GGUF -> HF folder (dequantized, Q/K un-permuted, config and tokenizer rebuilt), "
                                    "or a .bin checkpoint -> safetensors.")
    ex.add_argument("src", help="a model file or folder")
    ex.add_argument("-o", "--output", required=True, help="output folder")
    ex.add_argument("--format", choices=("safetensors", "bin"), default="safetensors")
    ex.add_argument("--dtype", choices=("f32", "f16", "bf16", "keep"), default="f16",
                    help="float type of the written tensors (keep: as stored; quantized ones become f32)")
    ex.add_argument("--max-shard-size", default="5G", help="shard above this size (default 5G)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing export")
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
    ml.add_argument("--to", choices=("safetensors", "gguf"), default="safetensors",
                    help="output format (gguf is implied for a GGUF base or with --type/--plan)")
    ml.add_argument("--dtype", choices=("f32", "f16", "bf16"),
                    help="float type of a safetensors result (default: the base's)")
    ml.add_argument("--type", help="GGUF preset: F16, Q8_0, Q4_K_M, ... (default: F16 for a Hugging Face base; "
                                   "a GGUF base keeps each tensor's type)")
    ml.add_argument("--plan", help="a saved plan (JSON, made on the base) for the GGUF tensor types")
    ml.add_argument("--name", help="GGUF file name (default: the GGUF naming convention)")
    ml.add_argument("--split-max-size", metavar="SIZE", help="split the GGUF into shards of at most SIZE")
    ml.add_argument("--split-max-tensors", type=int, metavar="N", help="split the GGUF into shards of at most N tensors")
    ml.add_argument("--overwrite", action="store_true", help="replace an existing output")
    ml.set_defaults(func=cmd_merge_lora)
    lg = sub.add_parser("lora-to-gguf", help="convert a PEFT LoRA adapter to a GGUF adapter for llama.cpp --lora",
                        description="PEFT LoRA adapter -> GGUF LoRA adapter as llama.cpp's convert_lora_to_gguf.py "
                                    "writes it (lora_a / lora_b per module, llama Q/K permutation, one alpha per "
                                    "file with differing per-module scales folded into lora_b).")
    lg.add_argument("adapter", help="the PEFT adapter folder (adapter_config.json + adapter_model.*)")
    lg.add_argument("-o", "--output", required=True, help="output folder or .gguf file name")
    lg.add_argument("--base", required=True, help="the base model: a Hugging Face folder (config.json) or a .gguf")
    lg.add_argument("--outtype", choices=("f32", "f16", "bf16", "q8_0"), default="f16",
                    help="type of the LoRA tensors (default f16)")
    lg.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    lg.set_defaults(func=cmd_lora_to_gguf)
    sm = sub.add_parser("set-metadata", help="add, change or remove GGUF keys (tensors copied unchanged)",
                        description="Write a copy of a GGUF with metadata edited; tensor data is copied byte for byte.")
    sm.add_argument("src", help="a .gguf file")
    sm.add_argument("-o", "--output", required=True, help="the new .gguf file")
    sm.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                    help="e.g. general.name=\"My Model\", tokenizer.chat_template=@template.jinja, llama.context_length=uint32:8192")
    sm.add_argument("--remove", action="append", metavar="KEY", help="remove a key (repeatable)")
    sm.add_argument("--overwrite", action="store_true", help="replace an existing output file")
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
    gn.set_defaults(func=cmd_generate)
    cp = sub.add_parser("compare", help="compare quantization levels against the base: PPL, KL divergence, texts",
                        description="Score a calibration text (the bundled one by default) with the base and with each "
                                    "level (the second half of each context window, as llama-perplexity "
                                    "--kl-divergence does) and generate from one prompt with every level.")
    cp.add_argument("model", help="a .gguf file or a Hugging Face model folder")
    cp.add_argument("--levels", required=True, help="comma-separated presets or saved plans: F16,Q8_0,Q4_K_M,plan.json")
    cp.add_argument("--base", default="F32", help="the reference level (default F32: the weights as stored)")
    cp.add_argument("--text", metavar="FILE", help="calibration text file (default: the bundled text)")
    cp.add_argument("--prompt", default="The capital of France is", help="prompt every level completes greedily")
    cp.add_argument("--no-generate", action="store_true", help="skip the generation")
    cp.add_argument("--max-tokens", type=int, default=32, metavar="N", help="tokens to generate (default 32)")
    cp.add_argument("--chat", action="store_true", help="apply the chat template to the prompt")
    cp.add_argument("--ctx", type=int, default=512, metavar="N", help="context window (default 512)")
    cp.add_argument("--chunks", type=int, metavar="N", help="score at most N windows")
    fmt = cp.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the full result as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    cp.set_defaults(func=cmd_compare)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE assignments may follow options (SRC -o OUT KEY=VALUE ...), which argparse leaves over
    if getattr(args, "func", None) is cmd_set_metadata and all("=" in e and not e.startswith("-") for e in extra):
        args.assignments = [*args.assignments, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
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
