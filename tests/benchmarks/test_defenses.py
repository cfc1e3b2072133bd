"""Each set-level defense over 10,000 CIFAR-10 images, and set-level JPEG beside a per-image PIL loop."""
import pytest

from bench.perf import jpeg_speed, pil_jpeg, ratio, set_level_defenses, synchronized
from defenses.base import create_defense

JPEG_RATIO = 3.0  # set-level JPEG over the per-image PIL loop, quality 10 (issue 7)


@pytest.mark.parametrize("name", set_level_defenses())
def test_prepare(benchmark, name, plan, cifar):
    data = cifar(plan.defense_images)
    defense = create_defense(name, num_classes=data.num_classes)
    benchmark.group = f"set-level defense, {plan.defense_images} images"
    out = benchmark.pedantic(synchronized(defense.prepare, data.device), args=(data.images, data.labels), rounds=3,
                             warmup_rounds=1, iterations=1)
    assert out.shape == data.images.shape


def test_pil_jpeg_loop(benchmark, plan, cifar):
    images = cifar(plan.defense_images).images.cpu()
    benchmark.group = f"set-level defense, {plan.defense_images} images"
    benchmark.pedantic(pil_jpeg, args=(images, 10), rounds=3, iterations=1)


def test_jpeg_ratio(benchmark, plan, cifar):
    images = cifar(plan.jpeg_images).images.cpu()
    benchmark.group = "JPEG: set-level and PIL loop, alternating"
    windows = benchmark.pedantic(jpeg_speed, args=(images, plan.jpeg_repeats), rounds=1, iterations=1)
    best, median = ratio(windows["set-level"], windows["PIL loop"])
    benchmark.extra_info.update(ratio_best=best, ratio_median=median)
    print(f"\nJPEG, {len(images)} images: set-level {min(windows['set-level'].seconds):.2f} s, "
          f"PIL {min(windows['PIL loop'].seconds):.2f} s, ratio {best:.2f}x / {median:.2f}x")
    assert best >= JPEG_RATIO, f"set-level JPEG is {best:.2f}x the PIL loop, below {JPEG_RATIO}x"
