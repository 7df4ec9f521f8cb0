"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``)."""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import FormatError, MissingFileError, short
from ..model import MetaEntry, Model
from . import hf
from . import safetensors as st_fmt

# Keys the PEFT LoraConfig of any recent release knows; others are shown with a note (newer PEFT
# versions add keys such as loftq_config, megatron_config, megatron_core that older loaders reject).
KNOWN_LORA_KEYS = {
    "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "r", "lora_alpha",
    "lora_dropout", "target_modules", "fan_in_fan_out", "bias", "modules_to_save", "init_lora_weights",
    "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora",
    "auto_mapping",
}


def read_adapter(folder: Path) -> Model:
    cfg_path = folder / "adapter_config.json"
    cfg = hf.load_json(cfg_path)
    if not isinstance(cfg, dict):
        raise FormatError("adapter_config.json is not a JSON object", path=cfg_path)
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        tensors, st_meta = st_fmt.read_header(weights)
    else:
        weights = folder / "adapter_model.bin"
        if not weights.is_file():
            raise MissingFileError("adapter_config.json is here but adapter_model.safetensors (or .bin) is missing",
                                   path=folder)
        from .torchbin import read_bin

        tensors, _ = read_bin(weights)
        st_meta = {}
    groups = hf.folder_metadata(folder)
    summary = adapter_summary(cfg, [t.name for t in tensors])
    groups["adapter"] = summary
    groups.move_to_end("adapter", last=False)
    if st_meta:
        groups["safetensors"] = [MetaEntry(k, "string", v) for k, v in st_meta.items()]
    peft_type = cfg.get("peft_type", "LORA")
    peft_type = short(peft_type, 40) if isinstance(peft_type, str) else "LORA"
    model = Model("peft", folder, [cfg_path, weights], tensors, groups, f"{peft_type} adapter",
                  name=folder.name)
    extra = sorted(k for k in cfg if k not in KNOWN_LORA_KEYS)
    if extra:
        listed = ", ".join(short(k, 40) for k in extra[:12]) + (f" and {len(extra) - 12} more" if len(extra) > 12 else "")
        model.warnings.append("adapter_config.json has keys older PEFT releases reject: " + listed)
    return model


def lora_scale(cfg: dict) -> float | None:
    """lora_alpha / r (or / sqrt(r) with rsLoRA); None when either is missing, not a number or out of range."""
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, (int, float)) or not isinstance(alpha, (int, float)) or isinstance(r, bool) or r <= 0:
        return None
    try:
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    except (OverflowError, ValueError):  # integers too big for a float
        return None
    return scale if math.isfinite(scale) else None


def adapter_summary(cfg: dict, names: list[str]) -> list[MetaEntry]:
    out = [MetaEntry("peft_type", "string", cfg.get("peft_type", "?"))]
    for key in ("base_model_name_or_path", "task_type", "r", "lora_alpha", "use_rslora", "target_modules",
                "modules_to_save"):
        if key in cfg:
            out.append(MetaEntry(key, hf.json_type(cfg[key]), cfg[key]))
    scale = lora_scale(cfg)
    if scale is not None:
        out.append(MetaEntry("scale", "float", scale, "lora_alpha / sqrt(r)" if cfg.get("use_rslora") else "lora_alpha / r"))
    pairs = sum(1 for n in names if ".lora_A." in n or n.endswith(".lora_A.weight"))
    out.append(MetaEntry("LoRA pairs", "int", pairs))
    return out
