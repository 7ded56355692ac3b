"""Image classification: the embedded `digits` dataset, small CNN and PreActResNet-18."""

from tasks.image_classification.task import ImageClassificationConfig, ImageClassificationTask

__all__ = ["ImageClassificationConfig", "ImageClassificationTask"]
