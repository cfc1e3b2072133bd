"""Every figure, rendered from a small stored result set, and what each one plots."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import stored_results as sr
from bench import figures
from bench.report import analysis_cells, tidy, write_report

FIGURES = ("accuracy_heatmap", "training_curves", "poison_gallery", "mi_by_depth", "mi_by_attack", "mi_chain")


@pytest.fixture(scope="module")
def report(stored, tmp_path_factory):
    store, records, grid = stored
    return write_report(records, tmp_path_factory.mktemp("report"), "g", grid.attacks, grid.defenses,
                        arch_order=grid.archs, store=store, formats="fig,md")


@pytest.mark.parametrize("kind", FIGURES)
def test_report_renders_each_figure_as_pdf_and_png(report, kind):
    pdf, png = report.paths[f"{kind}.pdf"], report.paths[f"{kind}.png"]
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200 and pixels[..., :3].std() > 0.05, "an empty canvas"
    assert f"]({png.parent.name}/{kind}.png)" in report.markdown
    assert report.notes == ()


def test_heatmap_shows_the_mean_accuracy_of_each_attack_and_defense():
    means = {"t": pd.DataFrame([[90.0, 20.0], [30.0, float("nan")]], index=["clean", "ops"],
                                                 columns=["none", "jpeg"])}
    fig = figures.accuracy_heatmap(means)
    shown = fig.axes[0].images[0].get_array()
    assert shown[0].tolist() == [90.0, 20.0] and shown.mask[1, 1] and shown[1, 0] == 30.0
    assert [t.get_text() for t in fig.axes[0].texts] == ["90.0", "20.0", "30.0"]


def test_mi_figure_plots_the_mean_over_seeds_against_depth(stored):
    _, records, grid = stored
    cells = analysis_cells(tidy(records), {"attack": grid.attacks, "arch": grid.archs})
    fig = figures.mi_against_depth(cells, figures.AttackStyle(grid.attacks))
    mi_axes = fig.axes[0]
    ops = [bars for bars in mi_axes.containers if bars.get_label() == "ops"]
    assert len(ops) == 1  # the resnet family is the labelled line; vgg is dashed and unlabelled
    x, y = ops[0].lines[0].get_data()
    assert list(x) == [18, 34]
    assert list(y) == pytest.approx([(sr.mi("ops", a, 0) + sr.mi("ops", a, 1)) / 2 for a in ("resnet18", "resnet34")])
    dashed = [line for line in mi_axes.lines if line.get_linestyle() == "--"]
    assert {tuple(line.get_xdata()) for line in dashed} == {(11,)}  # vgg11, one point per attack
    assert [ax.get_ylabel() for ax in fig.axes] == [*figures.MI_LABELS.values(), figures.ACCURACY_LABEL]
    assert mi_axes.get_ylabel() == figures.MI_LABELS["mi_cca"]  # the default estimator leads


def test_mi_figure_names_every_attack_once_even_one_run_only_on_the_dashed_family():
    cells = pd.DataFrame({"attack": ["em", "em", "ops"], "arch": ["resnet18", "vgg11", "vgg11"],
                          **{metric: [1.0, 2.0, 3.0] for metric in (*figures.MI_LABELS, "test_acc_last")}})
    fig = figures.mi_against_depth(cells, figures.AttackStyle(("em", "ops")))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["em", "ops"]


def test_mi_figure_reads_depth_and_family_from_the_arch_plugin_not_a_variants_name():
    cells = pd.DataFrame({"attack": ["em", "em"], "arch": ["shallow_w8", "deep_w8"], "arch_plugin": ["resnet18", "resnet34"],
                          **{metric: [1.0, 2.0] for metric in (*figures.MI_LABELS, "test_acc_last")}})
    fig = figures.mi_against_depth(cells, figures.AttackStyle(("em",)))
    assert [tuple(line.get_xdata()) for line in fig.axes[0].lines if len(line.get_xdata())] == [(18, 34)]  # one line


def test_mi_by_attack_draws_one_bar_per_attack_and_arch_at_the_mean(stored):
    _, records, grid = stored
    cells = analysis_cells(tidy(records), {"attack": grid.attacks, "arch": grid.archs})
    fig = figures.mi_by_attack(cells, figures.AttackStyle(grid.attacks))
    from matplotlib.container import BarContainer

    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == list(grid.archs)
    heights = [patch.get_height() for patch in bars[0].patches]  # resnet18, attacks in grid order
    assert heights == pytest.approx([(sr.mi(a, "resnet18", 0) + sr.mi(a, "resnet18", 1)) / 2 for a in grid.attacks])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(grid.attacks)


def test_records_from_before_the_cca_estimator_still_draw_with_the_estimators_they_have(stored, tmp_path):
    store, records, grid = stored
    old = [replace(r, analysis={k: v for k, v in r.analysis.items() if k not in ("mi_cca", "cca_ridge")})
           if r.analysis else r for r in records]
    cells = analysis_cells(tidy(old), {"attack": grid.attacks, "arch": grid.archs})
    fig = figures.mi_against_depth(cells, figures.AttackStyle(grid.attacks))
    assert [ax.get_ylabel() for ax in fig.axes] == [figures.MI_LABELS["mi_gaussian"], figures.MI_LABELS["mi_ksg"],
                                                    figures.ACCURACY_LABEL]
    report = write_report(old, tmp_path / "r", "g", grid.attacks, formats="fig,md", arch_order=grid.archs, store=store)
    assert "mi_by_depth.png" in report.paths and "MI CCA" not in report.markdown


def test_the_report_refuses_an_mi_figure_that_mixes_measurement_settings(stored, tmp_path):
    store, records, grid = stored
    first = next(i for i, r in enumerate(records) if r.analysis)
    mixed = [*records[:first], replace(records[first], analysis={**records[first].analysis, "n_images": 400.0}),
             *records[first + 1:]]
    report = write_report(mixed, tmp_path / "r", "g", grid.attacks, formats="fig", arch_order=grid.archs, store=store)
    assert not any(kind.startswith("mi_") for kind in report.paths) and "accuracy_heatmap.png" in report.paths
    assert any("not drawn, the records measured MI differently (n_images 200.0 / 400.0)" in n for n in report.notes)
    assert " / setup 2 |" in write_report(mixed, tmp_path / "t", "g", formats="md").markdown  # the table keeps both


def test_colours_and_markers_follow_the_attack_everywhere():
    style = figures.AttackStyle(("clean", "em", "ops"))
    assert style("ops") == style("ops") and style("ops") != style("em")
    assert len({style(a)["color"] for a in ("clean", "em", "ops")}) == 3


def test_amplified_perturbation_is_grey_where_nothing_changed():
    delta = np.zeros((4, 4, 3))
    delta[1, 2] = [3, -3, 0]
    shown = figures.amplified(delta)
    assert shown[1, 2].tolist() == [1.0, 0.0, 0.5] and (shown[0, 0] == 0.5).all()
    assert (figures.amplified(np.zeros((2, 2, 3))) == 0.5).all()


def test_gallery_shows_one_pixel_per_ops_image(stored):
    store, records, grid = stored
    from bench.report import gallery_images

    clean, poisoned, notes = gallery_images(records, store, grid.attacks)
    assert notes == [] and list(poisoned) == ["random_noise", "ops"] and clean.shape == (4, 32, 32, 3)
    changed = (poisoned["ops"] != clean).any(axis=-1).reshape(4, -1).sum(axis=1)
    assert changed.tolist() == [1, 1, 1, 1]
    fig = figures.gallery(clean, poisoned)
    assert len(fig.axes) == 4 * (1 + 2 * 2)


def test_gallery_degrades_with_a_clear_note(stored, tmp_path):
    store, records, grid = stored
    from bench.report import gallery_images
    from bench.store import Store

    _, poisoned, notes = gallery_images(records, Store(tmp_path / "empty"), grid.attacks)
    assert poisoned == {} and all("is not in the cache" in n for n in notes) and len(notes) == 2
    moved = [replace(r, spec={**r.spec, "data": {**r.spec["data"], "name": str(tmp_path / "gone.npz")}}) for r in records]
    _, poisoned, notes = gallery_images(moved, store, grid.attacks)
    assert poisoned == {} and "clean images of" in notes[0] and "gone.npz does not exist" in notes[0]
    report = write_report(moved, tmp_path / "r", "g", formats="fig", store=store)
    assert "poison_gallery.png" not in report.paths and "accuracy_heatmap.png" in report.paths and report.notes == tuple(notes)


def test_training_curves_for_the_cells_a_query_names(stored, tmp_path):
    store, records, grid = stored
    from bench.report import histories_frame

    histories, title = histories_frame(records, tidy(records), "attack == 'ops' and arch == 'vgg11' and seed == 0",
                                       {"attack": grid.attacks})
    dataset = tidy(records).dataset.iloc[0]
    assert sorted(histories.label.unique()) == ["jpeg", "none"]  # only what varies names a line
    assert title == f"attack ops, arch vgg11, dataset {dataset}, recipe cpu_smoke*, 3 ep, seed 0"
    last = histories[(histories.label == "jpeg") & (histories.epoch == sr.EPOCHS)].test_acc.item()
    assert last == pytest.approx(sr.accuracy("ops", "jpeg", "vgg11", 0))
    default, _ = histories_frame(records, tidy(records), None, {"attack": grid.attacks, "defense": grid.defenses,
                                                                "arch": grid.archs})
    assert list(default.label.unique()) == list(grid.attacks)  # every attack, under none, on resnet18, seed 0
