"""The five registries.  Built-in names map to the module that registers them (kept in sync by a test)."""

from __future__ import annotations

from benchmark._registry import Registry

TASKS = Registry("task", group="fipbench.tasks", builtin={
    "image_classification": "tasks.image_classification.task",
})

DATASETS = Registry("dataset", group="fipbench.datasets", builtin={
    "digits": "tasks.image_classification.data",
    "mnist5k": "tasks.image_classification.data",
    "cifar10": "tasks.image_classification.real_data",
    "gtsrb": "tasks.image_classification.real_data",
    "tiny_imagenet": "tasks.image_classification.real_data",
    "imagenet": "tasks.image_classification.real_data",
})

MODELS = Registry("model", group="fipbench.models", builtin={
    "small_cnn": "tasks.image_classification.models",
    "preact_resnet18": "tasks.image_classification.models",
})

ATTACKS = Registry("attack", group="fipbench.attacks", builtin={
    "none": "attacks.none",
    "badnets": "attacks.badnets",
    "blend": "attacks.blend",
})

DEFENSES = Registry("defense", group="fipbench.defenses", builtin={
    "none": "defenses.none",
    "finetune": "defenses.finetune",
    "fip": "defenses.fip",
    "fast_fip": "defenses.fip",
})

ALL = {"tasks": TASKS, "datasets": DATASETS, "models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES}
