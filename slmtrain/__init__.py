"""slmtrain: pretrain small GPT-style language models, survive preemption, prove checkpoints sound."""

__version__ = "0.1.0"
