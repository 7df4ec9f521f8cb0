"""Test inference: one data-driven decoder engine (llama, mistral, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3),
bert and t5 engines, tokenizers, generation and the comparison of quantization levels.  Submodules are imported
explicitly (``workbench.infer.decoder``...)."""
