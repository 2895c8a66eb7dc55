"""Text code shared by the proxy and Triton's postprocessing model.

Detokenizer, stop strings, special-token escaping, and the Qwen3 reasoning and tool-call
parsers. Nothing here imports from ``proxy`` or ``triton``.
"""
