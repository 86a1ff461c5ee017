"""OpenSIR: self-play reinforcement learning of LLM reasoners, on one machine or on Kubernetes."""

__version__ = "0.1.0"
