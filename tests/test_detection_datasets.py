"""The real object-detection loaders (PASCAL VOC 2007/2012, MS-COCO 2017) on tiny fixtures written in each
dataset's official on-disk format: split sizes, class ids, exact box conversion, difficult / crowd handling,
lazily decoded images, and one-line errors for missing or malformed files.  Runs in a few seconds."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from _helpers import one_line_error
from tasks.object_detection.real_data import VOC_CLASSES, load_coco2017, load_voc2007, load_voc2012


pytestmark = pytest.mark.usefixtures("no_env_root")  # loaders must not see a real $FIPBENCH_DATA


def jpeg(path, size, color=(200, 30, 30), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path, quality=95)


# -- PASCAL VOC ----------------------------------------------------------------------------------------------
def voc_object(name, box, difficult=0, parts="") -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>{parts}</object>")


# id -> objects; 000003 holds only a difficult object, so its target ends up empty
VOC_OBJECTS = {
    "000001": [voc_object("dog", (8, 3, 40, 30)),
               voc_object("person", (1, 1, 20, 32),  # a VOC2012-style person layout: its part box is no object
                          parts="<part><name>head</name><bndbox><xmin>5</xmin><ymin>2</ymin><xmax>9</xmax>"
                                "<ymax>7</ymax></bndbox></part>")],
    "000002": [voc_object("aeroplane", (2, 4, 30.5, 20)), voc_object("tvmonitor", (10, 10, 12, 12), difficult=1),
               voc_object("bicycle", (5, 6, 7, 8))],
    "000003": [voc_object("cat", (3, 3, 10, 10), difficult=1)],
    "000004": [voc_object("sheep", (1, 1, 48, 32))],
}


def write_voc(root, year: int, splits: dict[str, list[str]]):
    base = root / "VOCdevkit" / f"VOC{year}"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for k, (i, objects) in enumerate(VOC_OBJECTS.items()):
        jpeg(base / "JPEGImages" / f"{i}.jpg", (48, 32), mode="L" if k == 3 else "RGB")  # one grey-scale JPEG
        (base / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><folder>VOC{year}</folder><filename>{i}.jpg</filename>"
            f"<source><database>The VOC{year} Database</database><annotation>PASCAL VOC{year}</annotation>"
            f"</source><size><width>48</width><height>32</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{''.join(objects)}</annotation>\n")
    for split, ids in splits.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return base


VOC07_SPLITS = {"trainval": ["000001", "000002", "000004"], "test": ["000003"]}


def test_voc2007_splits_classes_and_boxes(tmp_path):
    write_voc(tmp_path, 2007, VOC07_SPLITS)
    d = load_voc2007(tmp_path)
    assert load_voc2007.task == "object_detection" and d.image_size is None
    assert len(d.train) == 3 and len(d.test) == 1
    assert d.classes == VOC_CLASSES and d.num_classes == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[19] == "tvmonitor"
    t = d.train.labels  # 1-based inclusive -> 0-based xyxy (x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax)
    assert t[0]["labels"].tolist() == [11, 14] and t[0]["labels"].dtype == torch.int64  # dog, person
    assert t[0]["boxes"].tolist() == [[7, 2, 40, 30], [0, 0, 20, 32]] and t[0]["boxes"].dtype == torch.float32
    assert t[1]["labels"].tolist() == [0, 1]  # aeroplane, bicycle: the difficult tvmonitor is skipped
    assert t[1]["boxes"].tolist() == [[1, 3, 30.5, 20], [4, 5, 7, 8]]
    assert t[2]["labels"].tolist() == [16] and t[2]["boxes"].tolist() == [[0, 0, 48, 32]]
    empty = d.test.labels[0]  # only a difficult object: the image is kept with an empty target
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert d.test[0].y is empty and d.train[1].index == 1


def test_voc_images_are_decoded_lazily(tmp_path):
    base = write_voc(tmp_path, 2007, VOC07_SPLITS)
    d = load_voc2007(tmp_path)
    x = d.train[2].x  # 000004, a grey-scale JPEG: converted to RGB
    assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x[0], x[2]) and abs(x[0].mean().item() - 200 / 255) < 0.02
    r = d.train[0].x
    assert r.shape == (3, 32, 48) and torch.allclose(r.mean(dim=(1, 2)), torch.tensor([200, 30, 30]) / 255,
                                                     atol=0.02)
    for f in (base / "JPEGImages").iterdir():  # targets were read up front: labels need no image at all
        f.unlink()
    assert [len(t["labels"]) for t in d.train.labels] == [2, 2, 1]
    msg = one_line_error(lambda: d.train[0])  # a file gone after loading fails when read, naming it
    assert "cannot decode image" in msg and "000001.jpg" in msg


def test_voc2012_uses_train_and_val(tmp_path):
    write_voc(tmp_path, 2012, {"train": ["000001"], "val": ["000002", "000004"], "trainval": ["000003"]})
    d = load_voc2012(tmp_path)
    assert load_voc2012.task == "object_detection"
    assert len(d.train) == 1 and len(d.test) == 2
    assert d.test.labels[1]["labels"].tolist() == [16]
    # no VOC2007 there
    assert "VOCdevkit/VOC2007/ImageSets/Main/trainval.txt not found" in one_line_error(load_voc2007, tmp_path)


def test_voc_errors_are_one_line_and_name_the_files(tmp_path, monkeypatch):
    msg = one_line_error(load_voc2007, None)
    assert "<root>/VOCdevkit/VOC2007/Annotations/<id>.xml" in msg and "trainval.txt" in msg
    assert "--data-root" in msg and "FIPBENCH_DATA" in msg and "VOCtest_06-Nov-2007.tar" in msg
    base = write_voc(tmp_path, 2007, VOC07_SPLITS)
    monkeypatch.setenv("FIPBENCH_DATA", str(tmp_path))
    assert len(load_voc2007(None).train) == 3  # the environment variable is the fallback root
    (base / "ImageSets" / "Main" / "test.txt").unlink()
    msg = one_line_error(load_voc2007, tmp_path)
    assert "ImageSets/Main/test.txt not found" in msg and "JPEGImages/<id>.jpg" in msg
    (base / "ImageSets" / "Main" / "test.txt").write_text("000003\n000009\n")  # an id without an image
    assert "JPEGImages/000009.jpg not found" in one_line_error(load_voc2007, tmp_path)
    (base / "ImageSets" / "Main" / "test.txt").write_text("000003\n")
    xml = base / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text()[:150])  # truncated
    msg = one_line_error(load_voc2007, tmp_path)
    assert "Annotations/000002.xml is malformed" in msg and "ParseError" in msg
    xml.write_text(f"<annotation>{voc_object('unicorn', (1, 1, 5, 5))}</annotation>")
    assert "'unicorn' is not one of the 20 VOC classes" in one_line_error(load_voc2007, tmp_path)
    xml.write_text("<annotation><object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object></annotation>")
    assert "want <bndbox> with xmin" in one_line_error(load_voc2007, tmp_path)
    xml.unlink()
    assert "Annotations/000002.xml not found" in one_line_error(load_voc2007, tmp_path)


# -- MS-COCO 2017 --------------------------------------------------------------------------------------------
# Non-contiguous category ids, listed out of order: sorted by id they become 0 (person), 1 (car), 2 (toothbrush).
COCO_CATEGORIES = [{"supercategory": "indoor", "id": 90, "name": "toothbrush"},
                   {"supercategory": "person", "id": 1, "name": "person"},
                   {"supercategory": "vehicle", "id": 3, "name": "car"}]


def coco_ann(aid, image_id, cat, bbox, iscrowd=0) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": iscrowd,
            "area": bbox[2] * bbox[3], "segmentation": [[0, 0, 1, 0, 1, 1]]}


def write_coco(root) -> None:
    """train2017: images 9, 2, 5 (listed out of order; 5 has no annotations); val2017: image 7."""
    splits = {
        "train2017": ([(9, 40, 30), (2, 24, 16), (5, 20, 20)],
                      [coco_ann(1, 9, 3, [10.5, 4, 20, 8.25]),
                       coco_ann(2, 9, 1, [0, 0, 5, 5], iscrowd=1),  # a crowd region: dropped
                       coco_ann(3, 2, 90, [1, 2, 3, 4]),
                       coco_ann(4, 2, 1, [6, 6, 0.5, 3]),  # narrower than 1 px: dropped
                       coco_ann(5, 9, 1, [3, 1, 7, 9])]),
        "val2017": ([(7, 32, 24)], [coco_ann(6, 7, 90, [2, 2, 10, 10])]),
    }
    (root / "coco" / "annotations").mkdir(parents=True)
    for split, (images, anns) in splits.items():
        for iid, w, h in images:
            jpeg(root / "coco" / split / f"{iid:012d}.jpg", (w, h), color=(30, 200, 30))
        doc = {"info": {"year": 2017}, "licenses": [], "categories": COCO_CATEGORIES, "annotations": anns,
               "images": [{"id": iid, "file_name": f"{iid:012d}.jpg", "width": w, "height": h}
                          for iid, w, h in images]}
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))


def test_coco2017_ids_boxes_and_crowds(tmp_path):
    write_coco(tmp_path)
    d = load_coco2017(tmp_path)
    assert load_coco2017.task == "object_detection" and d.image_size is None
    assert d.classes == ("person", "car", "toothbrush") and len(d.train) == 3 and len(d.test) == 1
    t = d.train.labels  # image-id order: 2, 5, 9
    assert t[0]["labels"].tolist() == [2] and t[0]["boxes"].tolist() == [[1, 2, 4, 6]]  # the 0.5 px box is gone
    assert t[1]["boxes"].shape == (0, 4) and t[1]["labels"].shape == (0,)  # kept without annotations
    assert t[2]["labels"].tolist() == [1, 0]  # car, person; the crowd person is gone
    assert t[2]["boxes"].tolist() == [[10.5, 4, 30.5, 12.25], [3, 1, 10, 10]]  # [x, y, w, h] -> xyxy
    assert t[2]["boxes"].dtype == torch.float32 and t[2]["labels"].dtype == torch.int64
    assert d.test.labels[0]["labels"].tolist() == [2]
    x = d.train[2].x  # image 9 is 40 wide, 30 high
    assert x.shape == (3, 30, 40) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor([30, 200, 30]) / 255, atol=0.02)
    for f in (tmp_path / "coco" / "train2017").iterdir():
        f.unlink()
    assert len(d.train.labels[2]["labels"]) == 2  # labels need no image


def test_coco2017_errors_are_one_line_and_name_the_files(tmp_path):
    msg = one_line_error(load_coco2017, None)
    assert "<root>/coco/annotations/instances_train2017.json" in msg and "--data-root" in msg
    write_coco(tmp_path)
    ann = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    good = ann.read_text()
    ann.unlink()
    assert "annotations/instances_val2017.json not found" in one_line_error(load_coco2017, tmp_path)
    ann.write_text(good[:100])  # truncated
    msg = one_line_error(load_coco2017, tmp_path)
    assert "instances_val2017.json is malformed" in msg and "JSONDecodeError" in msg
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    assert "missing key 'categories'" in one_line_error(load_coco2017, tmp_path)
    doc = json.loads(good)
    doc["annotations"][0]["category_id"] = 2
    ann.write_text(json.dumps(doc))
    assert "unknown image_id 7 or category_id 2" in one_line_error(load_coco2017, tmp_path)
    doc["annotations"][0]["category_id"], doc["categories"] = 1, COCO_CATEGORIES[1:]
    ann.write_text(json.dumps(doc))
    assert "categories of instances_val2017.json differ" in one_line_error(load_coco2017, tmp_path)
    ann.write_text(good)
    (tmp_path / "coco" / "val2017" / "000000000007.jpg").unlink()
    assert "val2017/000000000007.jpg not found" in one_line_error(load_coco2017, tmp_path)


@pytest.mark.parametrize("dataset", ["voc2007", "coco2017"])
def test_real_format_data_through_the_task_and_every_baddet_attack(tmp_path, dataset):
    """The real loaders' samples (no fixed image_size; COCO's of differing sizes) go through the task: each
    BadDet attack poisons them, a detector trains a step, and mAP and ASR come out; a trigger larger than an
    image is a one-line error, not a torch crash."""
    from benchmark.errors import FipbenchError
    from benchmark.registries import ATTACKS
    from benchmark.rng import generator
    from tasks.base import FitConfig
    from tasks.object_detection import ObjectDetectionConfig, ObjectDetectionTask

    if dataset == "voc2007":
        write_voc(tmp_path, 2007, {"trainval": ["000001", "000002", "000004", "000003"], "test": ["000001", "000002"]})
    else:
        write_coco(tmp_path)
    task = ObjectDetectionTask(dataset, ObjectDetectionConfig(holdout_fraction=0.25), data_root=tmp_path)
    splits = task.splits()
    if dataset == "coco2017":
        assert len({tuple(s.x.shape) for s in [*splits.train, *splits.test]}) > 1  # sizes differ
    model = task.build_model("small_fcos", generator(0, "init"))
    for name in ("baddet_oga", "baddet_rma", "baddet_gma", "baddet_oda"):
        cls = ATTACKS.get(name)
        attack = cls(cls.Config(trigger_size=6, poison_rate=1.0), seed=0)
        poisoned = attack.poison(task, splits.train)
        assert poisoned.indices, name
        task.fit(model, poisoned, FitConfig(steps=1, batch_size=2, lr=1e-3, optimizer="adam", weight_decay=0.0),
                 generator=generator(0, "fit", name))
        triggered, clean = attack.triggered_test(task, splits.test)
        assert 0 <= task.metrics(model, splits.test)[task.metric_name] <= 1
        assert 0 <= task.backdoor_metrics(model, triggered, clean)["asr"] <= 1
        huge = cls(cls.Config(trigger_size=400, poison_rate=1.0), seed=0).poison(task, splits.train)
        with pytest.raises(FipbenchError, match="smaller than the 400 px trigger; lower the attack's trigger_size"):
            [huge[i] for i in huge.indices]
