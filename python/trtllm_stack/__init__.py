"""Build TensorRT-LLM engines, serve them with Triton, talk to them with any OpenAI client."""

__version__ = "0.1.0"
