"""Image data sets: the benchmark layouts (SOP, CUB, CARS196, In-Shop), folder: and list: sources,
decoding, selection, streaming, the gallery cache, resume, bad input, and Recall@1 against
pytorch-metric-learning. The data sets are tiny and written here, in each published layout."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from retrievalguard_fast import data as datasets
from retrievalguard_fast.data.images import rebatch
from retrievalguard_fast.data import ImageQueries, Preprocess

from conftest import cli, read_results, strip_timing

MODEL = "image_model:make"  # python_tests/image_model.py
RUN = ["--model", MODEL, "--sigma", "0.25", "--n", "200", "--n0", "20", "--batch-size", "64"]
SMALL = ["--resize", "16", "--crop", "16"]
FORMATS = ["png", "jpg", "gray.png", "palette.png"]  # RGB PNG, JPEG, grayscale, palette


def write_image(path, rng, label, size=(16, 16)):
    """A class-coloured image with per-image noise (classes overlap: Recall@1 is neither 0 nor 1),
    saved in the format its name says."""
    base = np.array([(label * 97) % 256, (label * 57) % 256, (label * 31) % 256], np.float64)
    pixels = np.clip(base + rng.uniform(-110, 110, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if path.endswith("gray.png"):
        img = img.convert("L")
    elif path.endswith("palette.png"):
        img = img.convert("P")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)


def write_items(root, items, seed=0):
    """Write ``items`` (relative path, label) under ``root``."""
    rng = np.random.default_rng(seed)
    for rel, label in items:
        write_image(os.path.join(root, rel), rng, label)


# ---------------------------------------------------------------------- the four layouts


def make_sop(root, per_class=3, classes=(11319, 11320, 11321, 11322)):
    items = [(f"cls{c}_final/{c}_{k}.{FORMATS[k % 4]}", c) for c in classes for k in range(per_class)]
    write_items(root, items)
    with open(os.path.join(root, "Ebay_test.txt"), "w") as f:
        f.write("image_id class_id super_class_id path\n")
        for i, (rel, c) in enumerate(items, 1):
            f.write(f"{i} {c} {c % 12 + 1} {rel}\n")
    return items


def make_cub(root, per_class=3):
    items = [(f"{c:03d}.Bird_{c}/Bird_{c}_{k}.{FORMATS[k % 4]}", c) for c in (99, 100, 101, 102, 103) for k in range(per_class)]
    write_items(os.path.join(root, "images"), items)
    with open(os.path.join(root, "images.txt"), "w") as f, open(os.path.join(root, "image_class_labels.txt"), "w") as g:
        for i, (rel, c) in enumerate(items, 1):
            f.write(f"{i} {rel}\n")
            g.write(f"{i} {c}\n")
    return [it for it in items if it[1] >= 101]


def make_cars(root, per_class=3):
    from scipy.io import savemat

    items = [(f"car_ims/{c:03d}{k:03d}.{FORMATS[k % 4]}", c) for c in (97, 98, 99, 100, 196) for k in range(per_class)]
    write_items(root, items)
    ann = np.zeros((1, len(items)), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    for i, (rel, c) in enumerate(items):
        ann[0, i] = (rel, np.array([[c]], np.uint8), np.array([[i % 2]], np.uint8))
    savemat(os.path.join(root, "cars_annos.mat"), {"annotations": ann})
    return [it for it in items if it[1] >= 99]


def make_inshop(root):
    rows = []
    for item in (2, 7, 12):
        for k in range(4):
            status = "query" if k == 0 else "gallery" if k < 3 else "train"
            rows.append((f"img/WOMEN/Dresses/id_{item:08d}/0{k}_{k}_front.{FORMATS[k % 4]}", item, status))
    write_items(root, [(rel, item) for rel, item, _ in rows])
    with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
        f.write(f"{len(rows)}\nimage_name item_id evaluation_status\n")
        for rel, item, status in rows:
            f.write(f"{rel}   id_{item:08d}   {status}\n")
    return ([(rel, item) for rel, item, s in rows if s == "query"], [(rel, item) for rel, item, s in rows if s == "gallery"])


def _listed(images):
    return [(os.path.normpath(p), int(label)) for p, label in zip(images.paths, images.labels)]


def test_each_layout_gives_its_test_split_labels_and_leave_one_out(tmp_path):
    for name, make, subdir in [("sop", make_sop, ""), ("cub", make_cub, "images"), ("cars", make_cars, "")]:
        root = tmp_path / name
        expected = make(str(root))
        split = datasets.benchmark(f"{name}:{root}")
        assert split.leave_one_out and split.queries is split.gallery
        assert _listed(split.queries) == [(os.path.normpath(os.path.join(root, subdir, rel)), c) for rel, c in expected]
    assert sorted(set(datasets.benchmark(f"cub:{tmp_path / 'cub'}").queries.labels)) == [101, 102, 103]
    assert sorted(set(datasets.benchmark(f"cars:{tmp_path / 'cars'}").queries.labels)) == [99, 100, 196]
    queries, gallery = make_inshop(str(tmp_path / "inshop"))
    split = datasets.benchmark(f"inshop:{tmp_path / 'inshop'}")
    assert not split.leave_one_out
    assert _listed(split.queries) == [(os.path.normpath(os.path.join(tmp_path, "inshop", r)), c) for r, c in queries]
    assert _listed(split.gallery) == [(os.path.normpath(os.path.join(tmp_path, "inshop", r)), c) for r, c in gallery]


def test_folder_and_list_sources(tmp_path):
    write_items(str(tmp_path / "q"), [("b/1.png", 0), ("b/0.jpg", 0), ("a/x.png", 1)])
    write_items(str(tmp_path / "g"), [("c/1.png", 0), ("a/2.png", 0)])
    q = datasets.folder_source(str(tmp_path / "q"), "--queries")
    assert [os.path.basename(p) for p in q.paths] == ["x.png", "0.jpg", "1.png"] and q.labels.tolist() == [0, 1, 1]
    # With the union of both sides' class names, a class keeps one label on both.
    g = datasets.folder_source(str(tmp_path / "g"), "--gallery", classes=["a", "b", "c"])
    assert g.labels.tolist() == [0, 2]
    os.makedirs(tmp_path / "lists")
    with open(tmp_path / "lists" / "l.csv", "w") as f:
        f.write("path,label\n../q/a/x.png,5\n\n" + os.path.join(tmp_path, "g", "c", "1.png") + ",7\n")
    lst = datasets.list_source(str(tmp_path / "lists" / "l.csv"), "--queries")
    assert lst.paths == [str(tmp_path / "q" / "a" / "x.png"), str(tmp_path / "g" / "c" / "1.png")]
    assert lst.labels.tolist() == [5, 7] and lst.where[1].endswith("l.csv line 4")


def test_decoding_converts_to_rgb_resizes_the_shorter_side_and_centre_crops(tmp_path):
    rng = np.random.default_rng(1)
    for name in FORMATS:
        write_image(str(tmp_path / f"a.{name}"), rng, 3, size=(40, 30))
    for name in FORMATS:
        path = str(tmp_path / f"a.{name}")
        raw = Preprocess(0, 0)(path)
        assert raw.shape == (3, 30, 40) and raw.dtype == np.float32 and 0 <= raw.min() and raw.max() <= 1
        expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
        assert np.array_equal(raw, expected)
        assert Preprocess(15, 0)(path).shape == (3, 15, 20)  # shorter side 30 -> 15
        cropped = Preprocess(0, 10)(path)
        assert np.array_equal(cropped, raw[:, 10:20, 15:25])  # torchvision's CenterCrop offsets
        assert Preprocess(15, 12)(path).shape == (3, 12, 12)
        if name == "gray.png":
            assert np.array_equal(raw[0], raw[1]) and np.array_equal(raw[1], raw[2])


def test_rebatch_keeps_order_and_exact_block_sizes():
    batches = [torch.arange(a, b) for a, b in [(0, 3), (3, 4), (4, 11), (11, 12)]]
    blocks = list(rebatch(iter(batches), 5))
    assert [len(b) for b in blocks] == [5, 5, 2] and torch.equal(torch.cat(blocks), torch.arange(12))


# ---------------------------------------------------------------------- same images, any source


@pytest.fixture(scope="module")
def same_images(tmp_path_factory):
    """The same 12 images (4 formats, 3 classes) as a class folder, a CSV list and .npz arrays."""
    d = tmp_path_factory.mktemp("same")
    items = [(f"class{c}/{k}.{FORMATS[k % 4]}", c) for c in range(3) for k in range(4)]
    write_items(str(d / "folder"), items, seed=5)
    with open(d / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([("folder/" + rel, c) for rel, c in items])
    x = np.stack([np.asarray(Image.open(d / "folder" / rel).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
                  for rel, _ in items])
    labels = np.array([c for _, c in items])
    np.savez(d / "queries.npz", x=x, labels=labels, exclude=np.arange(len(items)))
    np.savez(d / "gallery.npz", x=x, labels=labels)
    return d


def test_the_same_images_give_identical_results_from_any_source(same_images, tmp_path):
    d = same_images
    runs = {}
    for name, q, g in [("npz", d / "queries.npz", d / "gallery.npz"),
                       ("folder", f"folder:{d / 'folder'}", f"folder:{d / 'folder'}"),
                       ("list", f"list:{d / 'list.csv'}", f"list:{d / 'list.csv'}")]:
        cli("certify", *RUN, "--queries", str(q), "--gallery", str(g), "--resize", "0", "--crop", "0",
            "--workers", "2" if name == "list" else "0", "--out", str(tmp_path / name), cwd=tmp_path)
        runs[name] = strip_timing(read_results(tmp_path / name))
    assert len(runs["npz"]) == 12
    assert runs["folder"] == runs["npz"] and runs["list"] == runs["npz"]
    # Leave-one-out for one source on both sides, as the .npz exclude array says: not all clean hits.
    assert 0 < np.mean([r["clean_prediction"] == r["label"] for r in runs["npz"]]) < 1


def test_queries_read_in_chunks_equal_queries_held_in_memory(same_images, tmp_path):
    """The library path: ImageQueries in chunks of 5 (3 chunks, two DataLoader workers) against
    the same images as one array."""
    from retrievalguard_fast.smoothing import Gallery
    from retrievalguard_fast.runs import certify_to_folder
    from retrievalguard_fast.smoothing import SmoothedRetriever

    from image_model import make

    arrays = np.load(same_images / "queries.npz")
    images = datasets.folder_source(str(same_images / "folder"), "--queries")
    model = make()
    gallery = Gallery.from_model(model, arrays["x"], arrays["labels"], batch_size=64)
    retriever = SmoothedRetriever(model, gallery, 0.25, batch_size=64, seed=1)
    common = dict(identity={"data": "same"}, exclude=np.arange(12), n0=20, n=300, mode="sequential", quiet=True)
    certify_to_folder(str(tmp_path / "array"), retriever, arrays["x"], arrays["labels"], **common)
    streamed = ImageQueries(images, Preprocess(0, 0), workers=2, chunk=5)
    assert [len(p) for p, _ in streamed.iter_chunks(np.arange(12))] == [5, 5, 2]
    certify_to_folder(str(tmp_path / "chunks"), retriever, streamed, images.labels, **common)
    assert strip_timing(read_results(tmp_path / "chunks")) == strip_timing(read_results(tmp_path / "array"))


# ---------------------------------------------------------------------- --dataset runs


@pytest.fixture(scope="module")
def sop_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sop")
    make_sop(str(root), per_class=4)
    return root


def test_dataset_run_selection_cache_and_resume(sop_root, tmp_path):
    out = tmp_path / "o"
    base = ["certify", *RUN, *SMALL, "--dataset", f"sop:{sop_root}", "--every", "3", "--max-queries", "4",
            "--out", str(out)]
    proc = cli(*base, "--workers", "0", cwd=tmp_path)
    records = read_results(out)
    assert sorted(r["index"] for r in records) == [0, 3, 6, 9]  # every 3rd of 16, the first 4
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"] == "sop" and run["selection"] == {"every": 3, "max_queries": 4, "of": 16}
    assert run["preprocessing"]["resize"] == 16 and run["preprocessing"]["crop"] == 16
    caches = sorted(p.name for p in out.iterdir() if p.name.startswith("gallery-"))
    assert len(caches) == 1 and "embedded the gallery (16 images)" in proc.stderr and "reused" not in proc.stderr
    cache_bytes = (out / caches[0]).read_bytes()
    # Cut the run after its first record; resume reuses the cached gallery and completes it exactly.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text(lines[0])
    proc = cli(*base, "--resume", "--workers", "2", cwd=tmp_path)
    assert "reused" in proc.stderr and "embedded" not in proc.stderr
    assert strip_timing(read_results(out)) == strip_timing(records)
    # A changed selection or preprocessing is refused, and leaves the folder as it was.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    for change, field in [(["--every", "2"], "selection"), (["--resize", "17"], "preprocessing")]:
        args = [a for a in base]
        i = args.index(change[0])
        args[i + 1] = change[1]
        proc = cli(*args, "--resume", cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "other parameters" in proc.stderr and field in proc.stderr, proc.stderr
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
        assert {k: after[k] for k in before} == before  # nothing lost or overwritten
    assert (out / caches[0]).read_bytes() == cache_bytes
    # Another selection into a new folder: the same query gets the same record (stream = its index).
    cli(*base[:-1], str(tmp_path / "all"), "--max-queries", "16", "--every", "1", cwd=tmp_path)
    whole = {r["index"]: r for r in strip_timing(read_results(tmp_path / "all"))}
    assert all(whole[r["index"]] == r for r in strip_timing(records))


@pytest.mark.parametrize("name", ["cub", "cars", "inshop"])
def test_clean_recall_at_1_equals_pytorch_metric_learning_precision_at_1(name, tmp_path):
    """Clean Recall@1 of `certify --dataset` = pytorch-metric-learning's precision_at_1 on the same
    embeddings; for cub and cars the queries are inside the reference set (leave-one-out)."""
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    from image_model import make

    root = tmp_path / name
    {"cub": make_cub, "cars": make_cars, "inshop": make_inshop}[name](str(root))
    out = tmp_path / "o"
    cli("certify", *RUN, *SMALL, "--dataset", f"{name}:{root}", "--workers", "0", "--out", str(out), cwd=tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    split = datasets.benchmark(f"{name}:{root}")
    model = make().eval()

    def embed(images):
        x = torch.from_numpy(np.stack([Preprocess(16, 16)(p) for p in images.paths]))
        with torch.inference_mode():
            return model(x)

    # pytorch-metric-learning's own torch k-NN (its default needs faiss), on l2-normalised rows.
    calc = AccuracyCalculator(include=("precision_at_1",), k=1, knn_func=CustomKNN(LpDistance(normalize_embeddings=True)))
    if split.leave_one_out:
        e = embed(split.queries)
        expected = calc.get_accuracy(e, torch.from_numpy(split.queries.labels), e,
                                     torch.from_numpy(split.queries.labels), ref_includes_query=True)
    else:
        expected = calc.get_accuracy(embed(split.queries), torch.from_numpy(split.queries.labels),
                                     embed(split.gallery), torch.from_numpy(split.gallery.labels), ref_includes_query=False)
    expected = expected["precision_at_1"]
    assert summary["num_queries"] == len(split.queries)
    assert summary["clean_recall_at_1"] == pytest.approx(expected, abs=1e-12)
    if split.leave_one_out:
        assert expected < 1  # without leaving itself out, every query would find itself


# ---------------------------------------------------------------------- bad input


def _bad(tmp_path, *args):
    proc = cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_bad_input_is_one_line_naming_the_file_and_line_and_loses_nothing(sop_root, tmp_path):
    d = tmp_path
    out = d / "o"
    good = ["certify", *RUN, *SMALL, "--quiet", "--workers", "0"]
    cli(*good, "--out", str(out), "--dataset", f"sop:{sop_root}", "--max-queries", "2", cwd=d)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}

    write_items(str(d / "imgs"), [("a/1.png", 0), ("a/2.jpg", 0), ("b/1.png", 1)])
    (d / "imgs" / "a" / "2.jpg").write_bytes((d / "imgs" / "a" / "2.jpg").read_bytes()[:300])  # truncated
    (d / "notimage.png").write_text("hello")
    os.makedirs(d / "withempty" / "a")
    os.makedirs(d / "withempty" / "b")
    write_items(str(d / "withempty"), [("a/1.png", 0)])
    (d / "withempty" / "b" / "notes.txt").write_text("no images here")
    write_image(str(d / "big.png"), np.random.default_rng(0), 0, size=(20, 20))

    def listing(name, rows, header="path,label"):
        (d / name).write_text(header + "\n" + "".join(f"{p},{label}\n" for p, label in rows))
        return f"list:{d / name}"

    ok = listing("ok.csv", [("imgs/a/1.png", 0), ("imgs/b/1.png", 1)])
    bad_sop = d / "badsop"
    os.makedirs(bad_sop)
    (bad_sop / "Ebay_test.txt").write_text("image_id class_id path\n1 3 x.png\n")
    cub_missing = d / "cub"
    os.makedirs(cub_missing)
    (cub_missing / "images.txt").write_text("1 a/1.png\n")

    # Errors found before the run starts are checked against the folder of a finished run (into
    # which they are resumed); the images of queries are decoded as the run goes, so theirs are
    # checked in a fresh folder (a resume into the finished run would be refused first).
    cases = [
        (["--queries", listing("missing.csv", [("imgs/a/1.png", 0), ("../nowhere/x.png", 1)]), "--gallery", ok],
         ["missing.csv line 3", "'../nowhere/x.png' not found"]),
        (["--queries", listing("trunc.csv", [("imgs/a/1.png", 0), ("imgs/a/2.jpg", 0)]), "--gallery", ok],
         ["2.jpg", "trunc.csv line 3", "cannot be decoded"]),
        (["--queries", ok, "--gallery", listing("trunc_g.csv", [("imgs/b/1.png", 1), ("imgs/a/2.jpg", 0)]), "--workers", "2"],
         ["--gallery", "2.jpg", "trunc_g.csv line 3", "cannot be decoded"]),
        (["--queries", listing("text.csv", [("notimage.png", 0)]), "--gallery", ok], ["notimage.png", "text.csv line 2"]),
        (["--queries", listing("header.csv", [("imgs/a/1.png", 0)], header="file,class"), "--gallery", ok],
         ["header.csv line 1", "expected the CSV header 'path,label'"]),
        (["--queries", listing("label.csv", [("imgs/a/1.png", "cat")]), "--gallery", ok],
         ["label.csv line 2", "label must be an integer, got 'cat'"]),
        (["--queries", f"folder:{d / 'withempty'}", "--gallery", ok], ["class folder", "holds no images"]),
        (["--dataset", f"sop:{bad_sop}"], ["Ebay_test.txt line 1", "expected the header"]),
        (["--dataset", f"cub:{cub_missing}"], ["image_class_labels.txt", "no such file"]),
        (["--dataset", "imagenet:/x"], ["expected NAME:ROOT"]),
        (["--dataset", f"sop:{sop_root}", "--queries", ok], ["not both"]),
        (["--queries", ok], ["give --queries and --gallery"]),
        (["--queries", listing("sizes.csv", [("imgs/a/1.png", 0), ("big.png", 1)]), "--gallery", ok,
          "--resize", "0", "--crop", "0"], ["big.png", "sizes.csv line 3", "(3, 20, 20)", "must share one size"]),
        (["--queries", ok, "--gallery", ok, "--resize", "0", "--crop", "40"], ["1.png", "smaller than --crop 40"]),
    ]
    for k, (args, expected) in enumerate(cases):
        queries_decoded = any(name in args[1] for name in ("trunc.csv", "text.csv", "sizes.csv"))
        where = ["--out", str(d / f"fresh{k}")] if queries_decoded else ["--out", str(out), "--resume"]
        line = _bad(d, *good, *where, *args)
        assert all(e in line for e in expected), (args, line)
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
        assert {k: after.get(k) for k in before} == before, args  # nothing in --out lost or overwritten
        if queries_decoded:
            assert not (d / f"fresh{k}" / "results.jsonl").exists()


def test_attack_reads_the_same_sources_and_selection_as_certify(sop_root, tmp_path):
    """`attack --dataset` with a selection: its records are named by the data set's indices, the
    certify folder of the same selection is accepted as --certified, and no alarm is raised."""
    data = [*SMALL, "--dataset", f"sop:{sop_root}", "--every", "3", "--max-queries", "3", "--workers", "0"]
    cli("certify", *RUN, *data, "--radii", "0,0.5", "--out", str(tmp_path / "cert"), cwd=tmp_path)
    proc = cli("attack", "--model", MODEL, "--sigma", "0.25", "--n0", "50", "--num-samples", "200", "--batch-size",
               "64", *data, "--radii", "0,0.5", "--steps", "3", "--eot", "4", "--restarts", "1",
               "--certified", str(tmp_path / "cert"), "--out", str(tmp_path / "attack"), cwd=tmp_path)
    records = read_results(tmp_path / "attack")
    assert sorted(r["index"] for r in records) == [0, 3, 6]
    assert all(set(r) >= {"vote", "soft", "base"} for r in records)
    summary = json.loads((tmp_path / "attack" / "summary.json").read_text())
    assert summary["certified"]["alarm"]["broken_inside_radius"] == 0, proc.stdout
    run = json.loads((tmp_path / "attack" / "run.json").read_text())
    assert run["dataset"] == "sop" and run["selection"] == {"every": 3, "max_queries": 3, "of": 16}
    assert run["soft_bound"] == "bennett"


def test_leave_one_out_is_decided_by_the_identity_of_the_data_not_its_spelling(same_images, tmp_path, monkeypatch):
    """folder:D, folder:D/, ./D, an absolute path, a symlink and a list: of the same files are the
    same data; so is one .npz named twice or a copy of it. Each gives leave-one-out, recorded in
    run.json's identity; --no-leave-one-out keeps each query's own row."""
    from retrievalguard_fast.data import load_run_data

    d = same_images
    os.symlink(d / "folder", tmp_path / "linked")
    monkeypatch.chdir(d)
    shutil.copy(d / "gallery.npz", tmp_path / "copy.npz")
    spellings = [("folder:folder", f"folder:{d / 'folder'}/"), (f"folder:{d / 'folder'}", f"folder:{tmp_path / 'linked'}"),
                 ("folder:./folder", f"list:{d / 'list.csv'}"), ("folder:folder/", "folder:folder"),
                 (str(d / "gallery.npz"), "gallery.npz"), (str(d / "gallery.npz"), str(tmp_path / "copy.npz"))]
    for q, g in spellings:
        data = load_run_data(queries=q, gallery=g, dataset=None, resize=0, crop=0, workers=0)
        assert data.exclude is not None and list(data.exclude) == list(range(12)), (q, g)
        assert data.identity["leave_one_out"] is True and data.identity["queries_sha256"] == data.identity["gallery_sha256"]
        kept = load_run_data(queries=q, gallery=g, dataset=None, resize=0, crop=0, workers=0, leave_one_out=False)
        assert kept.exclude is None and kept.identity["leave_one_out"] is False, (q, g)
    # Different data: no leave-one-out, nothing recorded about it.
    other = load_run_data(queries=str(d / "queries.npz"), gallery="gallery.npz", dataset=None)
    assert "leave_one_out" not in other.identity and list(other.exclude) == list(range(12))  # the file's own exclude
    # Through the command line: two spellings of one folder give the records of the .npz run
    # whose exclude array leaves each query out.
    runs = {}
    for name, q, g in [("npz", d / "queries.npz", d / "gallery.npz"),
                       ("spelled", f"folder:{d / 'folder'}/", f"folder:{tmp_path / 'linked'}")]:
        cli("certify", *RUN, "--queries", str(q), "--gallery", str(g), "--resize", "0", "--crop", "0",
            "--workers", "0", "--out", str(tmp_path / name), cwd=tmp_path)
        runs[name] = strip_timing(read_results(tmp_path / name))
    assert runs["spelled"] == runs["npz"]


def test_verify_data_sees_a_same_size_replacement_that_kept_its_mtime(tmp_path):
    """`cp -p` of another image of the same size over one of the set: the listing digest (paths,
    sizes, mtimes) cannot see it, --verify-data (the bytes) does: a resume is refused with one
    line naming the digest, and the records are untouched."""
    from retrievalguard_fast.data import load_run_data

    rng = np.random.default_rng(3)
    for c in range(2):
        for k in range(3):
            write_image(str(tmp_path / "d" / f"class{c}" / f"{k}.ppm"), rng, c)  # PPM: size fixed by the pixels
    write_image(str(tmp_path / "other.ppm"), rng, 1)
    target = tmp_path / "d" / "class0" / "1.ppm"
    assert os.path.getsize(target) == os.path.getsize(tmp_path / "other.ppm")
    spec = f"folder:{tmp_path / 'd'}"

    def identity(verify):
        return load_run_data(queries=spec, gallery=spec, dataset=None, resize=0, crop=0, workers=0,
                             verify_data=verify).identity

    listing, content = identity(False), identity(True)
    assert "image_digest" not in listing and content["image_digest"] == "bytes"
    assert listing["queries_sha256"] != content["queries_sha256"]
    args = ["certify", *RUN, "--queries", spec, "--gallery", spec, "--resize", "0", "--crop", "0", "--workers", "0",
            "--verify-data", "--out", str(tmp_path / "run")]
    cli(*args, cwd=tmp_path)
    before = (tmp_path / "run" / "results.jsonl").read_bytes()
    st = os.stat(target)
    shutil.copyfile(tmp_path / "other.ppm", target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p and rsync -a keep
    assert identity(False) == listing  # invisible to the listing
    assert identity(True)["queries_sha256"] != content["queries_sha256"]
    proc = cli(*args, "--resume", cwd=tmp_path, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error:") and "queries_sha256" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "results.jsonl").read_bytes() == before
