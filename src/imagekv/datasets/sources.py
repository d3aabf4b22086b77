"""Where each real dataset comes from, and how its archives map onto the published layout.

Every `Archive` names its official URLs (mirrors after the first), a publisher checksum when one is
published (else the committed lock file pins it at first download), and a route: the member prefix
to strip, the stripped paths to keep, and the folder to place them in under the dataset root. The
root is then the folder as the publisher's archive unpacks (restricted to what the loader reads),
the same a user's own copy provides, which `imagekv.datasets.load_dataset(name, root, cfg)` reads.

Sizes are approximate (GB) and only size the disk; nothing checks them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


Route = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Archive:
    """One file to fetch. `kind` is tar, tar.gz, tgz, zip, or file (placed as is under `into`)."""

    name: str  # cache file name and lock-file key (with the dataset name)
    urls: tuple[str, ...]  # empty: the user must supply a path or URL (licensed data)
    kind: str
    md5: str | None = None  # publisher checksums; None leaves the pin to the lock file
    sha256: str | None = None
    strip: str = ""  # member prefix removed; members outside it are skipped
    keep: tuple[str, ...] = ()  # fnmatch patterns over the stripped path; empty keeps all
    into: str = ""  # folder under the dataset root
    route_builder: str | None = None  # name in ROUTE_BUILDERS: a route computed from files unpacked so far
    note: str = ""

    def route(self, member: str) -> str | None:
        """Where `member` goes under the dataset root, or None to skip it."""
        if not member.startswith(self.strip):
            return None
        rest = member[len(self.strip) :]
        if not rest or (self.keep and not any(fnmatch.fnmatchcase(rest, pattern) for pattern in self.keep)):
            return None
        return str(PurePosixPath(self.into, rest)) if self.into else rest


@dataclass(frozen=True)
class HubSnapshot:
    """A Hugging Face hub repository fetched at a pinned commit."""

    repo_id: str
    revision: str  # a full commit sha, never a branch
    allow_patterns: tuple[str, ...]
    repo_type: str = "dataset"


@dataclass(frozen=True)
class DatasetSource:
    name: str
    archives: tuple[Archive, ...] = ()
    hub: HubSnapshot | None = None
    homepage: str = ""
    licence: str = ""
    download_gb: float = 0.0
    unpacked_gb: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)


# --- Dataset-specific steps -------------------------------------------------------------------

def imagenet_s_validation_route(root: Path) -> Route:
    """Route ImageNet val images (flat `ILSVRC2012_val_*.JPEG`) to `validation/<wnid>/`, keeping only
    the images that ImageNet-S annotates (read from the unpacked `validation-segmentation`)."""
    wnid_of = {png.stem: png.parent.name for png in (root / "validation-segmentation").glob("*/*.png")}
    if not wnid_of:
        raise FileNotFoundError(f"no ImageNet-S annotations under {root / 'validation-segmentation'}")

    def route(member: str) -> str | None:
        path = PurePosixPath(member)
        wnid = wnid_of.get(path.stem)
        return f"validation/{wnid}/{path.name}" if wnid and path.suffix == ".JPEG" else None

    return route


ROUTE_BUILDERS: dict[str, Callable[[Path], Route]] = {"imagenet_s_validation": imagenet_s_validation_route}

# --- The catalogue ----------------------------------------------------------------------------

COCO_LICENCE = "COCO annotations CC BY 4.0; images under their Flickr licences (terms: cocodataset.org/#termsofuse)"

SOURCES: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            name="pascal5i",
            archives=(
                Archive(
                    name="VOCtrainval_11-May-2012.tar",
                    urls=("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",),
                    kind="tar",
                    md5="6cd6e144f989b92b3379bac3b3de84fd",
                    strip="VOCdevkit/VOC2012/",
                    keep=("JPEGImages/*", "SegmentationClass/*", "ImageSets/Segmentation/*"),
                ),
            ),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
            licence="VOC: images under Flickr terms, research use (VOC2012 page)",
            download_gb=1.9,
            unpacked_gb=1.8,
            notes=(
                "md5 as recorded by torchvision's VOCSegmentation for this exact file",
                "the root is VOCdevkit/VOC2012; hsnet's val fold lists (imagekv/datasets/published/pascal5i) name "
                "VOC2012 segmentation val images only, whose masks are in SegmentationClass",
            ),
        ),
        DatasetSource(
            name="msrc",
            archives=(
                Archive(
                    name="ObjectDiscovery-data.zip",
                    urls=("http://people.csail.mit.edu/mrub/ObjectDiscovery/ObjectDiscovery-data.zip",),
                    kind="zip",
                    strip="Data/",
                    keep=("MSRC/*",),
                ),
            ),
            homepage="http://people.csail.mit.edu/mrub/ObjectDiscovery/",
            licence="research use (Rubinstein et al. 2013); MSRC images under Microsoft Research terms",
            download_gb=1.0,
            unpacked_gb=0.05,
            notes=(
                "the root is the archive's Data/ folder; layout Data/MSRC/<class>/GroundTruth/ read from the release's "
                "evaluation code, file formats inferred (see imagekv.datasets.msrc)",
            ),
        ),
        DatasetSource(
            name="imagenet_s",
            archives=(
                Archive(
                    name="ImageNetS50-a0fe9d82231f9bc4787ee76e304dfa51.zip",
                    urls=(
                        "https://github.com/UnsupervisedSemanticSegmentation/ImageNet-S/releases/download/ImageNet-S/"
                        "ImageNetS50-a0fe9d82231f9bc4787ee76e304dfa51.zip",
                    ),
                    kind="zip",
                    strip="ImageNetS50/",
                    keep=("validation-segmentation/*",),
                ),
                Archive(
                    name="ILSVRC2012_img_val.tar",
                    urls=(),
                    kind="tar",
                    md5="29b22e2961454d5413ddabcf34fc5622",
                    route_builder="imagenet_s_validation",
                    note="ImageNet val needs an image-net.org account and licence: pass its path or URL",
                ),
            ),
            homepage="https://github.com/LUSSeg/ImageNet-S",
            licence="annotations: see the ImageNet-S repository; images: ImageNet terms (non-commercial research, login)",
            download_gb=6.5,
            unpacked_gb=0.15,
            notes=(
                "ImageNet val images cannot be redistributed: the user supplies ILSVRC2012_img_val.tar "
                "(user_files={'ILSVRC2012_img_val.tar': PATH_OR_URL}); its annotated images go to validation/<wnid>/ "
                "as the ImageNet-S datapreparation_val.py places them",
                "ILSVRC2012_img_val.tar md5 as recorded by torchvision's ImageNet",
                "the root is the ImageNetS50 folder; annotation zip layout ImageNetS50/validation-segmentation/ from "
                "the ImageNet-S README; its category and validation lists are in imagekv/datasets/published/imagenet_s",
            ),
        ),
        DatasetSource(
            name="refcoco",
            archives=(
                Archive(
                    name="refcoco.zip",
                    urls=(
                        "https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco.zip",
                        "https://web.archive.org/web/20220413011718id_/"
                        "https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco.zip",
                    ),
                    kind="zip",
                    keep=("refcoco/*",),
                ),
                Archive(
                    name="train2014.zip",
                    urls=("http://images.cocodataset.org/zips/train2014.zip",),
                    kind="zip",
                    keep=("train2014/*",),
                    into="images/mscoco/images",  # where refer.py reads them (IMAGE_DIR)
                ),
            ),
            homepage="https://github.com/lichengunc/refer",
            licence="RefCOCO annotations: research use (UNC); " + COCO_LICENCE,
            download_gb=13.6,
            unpacked_gb=13.6,
        ),
        DatasetSource(
            name="spair",
            archives=(
                Archive(
                    name="SPair-71k.tar.gz",
                    urls=("http://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",),
                    kind="tar.gz",
                    strip="SPair-71k/",
                ),
            ),
            homepage="https://cvlab.postech.ac.kr/research/SPair-71k/",
            licence="research use; images from PASCAL VOC / Flickr terms",
            download_gb=0.23,
            unpacked_gb=0.3,
        ),
        DatasetSource(
            name="davis",
            archives=(
                Archive(
                    name="DAVIS-2017-trainval-480p.zip",
                    urls=("https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip",),
                    kind="zip",
                    strip="DAVIS/",
                ),
            ),
            homepage="https://davischallenge.org/davis2017/code.html",
            licence="annotations BSD; videos under their owners' terms, research use (DAVIS site)",
            download_gb=0.8,
            unpacked_gb=0.85,
        ),
        DatasetSource(
            name="coco_pool",
            archives=(
                Archive(
                    name="val2017.zip",
                    urls=("http://images.cocodataset.org/zips/val2017.zip",),
                    kind="zip",
                    keep=("val2017/*",),
                ),
                Archive(
                    name="annotations_trainval2017.zip",
                    urls=("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",),
                    kind="zip",
                    keep=("annotations/instances_val2017.json",),
                ),
            ),
            homepage="https://cocodataset.org/#download",
            licence=COCO_LICENCE,
            download_gb=1.1,
            unpacked_gb=0.85,
        ),
        DatasetSource(
            name="blink",
            hub=HubSnapshot(
                repo_id="BLINK-Benchmark/BLINK",
                revision="8b7a4835b37397d7cec3aaab2ccff63812bcd06e",
                allow_patterns=("*/val-*.parquet",),
            ),
            homepage="https://huggingface.co/datasets/BLINK-Benchmark/BLINK",
            licence="Apache-2.0 (dataset card); images from their original sources",
            download_gb=0.6,
            unpacked_gb=0.6,
            notes=("revision: a commit seen on the hub after the last asset change (2024-04-19)",),
        ),
    )
}


def source_of(name: str, sources: dict[str, DatasetSource] | None = None) -> DatasetSource:
    catalogue = SOURCES if sources is None else sources
    if name not in catalogue:
        raise KeyError(f"no download source for dataset {name!r}; known: {', '.join(sorted(catalogue))}")
    return catalogue[name]
