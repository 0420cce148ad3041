"""Which folders and files of a user's image tree count: class folders and image files, never what editors
and operating systems leave beside them.

torchvision's ImageFolder takes every folder as a class and every file with an image extension as an
image, so Jupyter's ``.ipynb_checkpoints`` becomes an eleventh class and macOS's ``._photo.jpg``
resource forks (and a zip's ``__MACOSX/`` tree) become unreadable "images". Here anything hidden
(a name starting with ``.``) or named ``__MACOSX`` is left out, at any depth below the folder given.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

OS_METADATA = ("__MACOSX",)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in OS_METADATA


def class_folders(split_dir: Path) -> list[str]:
    """The class folder names of one split, sorted (label ``i`` is the ``i``-th)."""
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not is_hidden(entry.name))


def is_image_file(path: str | Path, root: Path) -> bool:
    """An image extension ImageFolder reads, and nothing hidden between ``root`` and the file."""
    relative = Path(path).relative_to(root)
    return relative.suffix.lower() in IMG_EXTENSIONS and not any(is_hidden(part) for part in relative.parts)


def image_files_under(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (sorted), as :func:`is_image_file` counts them."""
    return sorted(path for path in folder.rglob("*") if path.is_file() and is_image_file(path, folder))
