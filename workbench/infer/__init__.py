"""Test inference: a numpy engine for llama-family, qwen2, bert and t5 models, tokenizers, generation and
the comparison of quantization levels.  Submodules are imported explicitly (``workbench.infer.llama``...)."""
