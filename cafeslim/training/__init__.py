"""Training the result of a search (or any model) to the accuracy a user quotes.

* :mod:`.recipe` — optimizer, per-step schedule, loss, mixup/CutMix, weight EMA;
* :mod:`.init` — ``--init scratch``: the family's own initialisation at the searched widths;
* :mod:`.distill` — knowledge distillation from a teacher;
* :mod:`.loop` — :func:`train`, the epoch loop with checkpoints, exact resume and progress;
* :mod:`.outcome` — each epoch's record (the task's holdout and test metrics) and the outcome;
* :mod:`.target`, :mod:`.run`, :mod:`.report` — ``cafeslim train TARGET``'s folder.

Example:
    >>> from cafeslim.training import train                                # doctest: +SKIP
    >>> out = train(small, data, RetrainConfig(epochs=10), out_dir="train")  # doctest: +SKIP
"""

from .loop import TrainOutcome, train

__all__ = ["TrainOutcome", "train"]
