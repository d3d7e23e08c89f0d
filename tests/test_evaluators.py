"""Tests for maskclip_bench.evaluators: agreement with CLIP_benchmark, and sanity on toy problems."""
from __future__ import annotations

import copy
import json
import math
from importlib import resources

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import clip_benchmark.metrics.zeroshot_retrieval as cb_retrieval
from clip_benchmark.datasets.builder import image_captions_collate_fn
from maskclip_bench.evaluators import (
    encode_images,
    evaluate_dense_probe,
    evaluate_linear_probe,
    evaluate_retrieval,
    evaluate_zeroshot,
    finetune,
    get_templates,
    recall_from_scores,
)
from maskclip_bench.evaluators.dense import confusion_matrix, segmentation_metrics
from maskclip_bench.evaluators.features import EndTokenText, encode_texts
from maskclip_bench.evaluators.retrieval import recall_from_embeddings
from maskclip_bench.evaluators.finetune import VisualClassifier, layer_decay_param_groups, lr_multiplier
from maskclip_core.errors import DataError
from maskclip_core.towers import create_clip, get_tokenizer

MODEL = "MaskCLIP-Tiny-8"
CLASSNAMES = ["cat", "dog", "car", "tree", "boat", "plane"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_clip(MODEL).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(MODEL)


class ClassificationSet(Dataset):
    """Random 64 px images with integer labels and a `.classes` attribute, as CLIP_benchmark expects."""

    def __init__(self, n: int, classes: list[str], seed: int = 0, as_dict: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 64, 64, generator=g)
        self.labels = torch.arange(n) % len(classes)
        self.classes = classes
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self.as_dict:
            return {"image": self.images[i], "label": self.labels[i]}
        return self.images[i], self.labels[i]


class CaptionSet(Dataset):
    """Random images with 1-3 captions each, as CLIP_benchmark's retrieval datasets give them."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.images = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        words = ["red", "blue", "small", "large", "striped", "shiny"]
        self.captions = [
            [f"a {words[(i + j) % 6]} object number {i} view {j}" for j in range(1 + i % 3)] for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.captions[i]


# ---------------------------------------------------------------- templates


def test_openai_templates_are_clip_benchmarks_imagenet_templates() -> None:
    path = resources.files("clip_benchmark.datasets") / "en_zeroshot_classification_templates.json"
    expected = json.loads(path.read_text())["imagenet1k"]
    templates = get_templates("openai_imagenet")
    assert len(templates) == 80
    assert templates == expected


def test_slip_and_simple_templates() -> None:
    slip = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
            "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
    assert get_templates("slip") == [t.replace("{}", "{c}") for t in slip]
    assert get_templates("simple") == ["a photo of a {c}."]


def test_template_file_and_errors(tmp_path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("a photo of a {c}.\n\n  a {} in the wild.  \n")
    assert get_templates(path) == ["a photo of a {c}.", "a {c} in the wild."]
    with pytest.raises(DataError, match="unknown template set 'imagenet'"):
        get_templates("imagenet")
    with pytest.raises(DataError, match="not found"):
        get_templates(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("a photo of a {c}.\nno placeholder here\n")
    with pytest.raises(DataError, match="placeholder"):
        get_templates(tmp_path / "bad.txt")


# ---------------------------------------------------------------- features


def test_encode_images_outputs_and_batch_formats(model) -> None:
    data = ClassificationSet(12, CLASSNAMES)
    tuples = encode_images(model, DataLoader(data, batch_size=5))
    data.as_dict = True
    dicts = encode_images(model, DataLoader(data, batch_size=5), pooled_pre_projection=True, with_patch_tokens=True)

    assert set(tuples) == {"image_features", "targets"}
    assert set(dicts) == {"image_features", "targets", "pooled_features", "patch_tokens"}
    torch.testing.assert_close(dicts["image_features"], tuples["image_features"])
    assert torch.equal(dicts["targets"], data.labels)
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_image(data.images), dim=-1)
    torch.testing.assert_close(tuples["image_features"], direct)
    torch.testing.assert_close(tuples["image_features"].norm(dim=-1), torch.ones(12))
    # pooled features are pre-projection: projecting them gives the image features back
    projected = torch.nn.functional.normalize(dicts["pooled_features"] @ model.visual.proj.detach(), dim=-1)
    torch.testing.assert_close(projected, tuples["image_features"])
    assert dicts["pooled_features"].shape == (12, 192)
    assert dicts["patch_tokens"].shape == (12, 8 * 8, 192)
    # patch tokens are after ln_post: zero mean over channels for each token (ln_post has bias 0 at init)
    assert dicts["patch_tokens"].mean(dim=-1).abs().max() < 1e-4


# ---------------------------------------------------------------- zero-shot


def _brute_force_zeroshot(model, tokenizer, images, labels, classnames, templates) -> dict[str, float]:
    """CLIP's zero-shot protocol written out: per class, the mean of its L2-normalised prompt embeddings,
    renormalised; an image's logits are the cosine similarities; metrics counted in plain loops."""
    with torch.no_grad():
        image_emb = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        class_emb = []
        for name in classnames:
            prompts = torch.nn.functional.normalize(
                model.encode_text(tokenizer([t.replace("{c}", name).replace("{}", name) for t in templates])), dim=-1)
            class_emb.append(torch.nn.functional.normalize(prompts.mean(dim=0), dim=0))
    scores = (image_emb @ torch.stack(class_emb).T).tolist()
    ranked = [sorted(range(len(classnames)), key=lambda c: -row[c]) for row in scores]
    k = min(5, len(classnames))
    labels = labels.tolist()
    per_class = [[ranked[i][0] == c for i in range(len(labels)) if labels[i] == c] for c in sorted(set(labels))]
    f1 = []  # per present class: 2 TP / (2 TP + FP + FN)
    for c in sorted(set(labels)):
        tp = sum(r[0] == c and y == c for r, y in zip(ranked, labels))
        fp = sum(r[0] == c and y != c for r, y in zip(ranked, labels))
        fn = sum(r[0] != c and y == c for r, y in zip(ranked, labels))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return {"acc1": sum(r[0] == y for r, y in zip(ranked, labels)) / len(labels),
            "acc5": sum(y in r[:k] for r, y in zip(ranked, labels)) / len(labels),
            "mean_per_class_recall": sum(sum(hits) / len(hits) for hits in per_class) / len(per_class),
            "f1_macro": sum(f1) / len(f1),
            "predictions": [r[0] for r in ranked]}


def test_text_features_are_open_clips_for_fewer_positions(model, tokenizer) -> None:
    """The evaluators encode texts only up to each batch's last end token: open_clip's 77-position features."""
    texts = ["a photo of a cat.", "a long caption about a small red star " * 3]
    seen = []
    hook = model.transformer.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    ours = encode_texts(model, tokenizer, texts)
    prompt = EndTokenText(model).encode_text(tokenizer(texts[:1]))  # what CLIP_benchmark's classifier calls
    hook.remove()
    assert seen == [len(tokenizer.encode(texts[1])) + 2, len(tokenizer.encode(texts[0])) + 2]  # + start and end
    with torch.no_grad():
        full = model.encode_text(tokenizer(texts))
    torch.testing.assert_close(ours, torch.nn.functional.normalize(full, dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(prompt, full[:1], rtol=0, atol=1e-5)


def test_zeroshot_against_brute_force_on_a_model_above_chance(model, tokenizer) -> None:
    """A random model is at chance on any fixed labels, so the labels are made to agree with its brute-force
    predictions on 2 of 3 images: the metrics sit far from chance, where an error in the logits shows."""
    data = ClassificationSet(24, CLASSNAMES)
    templates = ["a photo of a {c}.", "a drawing of the {}."]
    predicted = _brute_force_zeroshot(model, tokenizer, data.images, data.labels, CLASSNAMES, templates)["predictions"]
    data.labels = torch.tensor([p if i % 3 else (p + 1 + i % 5) % 6 for i, p in enumerate(predicted)])
    expected = _brute_force_zeroshot(model, tokenizer, data.images, data.labels, CLASSNAMES, templates)
    assert expected["acc1"] == pytest.approx(16 / 24)  # chance is 1/6
    loader = DataLoader(data, batch_size=8)
    ours = evaluate_zeroshot(model, loader, tokenizer, CLASSNAMES, templates)
    assert set(ours) == {"acc1", "acc5", "mean_per_class_recall", "f1_macro"}
    for key in ours:
        assert ours[key] == pytest.approx(expected[key], abs=1e-9), key
    # precomputed features give the same numbers without reading the dataloader
    features = encode_images(model, loader, pooled_pre_projection=True)
    assert evaluate_zeroshot(model, None, tokenizer, CLASSNAMES, templates, features=features) == ours


def test_zeroshot_acc5_with_fewer_than_five_classes(model, tokenizer) -> None:
    classes = CLASSNAMES[:3]
    loader = DataLoader(ClassificationSet(9, classes), batch_size=9)
    metrics = evaluate_zeroshot(model, loader, tokenizer, classes, get_templates("simple"))
    assert metrics["acc5"] == 1.0  # top-3 of 3 classes always contains the label
    assert 0.0 <= metrics["acc1"] <= 1.0 and 0.0 <= metrics["mean_per_class_recall"] <= 1.0


# ---------------------------------------------------------------- retrieval


def test_retrieval_matches_clip_benchmark(model, tokenizer) -> None:
    loader = DataLoader(CaptionSet(14), batch_size=4, collate_fn=image_captions_collate_fn)
    expected = cb_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = evaluate_retrieval(model, loader, tokenizer)
    assert ours == expected
    features = encode_images(model, loader)
    assert len(features["captions"]) == 14 and features["captions"][2] == CaptionSet(14).captions[2]
    assert evaluate_retrieval(model, None, tokenizer, features=features) == expected
    # Ranked in chunks of queries (what a set of Flickr30K's 31,014 images takes): still CLIP_benchmark's numbers.
    assert evaluate_retrieval(model, None, tokenizer, features=features, max_scores=40) == expected


@pytest.mark.parametrize("max_scores", [161, 50, 17, 1])
def test_chunked_recall_equals_the_whole_score_matrix(max_scores: int) -> None:
    """18 texts x 9 images: chunks of 5 texts (the last 3) and 2 images (the last 1) at 50 entries, one query at a
    time at 1; one caption is an exact copy of another image's caption (a tie among an image's candidates)."""
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(9, 16, generator=g), dim=-1)
    text_image_index = torch.tensor([i for i in range(9) for _ in range(1 + i % 3)])  # 1-3 captions per image
    texts = images[text_image_index] + 0.9 * torch.randn(len(text_image_index), 16, generator=g)
    texts = torch.nn.functional.normalize(texts, dim=-1)
    texts[5] = texts[2]  # captions of images 1 and 2
    k_list = (1, 2, 5, 30)
    whole = recall_from_embeddings(texts, images, text_image_index, k_list, max_scores=18 * 9)
    scores = texts @ images.t()
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(18), text_image_index] = True
    assert whole == recall_from_scores(scores, positives, k_list)  # the unchunked path is the whole matrix
    assert 0 < whole["image_retrieval_recall@1"] < 1 and 0 < whole["text_retrieval_recall@1"] < 1
    assert whole["image_retrieval_recall@2"] != whole["image_retrieval_recall@1"]
    assert recall_from_embeddings(texts, images, text_image_index, k_list, max_scores=max_scores) == whole


def _brute_force_recall(scores: torch.Tensor, text_to_image: list[int], k: int) -> tuple[float, float]:
    n_texts, n_images = scores.shape
    t2i_hits = 0
    for t in range(n_texts):
        ranked = sorted(range(n_images), key=lambda i: -scores[t, i].item())
        t2i_hits += text_to_image[t] in ranked[:k]
    i2t_hits = 0
    for i in range(n_images):
        ranked = sorted(range(n_texts), key=lambda t: -scores[t, i].item())
        i2t_hits += any(text_to_image[t] == i for t in ranked[:k])
    return t2i_hits / n_texts, i2t_hits / n_images


def test_recall_from_scores_against_brute_force() -> None:
    # 4 images; texts 0,1 -> image 0; 2 -> image 1; 3,4,5 -> image 2; 6 -> image 3
    text_to_image = [0, 0, 1, 2, 2, 2, 3]
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.3, 0.2],  # t0: image 0 ranked 1st
            [0.2, 0.8, 0.5, 0.1],  # t1: image 0 ranked 3rd
            [0.7, 0.6, 0.1, 0.0],  # t2: image 1 ranked 2nd
            [0.1, 0.2, 0.3, 0.4],  # t3: image 2 ranked 2nd
            [0.0, 0.1, 0.95, 0.3],  # t4: image 2 ranked 1st
            [0.6, 0.5, 0.05, 0.4],  # t5: image 2 ranked 3rd
            [0.3, 0.2, 0.1, 0.0],  # t6: image 3 ranked 4th
        ]
    )
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(7), text_to_image] = True
    metrics = recall_from_scores(scores, positives, k_list=(1, 2, 3))
    for k in (1, 2, 3):
        t2i, i2t = _brute_force_recall(scores, text_to_image, k)
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    # worked out by hand from the comments above and the columns
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 7)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(4 / 7)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 4)  # image 0 (t0) and image 2 (t4)
    # a k above the number of candidates ranks everything
    assert recall_from_scores(scores, positives, k_list=(10,))["image_retrieval_recall@10"] == 1.0


