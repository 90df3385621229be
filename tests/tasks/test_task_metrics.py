"""The tasks' meters on hand-made tensors: mIoU (ignore index, absent classes), label accuracy, top-k."""

from __future__ import annotations

import pytest
import torch

from cafeslim.metrics import measure, topk_accuracy
from cafeslim.tasks import get_task


def _onehot_logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """Logits ``[N, C, H, W]`` whose argmax is ``pred`` ``[N, H, W]``."""
    return torch.nn.functional.one_hot(pred, classes).movedim(-1, 1).float()


def test_miou_by_hand_with_ignored_pixels_and_absent_classes():
    # 4 classes; class 3 appears in neither target nor prediction: it must not be averaged.
    target = torch.tensor([[[0, 0, 1, 1],
                            [0, 2, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1],
                          [0, 2, 0, 3]]])   # the 3 sits on an ignored pixel: not counted
    m = get_task("segmentation").meter()
    m.update({"out": _onehot_logits(pred, 4)}, target)
    # class 0: TP 2 (pixels (0,0),(1,0)), FP 1 ((1,2)), FN 1 ((0,1)) -> 2/4
    # class 1: TP 2, FP 1 ((0,1)), FN 0 -> 2/3;  class 2: TP 1, FN 1 -> 1/2
    expected = (2 / 4 + 2 / 3 + 1 / 2) / 3
    values = m.compute()
    assert values["miou"] == pytest.approx(expected)
    assert values["pixel_acc"] == pytest.approx(5 / 7)
    assert m.count == 1


def test_miou_accumulates_one_confusion_matrix_over_batches():
    """mIoU of two batches is not the mean of the two batches' mIoUs."""
    t1, p1 = torch.tensor([[[0, 0, 0, 1]]]), torch.tensor([[[0, 0, 0, 0]]])
    t2, p2 = torch.tensor([[[1, 1, 1, 1]]]), torch.tensor([[[1, 1, 1, 1]]])
    m = get_task("segmentation").meter()
    m.update(_onehot_logits(p1, 2), t1)
    m.update(_onehot_logits(p2, 2), t2)
    # whole: class 0 TP 3 FP 1 -> 3/4; class 1 TP 4 FN 1 -> 4/5
    assert m.compute()["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    single = [get_task("segmentation").meter() for _ in range(2)]
    single[0].update(_onehot_logits(p1, 2), t1)
    single[1].update(_onehot_logits(p2, 2), t2)
    assert m.compute()["miou"] != pytest.approx(sum(s.compute()["miou"] for s in single) / 2)


def test_miou_of_a_lower_resolution_prediction_is_taken_at_the_mask_size():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, :, 0] = 5.0   # left half class 0, right half class 1: bilinearly upsampled
    logits[0, 1, :, 1] = 5.0   # to 4 columns, the columns are 0, 0, 1, 1
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :, 2:] = 1
    m = get_task("segmentation").meter()
    m.update(logits, target)
    assert m.compute() == {"miou": pytest.approx(1.0), "pixel_acc": pytest.approx(1.0)}


def test_miou_of_only_ignored_pixels_is_nan_and_a_class_beyond_the_head_fails():
    from cafeslim.errors import DataError

    m = get_task("segmentation").meter()
    m.update(torch.zeros(1, 2, 1, 2), torch.full((1, 1, 2), 255))
    assert m.compute()["miou"] != m.compute()["miou"]  # NaN: nothing to score
    with pytest.raises(DataError, match="class 5"):
        m.update(torch.zeros(1, 2, 1, 1), torch.tensor([[[5]]]))


def test_mean_label_accuracy_and_exact_match_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5],
                           [-3.0, -1.0, 4.0],
                           [1.0, 1.0, -1.0],
                           [0.0, 2.0, 2.0]])          # 0.0 is "absent" (> 0 is present)
    target = torch.tensor([[1, 0, 1],
                           [0, 1, 1],
                           [1, 1, 0],
                           [1, 1, 1]])
    m = get_task("multilabel").meter()
    m.update(logits[:2], target[:2])
    m.update(logits[2:], target[2:])
    # label 0: 3 of 4 right; label 1: 3 of 4; label 2: 4 of 4
    values = m.compute()
    assert values["label_acc"] == pytest.approx((3 / 4 + 3 / 4 + 4 / 4) / 3)
    assert values["exact_match"] == pytest.approx(2 / 4)
    assert m.count == 4


def test_topk_meter_is_the_top1_top5_count_of_train_and_eval():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.2],
                           [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.2],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    labels = torch.tensor([1, 6, 0])    # hit, in the top 5, outside the top 5
    m = get_task("classification").meter()
    m.update((logits, torch.zeros(3)), labels)   # a tuple output counts its first element
    assert m.compute() == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3)}
    assert topk_accuracy(torch.nn.Identity(), [(logits, labels)]) == (1 / 3, 2 / 3, 3)
    assert measure(torch.nn.Identity(), [], "segmentation")[1] == 0


def test_every_metric_is_in_unit_interval_on_random_outputs():
    g = torch.Generator().manual_seed(0)
    cases = {"classification": (torch.randn(16, 10, generator=g), torch.randint(0, 10, (16,), generator=g)),
             "segmentation": (torch.randn(4, 5, 6, 6, generator=g), torch.randint(0, 5, (4, 6, 6), generator=g)),
             "multilabel": (torch.randn(16, 4, generator=g), torch.randint(0, 2, (16, 4), generator=g))}
    for name, (out, y) in cases.items():
        task = get_task(name)
        m = task.meter()
        m.update(out, y)
        values = m.compute()
        assert list(values) == list(task.metrics) and task.metric == task.metrics[0]
        assert all(0.0 <= v <= 1.0 for v in values.values()), (name, values)
