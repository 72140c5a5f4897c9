"""The pipeline a team has before converting: an ImageFolder tree read by PIL, with torchvision's classic
training transforms (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize on the CPU).

With torchvision installed, its own transforms run; torchvision is not a dependency, so without it the
transforms are re-stated here with torchvision's semantics and costs (same crop-box draw from torch's RNG,
PIL crop + bilinear antialiased resize, float ToTensor, CPU Normalize), and the report says which ran.
The profiler times them stage by stage and compares them with fastload's fused ops on the same files.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_imagefolder(path: str | os.PathLike) -> bool:
    """A directory whose subdirectories (classes) hold image files."""
    p = Path(path)
    if not p.is_dir():
        return False
    for d in p.iterdir():
        if d.is_dir() and any(f.suffix.lower() in IMG_EXTENSIONS for f in d.iterdir() if f.is_file()):
            return True
    return False


def list_images(root: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """``([(path, class_index), ...], classes)`` in torchvision's ImageFolder order."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = []
    for c, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), c))
    return samples, classes


def pil_loader(path: str) -> Image.Image:
    """torchvision's default loader: open with PIL and convert to RGB (this decodes)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


class RandomResizedCrop:
    """torchvision ``RandomResizedCrop(size)`` on a PIL image (box drawn from torch's RNG, crop, bilinear
    antialiased resize)."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), scale, ratio

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size})"

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,)).item())
                j = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return i, j, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image) -> Image.Image:
        i, j, h, w = self.box(*img.size)
        return img.crop((j, i, j + w, i + h)).resize((self.size, self.size), Image.BILINEAR)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1).item() < self.p:
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img


class ToTensor:
    """torchvision ``ToTensor``: HWC uint8 -> CHW float32 in [0, 1]."""

    def __repr__(self) -> str:
        return "ToTensor()"

    def __call__(self, img: Image.Image) -> torch.Tensor:
        t = torch.from_numpy(np.array(img, np.uint8, copy=True))
        t = t.view(img.size[1], img.size[0], len(img.getbands())).permute(2, 0, 1).contiguous()
        return t.to(torch.float32).div(255)


class Normalize:
    """torchvision ``Normalize(mean, std)`` on the CPU (not in place: clones, as torchvision does)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __repr__(self) -> str:
        return "Normalize(imagenet)"

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone().sub_(self.mean).div_(self.std)


class Compose:
    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return " -> ".join(repr(t) for t in self.transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


def torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


def classic_train_transform(size: int = 224) -> Any:
    """The torchvision ImageNet training pipeline most PyTorch code starts from: torchvision's own
    transforms when torchvision is installed, else the re-statement above."""
    if torchvision_version() is not None:
        from torchvision import transforms as T
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), Normalize()])


class PILImageFolder(torch.utils.data.Dataset):
    """torchvision's ``ImageFolder`` (``samples``, ``loader``, ``transform``), without torchvision."""

    def __init__(self, root: str | os.PathLike, transform: Any = None):
        self.root = str(root)
        self.samples, self.classes = list_images(root)
        if not self.samples:
            raise FileNotFoundError(f"{root}: no images in class subdirectories")
        self.loader = pil_loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"PILImageFolder({self.root!r}, {len(self)} images)"

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label
