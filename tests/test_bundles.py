"""Poisons you can publish: bundles exported from the cache or converted from a release, verified
against the clean data, and read by `external`; a file replaced under the same path runs its cells
again. Real files and real `bench` processes throughout."""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.bundles import BundleError, read_bundle
from bench.config import ConfigError
from bench.publish import convert_release, export_cached, verify_bundle
from bench.store import Store
from conftest import synthetic_arrays
from methods.base import BudgetError
from test_cli import bench, write_grid


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def shifted(clean: np.ndarray, by: int) -> np.ndarray:
    return np.clip(clean.astype(np.int16) + by, 0, 255).astype(np.uint8)


def on_a_subset(grid: Path) -> None:
    grid.write_text(grid.read_text().replace("[data]\n", "[data]\ntrain_size = 100\n"))


@pytest.fixture
def cached_poison(tmp_path, tiny_npz) -> tuple[Path, str]:
    """A results folder whose cache holds random_noise's poison of 100 of tiny_npz's 200 images."""
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["random_noise"])
    on_a_subset(grid)
    out = tmp_path / "out"
    bench("run", "--grid", str(grid), "--out", str(out))
    listed = bench("poison", "list", "--out", str(out)).stdout.splitlines()
    assert listed[0] == f"1 cached poisons in {out}:" and "random_noise" in listed[1] and "100 images" in listed[1]
    return out, listed[1].split()[0]


def test_an_exported_bundle_describes_itself_verifies_and_evaluates_as_external(tmp_path, tiny_npz, cached_poison):
    out, key = cached_poison
    bundle = tmp_path / "bundle"
    bench("poison", "export", key, str(bundle), "--out", str(out))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["attack"] == "random_noise" and manifest["seed"] == 0 and manifest["dataset"] == str(tiny_npz)
    assert manifest["count"] == 100 and manifest["split_size"] == 200 and manifest["norm"] == "linf"
    assert manifest["sha256"] == hashlib.sha256((bundle / "images.npz").read_bytes()).hexdigest()
    assert manifest["measured"]["linf"] == pytest.approx(8 / 255) and manifest["measured"]["l0"] == 1024
    assert manifest["source"] == {**manifest["source"], "kind": "cache", "key": key}
    assert manifest["provenance"]["torch"] == torch.__version__ and manifest["data_fingerprint"] == records(out)[0]["data_fingerprint"]
    verified = bench("poison", "verify", str(bundle)).stdout
    assert verified.startswith(f"{bundle}: ok, 100 images of random_noise (seed 0)") and "Linf 8/255 claimed, Linf 8/255 measured" in verified
    # The same cells on the bundle, through external: the poisoned images are the cached ones.
    grid = write_grid(tmp_path / "e.toml", tiny_npz, ["external"],
                      extra=f'[config.external]\npath = "{bundle}"\neps = 0.0313725491')
    on_a_subset(grid)
    bench("run", "--grid", str(grid), "--out", str(tmp_path / "out2"))
    [record] = records(tmp_path / "out2")
    assert record["status"] == "done" and record["poison"]["measured"] == pytest.approx(8 / 255, abs=1e-6)
    # A grid the manifest disagrees with (more images than the bundle holds, another budget) is refused
    # before any work, in one line naming the field, both values and the file.
    whole = write_grid(tmp_path / "w.toml", tiny_npz, ["external"], extra=f'[config.external]\npath = "{bundle}"')
    refused = bench("run", "--grid", str(whole), "--results", str(tmp_path / "out3"), check=False)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
        f"Error: attack external: the bundle's count is 100, fewer than the grid's 200 training images "
        f"({bundle / 'manifest.json'})")
    assert not records(tmp_path / "out3")
    other_eps = write_grid(tmp_path / "x.toml", tiny_npz, ["external"],
                           extra=f'[config.external]\npath = "{bundle}"\neps = "16/255"')
    on_a_subset(other_eps)
    refused = bench("run", "--grid", str(other_eps), "--results", str(tmp_path / "out4"), check=False)
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: attack external: the bundle's budget is 0.0313725 (8/255), the grid's external.eps is 0.0627451 "
        f"(16/255) ({bundle / 'manifest.json'})")
    assert not records(tmp_path / "out4")


