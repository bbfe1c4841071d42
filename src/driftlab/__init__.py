"""driftlab: diffusion models unified under EDM, and reinforcement learning from Bellman to LLMs."""

__version__ = "0.1.0"
