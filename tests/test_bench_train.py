"""scripts/bench_train.py: its table, its README markers, the folder it makes, and a --quick run."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import load_script

from finetune.compat import tf

bench = load_script("bench_train")


def result(key: str, rates: list[float], peak: float = 700.0, note: str = ""):
    return bench.Result(bench.BY_KEY[key], rates=rates, peak_mib=peak, note=note)


def rows(text: str) -> dict[str, list[str]]:
    """Table rows by variant label (the first cell), each as its other cells."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] not in ("variant", "---"):
            found[cells[0]] = cells[1:]
    return found


def test_table_ratios_against_keras_and_forward():
    text = bench.table([
        result("cache", [40.0, 4000.0, 6000.0], peak=900),
        result("keras", [20.0, 30.0, 60.0]),
        result("forward", [50.0]),
        result("feed_dict", [], note="failed (exit status 1): boom"),
    ])
    table = rows(text)
    # Later epochs: epochs 2.. as one (their images over their seconds: 4800, Keras 40); epoch 1
    # against the forward pass.
    assert table["ours, feature cache"] == ["40.0", "4800", "120x", "0.80x", "900"]
    assert table["Keras 3 fit"] == ["20.0", "40.0", "1.00x", "0.40x", "700"]
    assert table["forward only"] == ["50.0", "50.0", "1.25x", "1.00x", "700"]  # its one rate in both columns
    assert table["feed_dict loop (failed (exit status 1): boom)"] == ["-", "-", "-", "-", "700"]


def test_parts_add_up_to_the_bound_on_epoch_1_against_the_forward_pass(tmp_path):
    setup = bench.Setup(images=40, epochs=2, batch_size=16, image_size=96, work=tmp_path)  # 32 training images
    parts = {"cores": 2.0, "forward": 0.016, "forward_cores": 1.9, "decode": 0.002, "extract": 0.020, "write": 0.0008,
             "read_hash": 0.0001, "start": 0.08, "model_key": 0.02}
    text = bench.parts_text(parts, setup)
    # Per image 20 + 0.8 + 0.1 ms; 32 of them on two cores but for the start (0.08 s), which with the model key
    # runs on one: (0.6688 - 0.08) / 2 + 0.1 = 0.394 s, against 32 x 16 ms / 2 = 0.256 s for the forward pass.
    assert "That is 20.9 ms an image where the forward pass alone takes 16.0, and 0.10 s on one core" in text
    assert "would take 0.39 s and the forward pass 0.26 s, at most 0.65x the forward-only rate" in text
    assert "keeping 1.9 of the 2 cores busy" in text and bench.parts_text(None, setup) == ""


def test_write_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{bench.BEGIN}\nold table\n{bench.END}\nafter\n")
    bench.replace_between_markers(readme, "| new |\n")
    assert readme.read_text() == f"# Title\n\nbefore\n{bench.BEGIN}\n| new |\n{bench.END}\nafter\n"
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary left beside it

    plain = tmp_path / "PLAIN.md"
    plain.write_text("# Plain\n")
    bench.replace_between_markers(plain, "| t |\n")
    assert plain.read_text() == f"# Plain\n\n{bench.BEGIN}\n| t |\n{bench.END}\n"


def test_images_fill_whole_training_batches_by_the_pipelines_split(tmp_path):
    setup = bench.Setup(images=50, epochs=2, batch_size=16, image_size=96, work=tmp_path)
    bench.make_images(setup)
    split_of = bench.split_function()
    everything = sorted(p.relative_to(tmp_path / "images").as_posix() for p in (tmp_path / "images").rglob("*.jpg"))
    assert len(everything) == 50
    train = [p for p in everything if split_of(p) == "train"]
    assert len(train) == setup.train_images == 32  # 0.8 x 50 = 40, down to whole batches
    assert {split_of(p) for p in everything} == {"train", "val", "test"}
    files, labels = bench.train_files(tmp_path / "train")
    assert sorted(Path(f).relative_to(tmp_path / "train").as_posix() for f in files) == train
    assert sorted(set(labels)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_quick_run_writes_a_table_of_our_run_keras_and_the_forward_limit(tmp_path, capsys):
    """The script's main() in this process (which has TensorFlow already), as small as it allows: two training
    batches of 8 images at 32x32 (Keras' MobileNet takes no smaller), two epochs; each variant is still a
    process of its own, whose peak memory is measured."""
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.BEGIN}\nold\n{bench.END}\noutro\n")
    bench.main(["--quick", "--images", "20", "--batch-size", "8", "--image-size", "32",
                "--variants", "cache", "keras", "forward", "--write", str(readme), "--workdir", str(tmp_path / "work"),
                "--no-parts"])
    progress = capsys.readouterr().err
    assert "total:" in progress, progress[-3000:]
    text = readme.read_text()
    assert text.startswith(f"intro\n{bench.BEGIN}\n| variant |") and text.endswith(f"{bench.END}\noutro\n")
    table = rows(text)
    # feed_dict: like forward, slower
    assert list(table) == ["ours, feature cache", "Keras 3 fit", "forward only"], progress[-3000:]
    for label, cells in table.items():
        assert all(re.fullmatch(r"[0-9.]+x?", cell) for cell in cells), (label, cells, progress[-3000:])
        assert 100 < float(cells[-1]) < 4096, (label, cells)  # peak MiB: one process each, TF loaded
    assert table["Keras 3 fit"][2] == "1.00x" and table["forward only"][3] == "1.00x"
    assert re.search(r"20 JPEGs \(16 in the training split.*batch 8, 2 epochs.*MobileNet v1 1.0/32 .*"
                     r"TensorFlow [0-9.]+, Keras [0-9.]+", text)
    # Epoch 1 with the cache part by part, in this process (a child of its own would load TensorFlow again).
    with tf.Graph().as_default():
        parts = bench.child_parts(bench.Setup(20, 2, 8, 32, tmp_path / "work"))
    assert set(parts) == {"cores", "forward", "forward_cores", "decode", "extract", "write", "read_hash", "start",
                          "model_key"} and all(value > 0 for value in parts.values()), parts
    assert parts["extract"] > parts["decode"]  # extracting decodes, then runs the backbone
    assert len(list((tmp_path / "work" / "parts_cache" / "features").glob("*/*.npz"))) == 16  # an entry an image
