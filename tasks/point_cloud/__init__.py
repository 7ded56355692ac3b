"""3D point-cloud classification: the embedded generated `solids`, ModelNet40, PointNet / PointNet++ / DGCNN."""

from tasks.point_cloud.task import PointCloudConfig, PointCloudTask

__all__ = ["PointCloudConfig", "PointCloudTask"]
