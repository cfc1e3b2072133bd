"""Training throughput of our loop beside the conventional one (PIL per image through a DataLoader, fp32).

The two `test_window` rows of an arch form one pytest-benchmark group: the time of one window of
the same images, batch size, crop and flip. `test_ratio` runs them in alternation, so that load
from other processes falls on both, and holds our loop to its targets.
"""
import dataclasses

import pytest

from bench.perf import (SPEED_RECIPE, ConventionalLoop, OurLoop, compile_cost, device_name, ratio,
                        training_throughput)

LOOPS = {"ours": OurLoop, "conventional": ConventionalLoop}
H100_RESNET18_IMAGES_PER_S = 40_000  # bf16, channels_last, batch 128 (issue 7)
CPU_TINY_CNN_RATIO = 1.5  # our loop over the conventional one, tiny_cnn on a CPU (issue 7)


def window_of(plan, arch):
    return next(w for w in plan.training if w.arch == arch)


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet18"])
@pytest.mark.parametrize("loop", LOOPS)
def test_window(benchmark, loop, arch, plan, cifar):
    window = window_of(plan, arch)
    recipe = dataclasses.replace(SPEED_RECIPE, batch_size=window.batch_size)
    extra = {"num_workers": plan.num_workers} if loop == "conventional" else {}
    run = LOOPS[loop](arch, cifar(window.images), recipe, **extra)
    benchmark.group = f"training {arch}: one window of {window.images} images, batch {window.batch_size}"
    seconds = []  # each window's own timing, device synchronised: also there under --benchmark-disable (one run)
    benchmark.pedantic(lambda: seconds.append(run()), rounds=window.repeats, warmup_rounds=1, iterations=1)
    benchmark.extra_info["images_per_second"] = window.images / min(seconds[-window.repeats:])


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet18"])
def test_ratio(benchmark, arch, plan, cifar, device):
    window = window_of(plan, arch)
    recipe = dataclasses.replace(SPEED_RECIPE, batch_size=window.batch_size)
    benchmark.group = f"training {arch}: ours and conventional, alternating"
    windows = benchmark.pedantic(training_throughput, args=(arch, cifar(window.images), window.repeats,
                                                           plan.num_workers, recipe), rounds=1, iterations=1)
    best, median = ratio(windows["ours"], windows["conventional"])
    benchmark.extra_info.update({f"{name}_images_per_second_{stat}": getattr(w, stat)
                                 for name, w in windows.items() for stat in ("best", "median")})
    benchmark.extra_info.update(ratio_best=best, ratio_median=median)
    print(f"\n{arch}: ours {windows['ours'].best:,.0f} / {windows['ours'].median:,.0f} images/s, conventional "
          f"{windows['conventional'].best:,.0f} / {windows['conventional'].median:,.0f}, ratio {best:.2f}x / {median:.2f}x")
    if device.type == "cpu" and arch == "tiny_cnn":
        assert best >= CPU_TINY_CNN_RATIO, f"our loop is {best:.2f}x the conventional one, below {CPU_TINY_CNN_RATIO}x"
    if device.type == "cuda" and arch == "resnet18" and "H100" in device_name(device):
        assert windows["ours"].best >= H100_RESNET18_IMAGES_PER_S, f"{windows['ours'].best:,.0f} images/s on an H100"


def test_compile_cost(benchmark, plan, cifar):
    benchmark.group = f"torch.compile, {plan.compile_arch}"
    cost = benchmark.pedantic(compile_cost, args=(plan.compile_arch, cifar(plan.compile_images)), rounds=1,
                              iterations=1)
    benchmark.extra_info.update({f"{mode}_{k}": v for mode, c in cost.items() for k, v in c.items()})
    if "unavailable" in cost["compiled"]:
        pytest.skip(f"torch.compile does not work here: {cost['compiled']['unavailable']}")
    for c in cost.values():
        assert c["images_per_second"] > 0 and c["first_epoch_overhead_s"] is not None