def test_a_bundle_that_was_altered_lies_about_its_budget_or_fits_other_data_is_refused(tmp_path, tiny_npz, cached_poison):
    out, key = cached_poison
    bundle = tmp_path / "bundle"
    export_cached(Store(out), key, bundle)
    verify_bundle(bundle)
    # Other clean images: the manifest's fingerprint says so.
    other = tmp_path / "other.npz"
    np.savez(other, **synthetic_arrays(seed=1))
    with pytest.raises(ConfigError, match="made from other clean images"):
        verify_bundle(bundle, str(other))
    # A manifest that claims less than its images hold.
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "budget": 4 / 255}))
    with pytest.raises(BudgetError, match="breaks its manifest's claim"):
        verify_bundle(bundle)
    # Images altered after export.
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    payload = bytearray((bundle / "images.npz").read_bytes())
    payload[-200] ^= 1
    (bundle / "images.npz").write_bytes(bytes(payload))
    with pytest.raises(BundleError, match="does not match the manifest's"):
        read_bundle(bundle)
    grid = write_grid(tmp_path / "e.toml", tiny_npz, ["external"], extra=f'[config.external]\npath = "{bundle}"')
    on_a_subset(grid)
    bench("run", "--grid", str(grid), "--out", str(tmp_path / "out2"), check=False)
    [failed] = records(tmp_path / "out2")
    assert failed["error"]["type"] == "BundleError" and failed["attempts"] == 1, "a bad file is not retried"
    # A folder that is not a bundle, and a newer format.
    with pytest.raises(BundleError, match="no manifest.json"):
        read_bundle(tmp_path)
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(BundleError, match="bundle version 99"):
        read_bundle(bundle)


