"""The models QuickSAM can build and their official checkpoints (no torch, no QGIS).

Model names are QuickSAM's ids; `config` is the package's own config (a Hydra config inside the
`sam2` package, or a `segment_anything` registry key). SHA-256 and sizes are those of the files
published at the URLs below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Optional

SAM2_1_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
SAM2_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
SAM1_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class ModelSpec:
    """A model QuickSAM knows how to build. `family` is 'sam2' (SAM 2 and 2.1) or 'sam1'."""

    name: str
    family: str
    config: str
    description: str


@dataclass(frozen=True)
class CheckpointSpec:
    """A downloadable checkpoint for one model."""

    name: str
    model: str
    url: str
    sha256: Optional[str]
    size: Optional[int] = None

    @property
    def file_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


#: The Hiera sizes of SAM 2 and SAM 2.1: (model name suffix, checkpoint file suffix, label, parameters).
_HIERA_SIZES = (("t", "tiny", "tiny", "39M"), ("s", "small", "small", "46M"),
                ("b+", "base_plus", "base+", "81M"), ("l", "large", "large", "224M"))
#: The SAM 2 releases: (name prefix, title, download folder); model names are PREFIX_hiera_SIZE, checkpoint
#: names PREFIX_hiera_FILESUFFIX (the file PREFIX_hiera_FILESUFFIX.pt), configs configs/PREFIX/MODEL.yaml.
_SAM2_RELEASES = (("sam2.1", "SAM 2.1", SAM2_1_BASE), ("sam2", "SAM 2", SAM2_BASE))
#: SHA-256 and size in bytes of each release's checkpoints, in the order of _HIERA_SIZES.
_SAM2_FILES = {
    "sam2.1": (("7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156008466),
               ("6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184416285),
               ("a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323606802),
               ("2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898083611)),
    "sam2": (("65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 155906050),
             ("95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", 184309650),
             ("d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", 323493298),
             ("7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 897952466)),
}


def _sam2_models() -> Iterator[ModelSpec]:
    for release, title, _ in _SAM2_RELEASES:
        for size, _, label, parameters in _HIERA_SIZES:
            name = f"{release}_hiera_{size}"
            yield ModelSpec(name, "sam2", f"configs/{release}/{name}.yaml", f"{title} Hiera {label} ({parameters})")


def _sam2_checkpoints() -> Iterator[CheckpointSpec]:
    for release, _, folder in _SAM2_RELEASES:
        for (size, file_suffix, _, _), (sha256, length) in zip(_HIERA_SIZES, _SAM2_FILES[release]):
            name = f"{release}_hiera_{file_suffix}"
            yield CheckpointSpec(name, f"{release}_hiera_{size}", f"{folder}{name}.pt", sha256, length)


MODELS: Dict[str, ModelSpec] = {spec.name: spec for spec in (
    *_sam2_models(),
    ModelSpec("sam_vit_b", "sam1", "vit_b", "SAM ViT-B (94M)"),
    ModelSpec("sam_vit_l", "sam1", "vit_l", "SAM ViT-L (312M)"),
    ModelSpec("sam_vit_h", "sam1", "vit_h", "SAM ViT-H (641M)"),
)}

CHECKPOINTS: Dict[str, CheckpointSpec] = {spec.name: spec for spec in (
    *_sam2_checkpoints(),
    CheckpointSpec("sam_vit_b", "sam_vit_b", SAM1_BASE + "sam_vit_b_01ec64.pth",
                   "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    CheckpointSpec("sam_vit_l", "sam_vit_l", SAM1_BASE + "sam_vit_l_0b3195.pth",
                   "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    CheckpointSpec("sam_vit_h", "sam_vit_h", SAM1_BASE + "sam_vit_h_4b8939.pth",
                   "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2564550879),
)}


def model_spec(name: str) -> ModelSpec:
    """The model called `name`; a QuickSamError-style ValueError listing the choices otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}") from None


def default_checkpoint_for(model: str) -> CheckpointSpec:
    """The official checkpoint of a model."""
    for spec in CHECKPOINTS.values():
        if spec.model == model:
            return spec
    raise ValueError(f"no official checkpoint for model '{model}'")
