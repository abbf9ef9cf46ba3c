"""The interactive runtime: ONNX Runtime for QGIS's own Python, in a folder of the QGIS profile.

Installed with QGIS's Python (`python -m pip install --target`) into a staging folder, resolved under a
constraints file that pins every distribution QGIS's Python already has to the version it has (so pip
never picks a numpy, protobuf ... that QGIS does not have); then every distribution QGIS already has is
deleted from the folder, so that nothing in it can shadow or replace QGIS's packages. Checked in a fresh
QGIS's Python (ONNX Runtime imported from the folder, numpy from QGIS), then swapped in. The folder is
*appended* to `sys.path` (`activate`), so QGIS's own packages always come first.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import site
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .commands import Runner, tool_environment
from .failures import FailureKind, SetupError
from .folders import distribution_name, distributions_in, drop_distributions, normalise_name, remove_tree, swap_in
from .locations import staging_of
from .pins import RUNTIME_REQUIREMENT

Progress = Callable[[float, str], None]
WHAT = "installing ONNX Runtime for QGIS"

_LIST_DISTRIBUTIONS = ("import json, importlib.metadata as m; print(json.dumps("
                       "{d.metadata['Name']: d.version for d in m.distributions() if d.metadata['Name']}))")
_VERIFY = ("import json, sys; sys.path.append(sys.argv[1]); import numpy, onnxruntime; print(json.dumps("
           "{'onnxruntime': onnxruntime.__version__, 'onnxruntime_file': onnxruntime.__file__, "
           "'numpy': numpy.__version__, 'numpy_file': numpy.__file__}))")
_PLAIN_VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def installed_distributions(runner: Runner, python: str) -> Dict[str, str]:
    """{normalised name: version} of every distribution QGIS's Python `python` can import."""
    output = runner.run([python, "-c", _LIST_DISTRIBUTIONS], "listing QGIS's Python packages")
    found = json.loads(output.strip().splitlines()[-1])
    return {normalise_name(name): str(version) for name, version in found.items()}


def constraints_text(installed: Dict[str, str]) -> str:
    """A pip constraints file pinning each distribution to the version QGIS has. Local labels are cut
    ("4.0.2+dfsg" -> "4.0.2"); versions pip could never find ("0.0.0", non-PEP 440) are left out:
    if such a package is needed, QGIS's copy is the one used anyway (it is dropped from the folder)."""
    lines = []
    for name, version in sorted(installed.items()):
        public = version.split("+", 1)[0]
        if _PLAIN_VERSION.match(public) and public.strip("0.") != "":
            lines.append(f"{name}=={public}")
    return "\n".join(lines) + "\n"


def pip_command(runner: Runner, python: str) -> List[str]:
    """`python -m pip`, or pip run from the wheel bundled with `ensurepip` when that Python has no pip
    module. Raises SetupError(NO_PIP) when neither is there."""
    probe = ("import importlib.util as u, glob, os; s = u.find_spec('pip'); "
             "e = u.find_spec('ensurepip'); print('module' if s else next(iter(sorted(glob.glob(os.path.join("
             "os.path.dirname(e.origin), '_bundled', 'pip-*.whl')))), '') if e else '')")
    answer = runner.run([python, "-c", probe], "finding pip").strip().splitlines()
    choice = answer[-1].strip() if answer else ""
    if choice == "module":
        return [python, "-m", "pip"]
    if choice:
        return [python, str(Path(choice) / "pip")]
    raise SetupError(FailureKind.NO_PIP, f"{WHAT}: QGIS's Python ({python}) has no pip: install pip for it "
                                         "(on Linux the python3-pip package) and run the set-up again")


@dataclass(frozen=True)
class RuntimeCheck:
    """What a fresh QGIS's Python imports once the folder is on its path."""

    onnxruntime: str
    onnxruntime_file: str
    numpy: str
    numpy_file: str


def verify_runtime(runner: Runner, python: str, folder: Path) -> RuntimeCheck:
    """Import ONNX Runtime in a fresh `python` with `folder` appended to its path; numpy must be QGIS's.
    Raises SetupError(VERIFY) when the import fails or numpy would come from the folder."""
    try:
        output = runner.run([python, "-c", _VERIFY, str(folder)], "checking ONNX Runtime")
        check = RuntimeCheck(**json.loads(output.strip().splitlines()[-1]))
    except SetupError as exc:
        raise SetupError(FailureKind.VERIFY, f"{WHAT}: the runtime does not import ({exc}): run the set-up "
                                             "again to repair it") from exc
    if Path(check.numpy_file).resolve().is_relative_to(folder.resolve()):
        raise SetupError(FailureKind.VERIFY, f"{WHAT}: numpy would come from {folder}, not from QGIS: "
                                             "remove the folder and run the set-up again")
    return check


