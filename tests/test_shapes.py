import numpy as np

from core.config import DataConfig
from core.data import build_datasets
from core.data.shapes import COLOURS, COLOUR_NAMES, SHAPES, ShapesSpec, generate

SPEC = ShapesSpec(train_per_class=3, test_per_class=2)


def test_deterministic_by_seed():
    a, b = generate(SPEC, "train"), generate(SPEC, "train")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    c = generate(ShapesSpec(train_per_class=3, test_per_class=2, seed=1), "train")
    assert not np.array_equal(a.images, c.images)


def test_classes_are_unseen_combinations_of_seen_attributes():
    train, test = generate(SPEC, "train"), generate(SPEC, "test")
    assert len(SHAPES) >= 8 and len(COLOURS) >= 8
    tr, te = set(train.labels.tolist()), set(test.labels.tolist())
    assert tr.isdisjoint(te) and len(tr) + len(te) == len(SHAPES) * len(COLOURS)
    for split in (tr, te):  # every shape and every colour occurs on both sides
        assert {c // len(COLOURS) for c in split} == set(range(len(SHAPES)))
        assert {c % len(COLOURS) for c in split} == set(range(len(COLOURS)))


def test_target_mask_box_and_colour_match_the_image():
    data = generate(SPEC, "test")
    for i in range(0, len(data.labels), 7):
        ann = data.annotation(i)
        mask, (x0, y0, x1, y1) = ann["mask"], ann["box"]
        assert 0.03 < mask.mean() < 0.5                       # one large object, not the whole frame
        assert mask[y0:y1, x0:x1].sum() == mask.sum()          # box encloses the mask
        # pixels of the (unoccluded) target carry its colour
        colour = np.array(COLOURS[ann["colour"]])
        assert np.abs(data.images[i][mask].astype(int) - colour).max() <= 1
        assert ann["colour"] in COLOUR_NAMES and ann["shape"] in SHAPES


def test_dataset_items_and_validation_split():
    splits = build_datasets(DataConfig(max_per_class=5, shapes={"train_per_class": 5, "test_per_class": 4}))
    image, label, index = splits.train[3]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    assert splits.train.annotation(index)["mask"].shape == (64, 64)
    train_c, val_c, test_c = (set(s.labels.tolist()) for s in (splits.train, splits.val, splits.test))
    assert val_c and train_c.isdisjoint(val_c) and test_c.isdisjoint(train_c | val_c)


def test_labels_decode_with_the_specs_colour_count():
    """Labels are encoded as shape · n_colours + colour; with n_colours != 8 decoding by the full colour list
    named the wrong shape and colour (class 6 of a 4-colour set is a blue square, not an orange circle)."""
    spec = ShapesSpec(train_per_class=2, test_per_class=2, n_shapes=3, n_colours=4)
    for split in ("train", "test"):
        data = generate(spec, split)
        names = {}
        for i in range(len(data.labels)):
            ann = data.annotation(i)
            shape, colour = divmod(int(data.labels[i]), 4)
            assert (ann["shape"], ann["colour"]) == (SHAPES[shape], COLOUR_NAMES[colour])
            target = np.array(COLOURS[ann["colour"]])                # the drawn target has the decoded colour
            assert np.abs(data.images[i][ann["mask"]].astype(int) - target).max() <= 1
            names.setdefault(int(data.labels[i]), ann["class_name"])
        assert len(set(names.values())) == len(names)                # one name per class
    splits = build_datasets(DataConfig(shapes={"train_per_class": 2, "test_per_class": 2, "n_shapes": 3,
                                               "n_colours": 4}, val_classes=0))
    assert splits.test.class_names[6] == "blue square"                # also when read back from the cache


def test_distractor_mask_is_exactly_the_clutter():
    """The distractor mask (for scoring maps on clutter vs background) covers exactly the palette-coloured pixels
    that are not the target's: nothing of the background texture, nothing of the target, every distractor."""
    data = generate(SPEC, "test")
    palette = np.array(list(COLOURS.values()))
    for i in range(0, len(data.labels), 11):
        ann = data.annotation(i)
        image, target, clutter = data.images[i].astype(int), ann["mask"], ann["distractors"]
        painted = (np.abs(image[:, :, None, :] - palette).max(-1) <= 1).any(-1)   # H×W: some palette colour
        assert clutter.any() and not (clutter & target).any()
        assert np.array_equal(painted & ~target, clutter)
