"""The five registries.  Built-in names map to the module that registers them (kept in sync by a test)."""

from __future__ import annotations

from benchmark._registry import Registry

TASKS = Registry("task", group="fipbench.tasks", builtin={
    "image_classification": "tasks.image_classification.task",
    "object_detection": "tasks.object_detection.task",
    "video_recognition": "tasks.video_recognition.task",
    "point_cloud": "tasks.point_cloud.task",
    "language_generation": "tasks.language_generation.task",
})

DATASETS = Registry("dataset", group="fipbench.datasets", builtin={
    "digits": "tasks.image_classification.data",
    "mnist5k": "tasks.image_classification.data",
    "cifar10": "tasks.image_classification.real_data",
    "gtsrb": "tasks.image_classification.real_data",
    "tiny_imagenet": "tasks.image_classification.real_data",
    "imagenet": "tasks.image_classification.real_data",
    "shapes": "tasks.object_detection.data",
    "voc2007": "tasks.object_detection.real_data",
    "voc2012": "tasks.object_detection.real_data",
    "coco2017": "tasks.object_detection.real_data",
    "motions": "tasks.video_recognition.data",
    "ucf101": "tasks.video_recognition.real_data",
    "hmdb51": "tasks.video_recognition.real_data",
    "solids": "tasks.point_cloud.data",
    "modelnet40": "tasks.point_cloud.real_data",
    "toy_mt": "tasks.language_generation.data",
    "wmt14_en_de": "tasks.language_generation.real_data",
    "opensubtitles2012": "tasks.language_generation.real_data",
})

MODELS = Registry("model", group="fipbench.models", builtin={
    "small_cnn": "tasks.image_classification.models",
    "preact_resnet18": "tasks.image_classification.models",
    "resnet18": "tasks.image_classification.models",
    "resnet50": "tasks.image_classification.models",
    "vgg16_bn": "tasks.image_classification.models",
    "mobilenet_v2": "tasks.image_classification.models",
    "deit_tiny": "tasks.image_classification.models",
    "small_fcos": "tasks.object_detection.models",
    "ssd300_vgg16": "tasks.object_detection.models",
    "fasterrcnn_mobilenet_v3_large_fpn": "tasks.object_detection.models",
    "fcos_resnet50_fpn": "tasks.object_detection.models",
    "small_c3d": "tasks.video_recognition.models",
    "r3d_18": "tasks.video_recognition.models",
    "r2plus1d_18": "tasks.video_recognition.models",
    "mc3_18": "tasks.video_recognition.models",
    "small_pointnet": "tasks.point_cloud.models",
    "pointnet": "tasks.point_cloud.models",
    "pointnet2_ssg": "tasks.point_cloud.models",
    "dgcnn": "tasks.point_cloud.models",
    "small_marian": "tasks.language_generation.models",
    "marian_base": "tasks.language_generation.models",
})

ATTACKS = Registry("attack", group="fipbench.attacks", builtin={
    "none": "attacks.none",
    "badnets": "attacks.badnets",
    "blend": "attacks.blend",
    "trojan": "attacks.trojan",
    "sig": "attacks.sig",
    "lf": "attacks.lf",
    "cba": "attacks.cba",
    "wanet": "attacks.wanet",
    "bpp": "attacks.bpp",
    "input_aware": "attacks.input_aware",
    "lira": "attacks.lira",
    "clb": "attacks.clb",
    "issba": "attacks.issba",
    "ssba": "attacks.issba",  # BackdoorBench's name for ISSBA: the same attack
    "fba": "attacks.fba",
    "baddet_oga": "attacks.baddet_oga",
    "baddet_rma": "attacks.baddet_rma",
    "baddet_gma": "attacks.baddet_gma",
    "baddet_oda": "attacks.baddet_oda",
    "clean_label_video": "attacks.clean_label_video",
    "pointba_i": "attacks.pointba_i",
    "pointba_o": "attacks.pointba_o",
    "pcba": "attacks.pcba",
    "trigger_words": "attacks.trigger_words",
})

DEFENSES = Registry("defense", group="fipbench.defenses", builtin={
    "none": "defenses.none",
    "finetune": "defenses.finetune",
    "fip": "defenses.fip",
    "fast_fip": "defenses.fip",
    "fine_pruning": "defenses.fine_pruning",
    "nad": "defenses.nad",
    "clp": "defenses.clp",
    "ft_sam": "defenses.ft_sam",
    "awm": "defenses.awm",
    "anp": "defenses.anp",
    "rnp": "defenses.rnp",
    "i_bau": "defenses.i_bau",
    "sau": "defenses.sau",
    "neural_cleanse": "defenses.neural_cleanse",
})

# Where cells execute (benchmark/executors): in this process, in worker processes, or on a Ray cluster.
EXECUTORS = Registry("executor", group="fipbench.executors", builtin={
    "local": "benchmark.executors.local",
    "processes": "benchmark.executors.processes",
    "ray": "benchmark.executors.ray",
})

ALL = {"tasks": TASKS, "datasets": DATASETS, "models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES,
       "executors": EXECUTORS}
