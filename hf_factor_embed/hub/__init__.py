"""The Hugging Face Hub side: model cards (:mod:`.card`) and uploads (:mod:`.push`), on ``huggingface_hub``."""
