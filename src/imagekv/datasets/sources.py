"""Where each real dataset comes from, and how its archives map onto the published layout.

Every `Archive` names its official URLs (mirrors after the first), a checksum when one is published
(else the committed lock file pins it at first download, which the log says), and a route: the member prefix
to strip, the stripped paths to keep, and the folder to place them in under the dataset root. The
root is then the folder as the publisher's archive unpacks (restricted to what the loader reads),
the same a user's own copy provides, which `imagekv.datasets.load_dataset(name, root, cfg)` reads.

Sizes are approximate (GB) and only size the disk; nothing checks them.

Checksums: where the publisher lists none, a checksum that a well-known loader recorded for the same
URL is used, with its source beside it (torchvision, TensorFlow Datasets); the hub's LFS pointers give
the sha256 of every BLINK file. Found for none: MSRC, RefCOCO, SPair-71k (searched: the sites, the
refer and hsnet repositories, DIFT, TFDS); those three are trusted on first use and pinned. URLs are
https wherever the publisher serves it; COCO's own name serves a certificate for s3.amazonaws.com only
(cocodataset/cocodataset.github.io#60), so its bucket is reached by S3's path-style https address first
and plain http is kept after it, safe because the sha256 is checked.
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
    sha256: tuple[tuple[str, str], ...] = ()  # (path in the repository, the LFS pointer's sha256)

    def published_sha256(self, path: str) -> str | None:
        return dict(self.sha256).get(path)


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

def coco_urls(path: str) -> tuple[str, ...]:
    """COCO's bucket over https (path-style S3: images.cocodataset.org's own https name serves a certificate
    for s3.amazonaws.com, cocodataset/cocodataset.github.io#60), then the site's plain http address."""
    return (f"https://s3.amazonaws.com/images.cocodataset.org/{path}", f"http://images.cocodataset.org/{path}")


# The hub's "Git LFS Details" of each file at the pinned revision (huggingface.co/datasets/BLINK-Benchmark/
# BLINK/blob/<revision>/<path>): the sha256 of the file's content, which the repository commits.
BLINK_VAL_SHA256 = tuple(
    (f"{subtask}/val-00000-of-00001.parquet", sha256)
    for subtask, sha256 in (
        ("Art_Style", "9400707b7d0e54809146f0f6e9eec058803bef7f50b58b7d21c75b95b90e37d4"),
        ("Counting", "7404d7b8e3c4a97a9ab5015739ad3b76a505bbe073286c8c3412f60f4d2b13e5"),
        ("Forensic_Detection", "48499d694cfffe81fa1eac3dcb1a84804d30cee8ffb501d7ff7020d8c20dd00c"),
        ("Functional_Correspondence", "fa3b85a94002be63939088627224d53bca84b20efcebb2cfa95fd246004514c1"),
        ("IQ_Test", "5753ee46f95354f5d3207ff51df6cb0a70a3ffd63114e80718ab465a3997ca61"),
        ("Jigsaw", "cf6ae1c48389667e0c245e56c48479f86e9f0bc1f5d33f0559da5fc2f37b671f"),
        ("Multi-view_Reasoning", "f4e81718f844747bce372bcf046ffe207f82a1ea8b7ce308655c11f536114e19"),
        ("Object_Localization", "cce5f661cc5c6ddde12d37c2a70e4f7dc4f18e613a5e647d6f5ae35c05799532"),
        ("Relative_Depth", "4cd1d5840a2f9e3ad86b310865bd44a29555344b0c6b67b36f9ab1c1029a4d1a"),
        ("Relative_Reflectance", "ce7c502e5cab3b27548108bc03f03f0e253900baee8121be934a91985660d89a"),
        ("Semantic_Correspondence", "83b9882aca27f740e32d8973c2454e8b78203d3958d189cb5a5fe00a34b88e05"),
        ("Spatial_Relation", "7ce3f778ac870af32151eb8a71512c203314404bd0d903f3bff6c80ff89322c2"),
        ("Visual_Correspondence", "c7c54374f3016df3781d306890c8921ed04ef5b8abd3fa404c6560b2f503d827"),
        ("Visual_Similarity", "15857cd004055977c2486e39523a913762e9e6551603bc57b5bc097a70d19aa0"),
    )
)

COCO_LICENCE = "COCO annotations CC BY 4.0; images under their Flickr licences (terms: cocodataset.org/#termsofuse)"

SOURCES: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            name="pascal5i",
            archives=(
                Archive(
                    name="VOCtrainval_11-May-2012.tar",
                    # https: the host serves it (keras-team/keras-cv keras_cv/src/datasets/pascal_voc/segmentation.py)
                    urls=("https://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",),
                    kind="tar",
                    md5="6cd6e144f989b92b3379bac3b3de84fd",
                    strip="VOCdevkit/VOC2012/",
                    keep=("JPEGImages/*", "SegmentationClass/*", "ImageSets/Segmentation/*"),
                ),
            ),
            homepage="https://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
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
                    # https: the host serves it (XiSHEN0220/SegSwap data/Internet/download_int.sh); no checksum published
                    urls=("https://people.csail.mit.edu/mrub/ObjectDiscovery/ObjectDiscovery-data.zip",),
                    kind="zip",
                    strip="Data/",
                    keep=("MSRC/*",),
                ),
            ),
            homepage="https://people.csail.mit.edu/mrub/ObjectDiscovery/",
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
                    kind="zip",  # the name's 32 hex digits are not documented as a checksum: pinned on first use
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
                    kind="zip",  # no checksum published (lichengunc/refer README, the UNC page)
                    keep=("refcoco/*",),
                ),
                Archive(
                    name="train2014.zip",
                    urls=coco_urls("zips/train2014.zip"),
                    kind="zip",
                    # TFDS tensorflow_datasets/url_checksums/coco2014.txt (13,510,573,713 bytes)
                    sha256="ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
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
                    # https: the host serves it (Tsingularity/dift README); no checksum published
                    urls=("https://cvlab.postech.ac.kr/research/SPair-71k/data/SPair-71k.tar.gz",),
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
                    # TFDS tensorflow_datasets/video/davis/checksums.tsv (832,766,765 bytes); the site lists none
                    sha256="e3d0b5b77c3d031b000a19e0e25e3e2cac65d183755601bc2cf066df1a2aa492",
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
                    urls=coco_urls("zips/val2017.zip"),
                    kind="zip",
                    # TFDS tensorflow_datasets/url_checksums/coco2017.txt (815,585,330 bytes)
                    sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
                    keep=("val2017/*",),
                ),
                Archive(
                    name="annotations_trainval2017.zip",
                    urls=coco_urls("annotations/annotations_trainval2017.zip"),
                    kind="zip",
                    # TFDS tensorflow_datasets/url_checksums/coco2017.txt (252,907,541 bytes)
                    sha256="113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
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
                sha256=BLINK_VAL_SHA256,
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