# ---------------------------------------------------------------- linear probe


def _blobs(n: int, n_classes: int, dim: int, seed: int, shuffle: bool = False):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(n_classes, dim)) * 3.0
    labels = rng.integers(0, n_classes, size=n)
    feats = centers[labels] + rng.normal(size=(n, dim))
    if shuffle:
        labels = rng.permutation(labels)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(labels)


def test_linear_probe_separable() -> None:
    splits = [_blobs(n, 8, 16, seed) for n, seed in ((160, 0), (80, 1), (160, 2))]
    metrics = evaluate_linear_probe(*splits[0], *splits[1], *splits[2], C_grid=[0.01, 1.0, 100.0])
    assert metrics["lp_acc1"] >= 0.9 and metrics["lp_mean_per_class_recall"] >= 0.9
    assert metrics["lp_acc5"] >= metrics["lp_acc1"]
    assert metrics["lp_C"] in (0.01, 1.0, 100.0)


def test_linear_probe_shuffled_labels_is_chance() -> None:
    splits = [_blobs(n, 4, 16, seed, shuffle=True) for n, seed in ((160, 0), (80, 1), (400, 2))]
    metrics = evaluate_linear_probe(*splits[0], *splits[1], *splits[2], C_grid=[0.01, 1.0])
    assert abs(metrics["lp_acc1"] - 0.25) < 0.1
    assert metrics["lp_acc5"] == 1.0  # top-4 of 4 classes


