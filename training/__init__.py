"""TMBRB training: train, export, evaluate a TMBRB model on a user's own cohort.

Crops come from TMBRBLib.crop, the network from TMBRBLib.model, the bundle from TMBRBLib.bundle, and evaluation
runs through TMBRBLib.pipeline: training and inference share one code path for everything the model sees.
Command line: ``python -m training {train,export,evaluate,ood-summary,bench,phantoms,demo} ...``.
"""

__all__ = ["TrainConfig", "train", "export_bundle", "evaluate"]


def __getattr__(name):
    if name in ("TrainConfig", "train"):
        from . import trainer
        return getattr(trainer, name)
    if name == "export_bundle":
        from .export import export_bundle
        return export_bundle
    if name == "evaluate":
        from .evaluate import evaluate
        return evaluate
    raise AttributeError(name)
