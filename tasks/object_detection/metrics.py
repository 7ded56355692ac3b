"""Detection metrics: clean mAP (torchmetrics, COCO protocol via pycocotools) and the BadDet attack metrics.

Predictions and targets are lists of dicts with 0-based class ids: predictions {"boxes" [M,4], "scores" [M],
"labels" [M]}, targets {"boxes" [N,4], "labels" [N]} (xyxy pixels).

ASR (Chan et al., BadDet, 2022; the thresholds of that paper's evaluation): a triggered image's target dict
carries the objects the attack is about, `asr_boxes` [A,4] / `asr_labels` [A], and `asr_kind`:
- "appear" (object generation, regional and global misclassification): an attacked object counts as a success
  when some detection with score >= 0.5 has the attacker's label and IoU >= 0.5 with its box;
- "vanish" (object disappearance): an attacked object counts as a success when NO detection with score >= 0.5
  of its own (true) label has IoU >= 0.5 with its box.
ASR is successes over attacked objects, pooled over the triggered test images.  RA (robust accuracy): the share
of the clean ground-truth objects of the triggered images that are still detected with their true label under
the same thresholds (recall at score 0.5, IoU 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

SCORE, IOU = 0.5, 0.5


def mean_average_precision(preds: Sequence[dict[str, torch.Tensor]],
                           targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """{"map50": mAP at IoU 0.5, "map": COCO mAP averaged over IoU 0.5:0.95}, both in [0, 1]."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    metric.update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds],
                  [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    out = metric.compute()
    # torchmetrics reports -1 when there is no ground truth at all; that is 0 detections of nothing.
    return {"map50": max(0.0, float(out["map_50"])), "map": max(0.0, float(out["map"]))}


def _found(pred: dict[str, torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] bool: object n has a detection with score >= SCORE, label labels[n] and IoU >= IOU with boxes[n]."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.bool)
    keep = pred["scores"] >= SCORE
    p_boxes, p_labels = pred["boxes"][keep], pred["labels"][keep]
    if len(p_boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    match = (box_iou(boxes, p_boxes) >= IOU) & (labels[:, None] == p_labels[None, :])  # [N,M]
    return match.any(dim=1)


def backdoor_rates(preds: Sequence[dict[str, torch.Tensor]], triggered: Sequence[dict[str, torch.Tensor]],
                   clean: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
    """{"asr", "ra"} as defined in the module docstring; `triggered[i]` is the triggered target of `clean[i]`."""
    hits = attacked = kept = objects = 0
    for pred, t, c in zip(preds, triggered, clean):
        found = _found(pred, t["asr_boxes"], t["asr_labels"])
        hits += int(found.sum() if t["asr_kind"] == "appear" else (~found).sum())
        attacked += len(found)
        kept += int(_found(pred, c["boxes"], c["labels"]).sum())
        objects += len(c["boxes"])
    return {"asr": hits / max(1, attacked), "ra": kept / max(1, objects)}
