"""hf-pipeline: the ChatGPT training pipeline on the Hugging Face stack, one thin stage per step.

Each stage lives in its own module and exposes ``run(config) -> Path``; ``hf_pipeline.config`` holds the
dataclasses that configure them and ``hf_pipeline.cli`` the ``hf-pipeline`` command.
"""

__version__ = "0.1.0"
