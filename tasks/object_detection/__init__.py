"""Object detection: the embedded `shapes` scenes, VOC and COCO loaders, torchvision detectors, BadDet metrics."""

from tasks.object_detection.task import ObjectDetectionConfig, ObjectDetectionTask

__all__ = ["ObjectDetectionConfig", "ObjectDetectionTask"]