def qgis_has_onnxruntime(runner: Runner, python: str) -> Optional[str]:
    """ONNX Runtime's version when QGIS's Python imports it without the runtime folder, else None."""
    try:
        output = runner.run([python, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
                            "looking for ONNX Runtime in QGIS's Python")
    except SetupError:
        return None
    return output.strip().splitlines()[-1] if output.strip() else None


def install_runtime(runner: Runner, python: str, folder: Path, progress: Progress) -> RuntimeCheck:
    """Install (or repair, or update) the runtime into `folder` for QGIS's Python `python`.

    The previous folder stays in use until the new one works; a cancel (Cancelled) or a failure
    (SetupError) removes the staging folder and changes nothing else."""
    staging = staging_of(folder)
    constraints = folder.with_name(folder.name + "-constraints.txt")
    try:
        remove_tree(staging)
        progress(0.02, "Listing the packages of QGIS's Python")
        installed = installed_distributions(runner, python)
        staging.mkdir(parents=True)
        constraints.write_text(constraints_text(installed), encoding="utf-8")
        pip = pip_command(runner, python)
        progress(0.1, "Downloading and installing ONNX Runtime")
        runner.run([*pip, "install", "--target", str(staging), "--only-binary", ":all:", "--no-warn-script-location",
                    "--constraint", str(constraints), RUNTIME_REQUIREMENT], WHAT, staging.parent,
                   env=tool_environment())
        progress(0.8, "Keeping QGIS's own packages")
        dropped = drop_distributions(staging, installed)
        runner.note(f"dropped from the runtime (QGIS has them): {', '.join(dropped) or 'nothing'}")
        progress(0.85, "Checking ONNX Runtime")
        verify_runtime(runner, python, staging)
        runner.check_cancelled()
        swap_in(staging, folder)
        check = verify_runtime(runner, python, folder)
        progress(1.0, f"ONNX Runtime {check.onnxruntime} installed")
        return check
    except OSError as exc:
        raise SetupError(FailureKind.READ_ONLY if _is_permission(exc) else FailureKind.OTHER,
                         f"{WHAT}: cannot write to {staging.parent} ({exc.strerror or exc}): make the QGIS "
                         "profile folder writable and run the set-up again") from exc
    finally:
        remove_tree(staging)
        if constraints.exists():
            constraints.unlink()


def _is_permission(exc: OSError) -> bool:
    return isinstance(exc, PermissionError) or exc.errno in (13, 30)


def installed_version(folder: Path) -> Optional[str]:
    """The ONNX Runtime version installed in `folder` (read from its dist-info), None if not there."""
    for dist_info in distributions_in(folder):
        if distribution_name(dist_info) == "onnxruntime":
            return dist_info.name[: -len(".dist-info")].rsplit("-", 1)[1]
    return None


class Activation(Enum):
    ABSENT = "absent"  #: no runtime folder
    ACTIVE = "active"  #: onnxruntime can be imported now
    RESTART_NEEDED = "restart"  #: another onnxruntime was already imported in this QGIS
    BROKEN = "broken"  #: the folder is there but holds no importable onnxruntime


def activate(folder: Path) -> Activation:
    """Append the runtime `folder` to `sys.path` (with `site.addsitedir`, which also reads its .pth
    files), if it exists and is not there yet, and say whether ONNX Runtime can now be imported."""
    if not folder.is_dir():
        return Activation.ABSENT
    if str(folder) not in sys.path:
        site.addsitedir(str(folder))
    importlib.invalidate_caches()
    loaded = sys.modules.get("onnxruntime")
    if loaded is not None:  # imported before: the one in memory stays until QGIS restarts
        origin = Path(getattr(loaded, "__file__", "") or "").resolve()
        same = folder.resolve() in origin.parents or getattr(loaded, "__version__", None) == installed_version(folder)
        return Activation.ACTIVE if same else Activation.RESTART_NEEDED
    return Activation.ACTIVE if importlib.util.find_spec("onnxruntime") is not None else Activation.BROKEN


def deactivate(folder: Path) -> None:
    """Take the runtime `folder` off `sys.path` again (modules already imported stay loaded)."""
    while str(folder) in sys.path:
        sys.path.remove(str(folder))
