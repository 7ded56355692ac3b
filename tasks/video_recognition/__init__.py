"""Video action recognition: the embedded generated `motions` clips, UCF-101 / HMDB-51, 3D CNNs."""

from tasks.video_recognition.task import VideoRecognitionConfig, VideoRecognitionTask

__all__ = ["VideoRecognitionConfig", "VideoRecognitionTask"]
