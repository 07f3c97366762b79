"""Exceptions raised when a model or a checkpoint cannot be factorized or loaded as asked."""


class FactorEmbedError(ValueError):
    """Base class: the request cannot be honoured; the message says why and what to do instead."""


class UnsupportedModelError(FactorEmbedError):
    """No adapter knows where this model keeps its embeddings."""


class AlreadyPatchedError(FactorEmbedError):
    """The model's embeddings are factorized already."""


class CheckpointError(FactorEmbedError):
    """A factorized checkpoint is incomplete, damaged or does not match its config."""
