"""Task adapters: one package per ML task behind `tasks.base.Task`."""

from tasks.base import Batch, FitConfig, FitResult, Hook, Sample, Splits, Task, TaskConfig

__all__ = ["Batch", "FitConfig", "FitResult", "Hook", "Sample", "Splits", "Task", "TaskConfig"]