# ---------------------------------------------------------------- fine-tuning


def test_lr_schedule_and_layer_decay_groups(model) -> None:
    assert lr_multiplier(0, 100, 10) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, 10) == pytest.approx(1.0)
    assert lr_multiplier(10, 100, 10) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, 10) == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 10) < 0.01
    assert lr_multiplier(0, 10, 0) == pytest.approx(1.0)

    classifier = VisualClassifier(copy.deepcopy(model.visual), 3)
    groups = layer_decay_param_groups(classifier, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    visual = classifier.visual
    n_blocks = len(visual.transformer.resblocks)  # 6
    assert scale_of[id(classifier.head.weight)] == 1.0
    assert scale_of[id(visual.ln_post.weight)] == 1.0
    assert scale_of[id(visual.transformer.resblocks[-1].mlp.c_fc.weight)] == 0.5
    assert scale_of[id(visual.transformer.resblocks[0].attn.in_proj_weight)] == 0.5**n_blocks
    assert scale_of[id(visual.conv1.weight)] == 0.5 ** (n_blocks + 1)
    assert scale_of[id(visual.positional_embedding)] == 0.5 ** (n_blocks + 1)
    assert decay_of[id(visual.conv1.weight)] == 0.05 and decay_of[id(classifier.head.weight)] == 0.05
    assert decay_of[id(visual.positional_embedding)] == 0.0 and decay_of[id(classifier.head.bias)] == 0.0
    # every trainable parameter is in exactly one group
    trainable = [p for p in classifier.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)


def _colour_task(n: int, seed: int) -> TensorDataset:
    """4 classes told apart by which colour channel (or none) is bright, under noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = 0.5 * torch.randn(n, 3, 64, 64, generator=g)
    for c in range(3):
        images[labels == c, c] += 1.5
    return TensorDataset(images, labels)


def test_finetune_learns_a_toy_task(model) -> None:
    before = [p.detach().clone() for p in model.visual.parameters()]
    train = DataLoader(_colour_task(32, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))
    test = DataLoader(_colour_task(16, 1), batch_size=16)
    metrics = finetune(model, train, test, num_classes=4, epochs=2, lr=1e-3, warmup_steps=2)
    assert metrics["ft_loss_last_epoch"] < metrics["ft_loss_first_epoch"]
    assert metrics["ft_acc1"] > 0.5  # chance is 0.25
    assert metrics["ft_acc5"] == 1.0  # top-4 of 4 classes
    # the caller's model is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.visual.parameters()))


# ---------------------------------------------------------------- dense probe


def test_segmentation_metrics_by_hand() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    confusion = confusion_matrix(pred, target, num_classes=4)
    metrics = segmentation_metrics(confusion)
    # class 0: hit 1, union 3; class 1: hit 3, union 4; class 2: hit 1, union 2; class 3 absent
    assert metrics["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert metrics["pixel_acc"] == pytest.approx(5 / 7)


def _seg_task(n: int, num_classes: int, seed: int, informative: bool):
    """Masks made of 8x8-pixel patches of one class each; tokens one-hot the patch class (+ noise) or pure noise."""
    g = torch.Generator().manual_seed(seed)
    patch_classes = torch.randint(0, num_classes, (n, 8, 8), generator=g)
    segs = patch_classes.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)  # [n, 64, 64]
    tokens = 0.3 * torch.randn(n, 64, 16, generator=g)
    if informative:
        tokens[..., :num_classes] += torch.nn.functional.one_hot(patch_classes.reshape(n, 64), num_classes)
    return tokens, segs


def test_dense_probe_random_features_near_chance() -> None:
    train = _seg_task(24, 4, 0, informative=False)
    test = _seg_task(12, 4, 1, informative=False)
    metrics = evaluate_dense_probe(*train, *test, num_classes=4, grid_size=8, epochs=20, lr=1e-2)
    assert metrics["pixel_acc"] < 0.4  # chance 0.25
    assert metrics["miou"] < 0.25


def test_dense_probe_informative_features() -> None:
    train = _seg_task(24, 4, 0, informative=True)
    test = _seg_task(12, 4, 1, informative=True)
    metrics = evaluate_dense_probe(*train, *test, num_classes=4, grid_size=8, epochs=20, lr=1e-2)
    assert metrics["pixel_acc"] > 0.7
    assert metrics["miou"] > 0.55
    assert not math.isnan(metrics["miou"])
