"""sqltune: reproducible QLoRA fine-tuning of open LLMs for text-to-SQL."""

__version__ = "0.1.0"
