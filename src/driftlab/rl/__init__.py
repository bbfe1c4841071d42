"""Reinforcement learning, from the Bellman equation to language models."""