def write_png_folder(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")


def test_a_tap_or_ar_png_release_converts_to_a_bundle_that_verifies(tmp_path, tiny_npz):
    clean = np.load(tiny_npz)["x_train"]
    release = tmp_path / "ar-cifar-10"
    write_png_folder(release / "data", shifted(clean, -3))  # the AR release keeps its PNGs in data/
    proc = bench("poison", "convert", str(release), str(tmp_path / "bundle"), "--attack", "ar", "--data", str(tiny_npz),
                 "--norm", "linf", "--eps", "8/255")
    assert proc.stdout.startswith(f"wrote {tmp_path / 'bundle'}: 200 images of ar") and "Linf 8/255 claimed, Linf 3/255 measured" in proc.stdout
    manifest = verify_bundle(tmp_path / "bundle").manifest
    assert manifest.source["format"] == "png-folder" and manifest.source["kind"] == "release"
    assert np.array_equal(read_bundle(tmp_path / "bundle").images, shifted(clean, -3))
    # Over the claimed budget: refused, in one line.
    loud = tmp_path / "loud"
    write_png_folder(loud, shifted(clean, 12))
    proc = bench("poison", "convert", str(loud), str(tmp_path / "b2"), "--attack", "tap", "--data", str(tiny_npz),
                 check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 1 and len(errors) == 1 and "breaks its linf budget" in errors[0]
    assert not (tmp_path / "b2" / "manifest.json").exists()


def test_em_noise_converts_as_the_official_loader_trains_on_it_or_with_both_signs(tmp_path, tiny_npz):
    data = np.load(tiny_npz)
    clean, labels = data["x_train"], data["y_train"]
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(200, 3, 32, 32, generator=g) * 2 - 1) * (8 / 255)
    torch.save(noise, tmp_path / "perturbation.pt")
    steps = noise.mul(255).permute(0, 2, 3, 1).numpy()
    official = convert_release(tmp_path / "perturbation.pt", tmp_path / "official", fmt="auto", data=str(tiny_npz),
                               attack="em", norm="linf", eps=8 / 255)
    both = convert_release(tmp_path / "perturbation.pt", tmp_path / "full", fmt="em-pt", data=str(tiny_npz),
                           attack="em", norm="linf", eps=8 / 255, em_noise="full")
    expected_official = np.clip(clean + np.clip(steps, 0, 255), 0, 255).astype(np.uint8)
    expected_full = np.clip(clean + steps, 0, 255).astype(np.uint8)
    assert np.array_equal(read_bundle(tmp_path / "official").images, expected_official)
    assert np.array_equal(read_bundle(tmp_path / "full").images, expected_full)
    assert (read_bundle(tmp_path / "official").images.astype(int) >= clean).all(), "the positive half only"
    assert official.source["em_noise"] == "official" and both.source["em_noise"] == "full"
    # Class-wise noise: one per class.
    torch.save(noise[:10], tmp_path / "classwise.pt")
    convert_release(tmp_path / "classwise.pt", tmp_path / "cw", fmt="em-pt", data=str(tiny_npz), attack="em_classwise",
                    norm="linf", eps=8 / 255, em_noise="full")
    expected = np.clip(clean + noise[:10].mul(255).permute(0, 2, 3, 1).numpy()[labels], 0, 255).astype(np.uint8)
    assert np.array_equal(read_bundle(tmp_path / "cw").images, expected)
    verify_bundle(tmp_path / "cw")


class Payload:
    """What a hostile pickle would carry: any object at all."""


def test_pickles_of_arbitrary_objects_and_broken_files_are_refused_with_a_reason(tmp_path, tiny_npz):
    torch.save({"noise": torch.zeros(200, 3, 32, 32), "extra": Payload()}, tmp_path / "perturbation.pt")
    with pytest.raises(ConfigError, match="refused, not a tensor-only file"):
        convert_release(tmp_path / "perturbation.pt", tmp_path / "b", fmt="em-pt", data=str(tiny_npz), attack="em",
                        norm="linf", eps=8 / 255)
    torch.save(torch.zeros(200, 3, 32, 32), tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:5000])
    with pytest.raises(ConfigError, match="unreadable as a torch file, truncated"):
        convert_release(tmp_path / "cut.pt", tmp_path / "b", fmt="em-pt", data=str(tiny_npz), attack="em",
                        norm="linf", eps=8 / 255)
    with open(tmp_path / "poison.pkl", "wb") as f:
        pickle.dump(np.zeros((200, 32, 32, 3), np.uint8), f)
    with pytest.raises(ConfigError, match="a pickle is refused"):
        convert_release(tmp_path / "poison.pkl", tmp_path / "b", fmt="auto", data=str(tiny_npz), attack="x",
                        norm="linf", eps=8 / 255)
    np.savez(tmp_path / "objects.npz", x_train=np.array([Payload()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        convert_release(tmp_path / "objects.npz", tmp_path / "b", fmt="npz", data=str(tiny_npz), attack="x",
                        norm="linf", eps=8 / 255)
    assert not (tmp_path / "b").exists()


def test_an_external_file_replaced_at_the_same_path_runs_its_done_cells_again(tmp_path, tiny_npz):
    clean = np.load(tiny_npz)["x_train"]
    poison = tmp_path / "p.npz"
    np.savez(poison, x_train=shifted(clean, 2))
    grid = write_grid(tmp_path / "g.toml", tiny_npz, ["external", "clean"],
                      extra=f'[config.external]\npath = "{poison}"\neps = 0.0313725491')
    out = tmp_path / "out"
    bench("run", "--grid", str(grid), "--out", str(out))
    first = {r["spec"]["attack"]: r for r in records(out)}
    assert "input_fingerprint" not in first["clean"], "attacks that read no file keep their records as they were"
    np.savez(poison, x_train=shifted(clean, 3))
    again = bench("run", "--grid", str(grid), "--out", str(out))
    assert "1 cells run, 1 already done" in again.stdout and "its attack's file was replaced" in again.stderr
    second = {r["spec"]["attack"]: r for r in records(out)}
    assert second["external"]["input_fingerprint"] != first["external"]["input_fingerprint"]
    assert second["external"]["poison"]["measured"] == pytest.approx(3 / 255, abs=1e-6)
    [kept] = (out / "records" / "superseded").glob("*.json")
    assert json.loads(kept.read_text())["input_fingerprint"] == first["external"]["input_fingerprint"]
