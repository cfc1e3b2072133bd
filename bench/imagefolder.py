"""An image-folder dataset (Tiny-ImageNet, an ImageNet-100 subset), decoded once into a uint8 cache.

Layout: `<root>/train/<class>/**/*.png|jpg|jpeg` and `<root>/test/` (or `<root>/val/`) with the
same class folders; classes are the sorted folder names of `train/`, images within a class in
sorted path order (subfolders included, as torchvision's `ImageFolder` walks them, so
Tiny-ImageNet's `train/<wnid>/images/` works as it is). Each image is decoded once (PIL, RGB), its
shorter side resized to `image_size` (bilinear, antialiased as PIL resizes down) and centre-cropped
to a square: torchvision's `Resize(image_size)` then `CenterCrop(image_size)` on the PIL image, the
evaluation transform ImageNet users expect, done once; an image already that size is kept as it is.

The decoded splits are stored as uint8 (N, 3, H, W) `.npy` files under the cache root, in a
folder keyed by the image files' names, labels and content (the SHA-256 of every file's bytes, read
again at every load: a file replaced by another of the same size and modification time gives
another cache) and the size asked for, and memory-mapped when read: a second load reads no image and copies nothing into memory until the
pages are touched, so a set larger than the memory trains from the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.config import ConfigError
from bench.readers import bombs_refused, gigabytes, load_npy, read_rgb, require_memory
from bench.store import content_sha256, process_alive

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # any case
TEST_FOLDERS = ("test", "val")  # the first that exists is the test split
# Part of the cache key: a change to how images are decoded must not serve the old cache.
DECODE_VERSION = "pil-rgb-shorter-side-bilinear-centre-crop-v1"
SPLITS = ("train", "test")
DECODE_CHUNK = 1024  # images handed to the decoding threads at a time


@dataclass(frozen=True)
class FolderSet:
    root: Path
    image_size: int  # pixels, each side
    cache_root: Path  # the cache folders go under it

    @property
    def where(self) -> str:
        return f"dataset folder:{self.root}"

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
        """x_train, y_train, x_test, y_test (images as NHWC views of the mapped NCHW cache), classes."""
        classes, files = self.listing()
        remove_abandoned(self.cache_root)  # every load: what a killed decode left never stays
        cache = self.cache_root / f"{self.root.name}-{self.image_size}px-{self.key(files)}"
        if not (cache / "classes.json").is_file():
            self.decode(classes, files, cache)
        arrays = []
        for split in SPLITS:
            images = load_npy(cache / f"{split}_images.npy", mmap_mode="c")  # copy-on-write: the file is never changed
            arrays += [images.transpose(0, 2, 3, 1), load_npy(cache / f"{split}_labels.npy")]
        return (*arrays, tuple(json.loads((cache / "classes.json").read_text())))

    def listing(self) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
        """The classes and, per split, every image file with its label; a layout error names what is wrong."""
        train = self.root / "train"
        if not self.root.is_dir():
            raise ConfigError(f"{self.where}: no such folder")
        if not train.is_dir():
            raise ConfigError(f"{self.where}: no train/ folder; the layout is train/<class>/*.png|jpg and test/<class>/...")
        test = next((self.root / t for t in TEST_FOLDERS if (self.root / t).is_dir()), None)
        if test is None:
            raise ConfigError(f"{self.where}: no test/ (or val/) folder beside train/")
        classes = _class_folders(train)
        if len(classes) < 2:
            raise ConfigError(f"{self.where}: train/ has {len(classes)} class folder(s); a classification benchmark needs two or more")
        test_classes = _class_folders(test)
        if test_classes != classes:
            missing, extra = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
            raise ConfigError(f"{self.where}: {test.name}/ must have the class folders of train/; "
                              f"missing in {test.name}/: {missing or 'none'}, not in train/: {extra or 'none'}")
        files = {}
        for split, folder in zip(SPLITS, (train, test)):
            files[split], seen = [], {}
            for label, name in enumerate(classes):
                images = _images_under(folder / name, self.where, seen)
                if not images:
                    raise ConfigError(f"{self.where}: {folder.name}/{name} holds no {'/'.join(IMAGE_SUFFIXES)} image")
                files[split] += [(path, label) for path in images]
        return classes, files

    def key(self, files: dict[str, list[tuple[Path, int]]]) -> str:
        """SHA-256 (16 hex digits) of every image's path, label and bytes, the size asked for and the
        decoder: content, not sizes and times, decides which cache a folder gets. Files are read in
        blocks by threads (reading is far cheaper than decoding), so no file is held whole; a
        process reads a file once while its inode, size and times stay the same
        (`bench.store.content_sha256`: a replacement has a new change time, which no program sets)."""
        digest = hashlib.sha256(f"{DECODE_VERSION}|{self.image_size}".encode())
        with ThreadPoolExecutor(_threads()) as pool:
            for split in SPLITS:
                paths = [path for path, _ in files[split]]
                for (path, label), content in zip(files[split], pool.map(content_sha256, paths)):
                    digest.update(f"|{split}|{path.relative_to(self.root)}|{label}|{content}".encode())
        return digest.hexdigest()[:16]

    def decode(self, classes: tuple[str, ...], files: dict[str, list[tuple[Path, int]]], cache: Path) -> None:
        """Every image decoded into `cache`, written beside it first and moved in place, so that an
        interrupted decode leaves no cache that looks complete (and `load` removes what a killed one left)."""
        self.check_room(sum(len(files[split]) for split in SPLITS))
        partial = cache.with_name(cache.name + partial_suffix())
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with bombs_refused():
                self._decode_into(partial, classes, files)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        try:
            partial.rename(cache)
        except OSError:  # another process finished the same cache first: use that one
            shutil.rmtree(partial, ignore_errors=True)

    def check_room(self, count: int) -> None:
        """The cache's size on the disk it goes to, and one decoded image per thread in memory, before
        anything is allocated: an `image_size` of 10**5 is one line, not terabytes asked for."""
        per_image = 3 * self.image_size ** 2
        total = count * per_image
        disk = _existing_parent(self.cache_root)
        free = shutil.disk_usage(disk).free
        if total > free:
            raise ConfigError(f"data.image_size: {self.image_size} px makes a cache of {gigabytes(total)} for "
                              f"{count:,} images of {self.where}; {disk} has {gigabytes(free)} free")
        # A decoded image, its resized copy and its crop, for each decoding thread at once.
        require_memory(3 * per_image * _threads(), f"data.image_size: {self.image_size} px, {self.where}")

    def _decode_into(self, partial: Path, classes: tuple[str, ...], files: dict[str, list[tuple[Path, int]]]) -> None:
        from tqdm import tqdm  # here: only a first load decodes

        size = self.image_size
        # Threads: PIL releases the GIL while it decodes and resizes, so the cores share the work.
        with ThreadPoolExecutor(_threads()) as pool:
            for split in SPLITS:
                paths = [path for path, _ in files[split]]
                out = np.lib.format.open_memmap(partial / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                                                shape=(len(paths), 3, size, size))
                with tqdm(total=len(paths), desc=f"decoding {self.root.name}/{split}", unit="img", leave=False) as bar:
                    for start in range(0, len(paths), DECODE_CHUNK):  # chunks: decoded images never pile up in memory
                        for i, image in enumerate(pool.map(self.decode_one, paths[start : start + DECODE_CHUNK]), start):
                            out[i] = image.transpose(2, 0, 1)
                        bar.update(min(DECODE_CHUNK, len(paths) - start))
                out.flush()
                del out
                np.save(partial / f"{split}_labels.npy", np.array([label for _, label in files[split]], np.int64))
        (partial / "classes.json").write_text(json.dumps(list(classes)))

    def decode_one(self, path: Path) -> np.ndarray:
        """One image as uint8 (size, size, 3): RGB, shorter side resized to `image_size`, centre-cropped."""
        from PIL import Image

        size = self.image_size
        image = read_rgb(path, self.where)
        width, height = image.size
        short, long = sorted((width, height))
        long = int(size * long / short)  # torchvision's Resize(size) truncates the longer side
        resized = (size, long) if width <= height else (long, size)
        if resized != (width, height):
            image = image.resize(resized, Image.Resampling.BILINEAR)
        left, top = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
        return np.asarray(image.crop((left, top, left + size, top + size)))


def _class_folders(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))


def _images_under(folder: Path, where: str, seen: dict) -> list[Path]:
    """Every image file under `folder`, following links to folders but each real folder once
    (`seen`: (device, inode) -> the path it was first reached by, shared by the class folders of a
    split): a link back up the tree (a loop), or a folder reached twice, would count its images again
    or forever, and is refused."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        stat = os.stat(parent)
        real = (stat.st_dev, stat.st_ino)
        if real in seen:
            what = "a symbolic link loop" if Path(parent).is_relative_to(seen[real]) else "one folder reached twice"
            raise ConfigError(f"{where}: {parent} is {seen[real]} again ({what}); each folder of images may be "
                              "reached once, or its images would count twice")
        seen[real] = parent
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(parent) / n for n in names if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")]
    return sorted(found)


def _threads() -> int:
    return max(os.cpu_count() or 1, 1)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


PARTIAL = ".partial-"  # <cache>.partial-<host>-<pid>: a decode under way, or one that was killed


def partial_suffix() -> str:
    return f"{PARTIAL}{socket.gethostname()}-{os.getpid()}"


def remove_abandoned(cache_root: Path) -> list[Path]:
    """Remove the partial caches under `cache_root` whose decoding process is gone (killed: a kill
    runs no cleanup), and return them. Only this host's are judged (a pid means nothing on another
    host sharing the folder); a name with a pid only, without a host, is taken as this host's."""
    removed = []
    for partial in cache_root.glob(f"*{PARTIAL}*") if cache_root.is_dir() else []:
        owner = partial.name.rsplit(PARTIAL, 1)[1]
        host, _, pid = owner.rpartition("-")
        if not pid.isdigit() or (host and host != socket.gethostname()) or process_alive(int(pid)):
            continue
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    return removed


    return True
