"""pytest-vllmcompat: prove a vLLM generation backend works on every vLLM release it supports."""

__version__ = "0.1.0"
