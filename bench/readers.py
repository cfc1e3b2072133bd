"""Files from outside read within bounds: no code run by decoding them, no allocation they did not earn.

- Images: PIL with its decoders limited to `IMAGE_FORMATS` (a PostScript or any other file named
  `.png` is refused, never handed to an external program such as Ghostscript), at most
  `MAX_IMAGE_PIXELS` pixels (a decompression bomb is one error, not a killed process), 16-bit
  greyscale scaled to 8 bits rather than clipped to white.
- `.npy` arrays, alone or inside an `.npz`: the header is read first, and the size it declares is
  checked against the bytes the file holds and the memory this machine has before any array is
  allocated; a zip that is not one is an error naming the file.

Every refusal is a `ConfigError` naming the file and what is allowed, so the commands print one line.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from bench.config import ConfigError

IMAGE_FORMATS = ("PNG", "JPEG")  # the decoders PIL may use; docs/running.md names the same
# PIL's own warning threshold (Image.MAX_IMAGE_PIXELS): 89,478,485 pixels, 256 MB of RGB. Larger
# images are refused, not decoded: shrink them first.
MAX_IMAGE_PIXELS = 89_478_485
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # how PIL opens a 16-bit greyscale PNG
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error)


def gigabytes(nbytes: int) -> str:
    """A size as people read it: 3.1 GB, 12.0 MB, 1,000 bytes."""
    if nbytes >= 2**63:  # past what any size can be counted in (torch's overflow)
        return "over 9 billion GB"
    if nbytes >= 1e8:
        return f"{nbytes / 1e9:,.1f} GB"
    return f"{nbytes / 1e6:,.1f} MB" if nbytes >= 1e6 else f"{nbytes:,} bytes"


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable plus free swap (Linux), else the physical
    memory; None where neither can be read (no check then)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return (int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: int, what: str) -> None:
    """ConfigError where `nbytes` cannot be held in this machine's memory; `what` names the file or field."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise ConfigError(f"{what}: needs {gigabytes(nbytes)} of memory, more than the {gigabytes(free)} "
                          "this machine has available")


# --- images ------------------------------------------------------------------------------------

@contextlib.contextmanager
def bombs_refused() -> Iterator[None]:
    """PIL's decompression-bomb warning raised as an error while decoding (`read_rgb` turns it into
    one line). Entered by the thread that starts the decoding: the filter is process-wide."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def read_rgb(path: Path, where: str):
    """The PNG or JPEG image at `path` as an 8-bit RGB PIL image; ConfigError naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height}")
            return _to_rgb(opened, path, where)
    except UnidentifiedImageError:
        raise ConfigError(f"{where}: cannot read image {path}: it is not a {' or '.join(IMAGE_FORMATS)} file, "
                          "the formats read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(f"{where}: cannot read image {path}: more than {MAX_IMAGE_PIXELS:,} pixels (a "
                          "decompression bomb, or an image to shrink first); images up to that size are read") from None
    except _DECODE_ERRORS as err:
        raise ConfigError(f"{where}: cannot read image {path} ({type(err).__name__}: {err})") from None


def _to_rgb(image, path: Path, where: str):
    """RGB with 8 bits a channel. A 16-bit greyscale image is scaled (65535 -> 255): PIL's own
    conversion would clip every value above 255 to white."""
    from PIL import Image

    if image.mode not in SIXTEEN_BIT_MODES:
        return image.convert("RGB")
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ConfigError(f"{where}: cannot read image {path}: values from {values.min()} to {values.max()}; a "
                          "16-bit image holds 0 to 65535")
    scaled = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


# --- .npy and .npz -----------------------------------------------------------------------------

def npy_header(fp: IO[bytes], size: int, where: str, in_memory: bool = True) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an .npy stream declares, read from its header only, checked against the
    `size` bytes the stream holds (header included) and, for an array to be held `in_memory` (not
    memory-mapped), this machine's memory; `fp` is left after the header."""
    start = fp.tell()
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"npy format version {version[0]}.{version[1]}; 1.0 and 2.0 are read")
    except (ValueError, EOFError, SyntaxError) as err:
        raise ConfigError(f"{where}: not a readable .npy array ({err})") from None
    if dtype.hasobject:
        raise ConfigError(f"{where}: an array of Python objects, which would need pickle (read with allow_pickle "
                          "off: unpickling runs whatever code it names); numeric arrays are read")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a declared shape cannot overflow here
    held = size - (fp.tell() - start)
    if nbytes > held:
        raise ConfigError(f"{where}: its header declares a {dtype} array of shape {shape} ({gigabytes(nbytes)}), "
                          f"the file holds {gigabytes(max(held, 0))}")
    if in_memory:
        require_memory(nbytes, f"{where} (a {dtype} array of shape {shape})")
    return shape, dtype


def load_npy_bytes(payload: bytes, where: str) -> np.ndarray:
    """An .npy held in memory, its header checked first (`npy_header`); never unpickled."""
    npy_header(io.BytesIO(payload), len(payload), where)
    return np.load(io.BytesIO(payload), allow_pickle=False)


def load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """An .npy file, its header checked first (`npy_header`; a memory-mapped one is not held in
    memory, so only its size against the file's); never unpickled."""
    with open(path, "rb") as f:
        npy_header(f, os.fstat(f.fileno()).st_size, str(path), in_memory=mmap_mode is None)
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def check_npz(source: Path | bytes, where: str) -> None:
    """Every array of an .npz (a path, or its bytes) checked from its header (`npy_header`) before
    any is read; a file that is not a zip, or a member that is not an .npy, is a ConfigError."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    total = 0
    try:
        with zipfile.ZipFile(stream) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                with archive.open(member) as fp:
                    shape, dtype = npy_header(_Counting(fp), member.file_size, f"{where}: {member.filename}")
                total += math.prod(shape) * dtype.itemsize
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, zlib.error) as err:
        raise ConfigError(f"{where}: not a readable .npz (a zip of .npy arrays): {err}") from None
    require_memory(total, f"{where} (its arrays together)")  # each fits alone, all of them are read


class _Counting:
    """A read-only stream that knows its position (a zip member's may not seek)."""

    def __init__(self, fp: IO[bytes]):
        self._fp, self._pos = fp, 0

    def read(self, n: int = -1) -> bytes:
        data = self._fp.read(n)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos
