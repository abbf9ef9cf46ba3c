"""The environments QuickSAM needs, set up by the plugin (QGIS-free).

Two environments, both outside the plugin folder (which QGIS replaces on every update) and outside
QGIS's own Python:

- the *interactive runtime* (`runtime.py`): ONNX Runtime and whichever of its dependencies QGIS's Python
  lacks, installed with QGIS's own Python into a folder of the user's QGIS profile and appended to
  `sys.path` on plugin load; QGIS's numpy and every other package QGIS has stay the ones imported;
- the *encoder environment* (`encoder_env.py`): a venv in the user's data folder with torch, sam2 and
  segment-anything built for the machine (CUDA, MPS or CPU), run as a separate process.

Everything is driven through well-kept tools (`python -m pip`, `python -m venv`) in subprocesses
(`commands.py`), never at import time. `locations.py` says where things go, `pythons.py` finds the
interpreters, `failures.py` turns tool output into one-line messages, `status.py` reports and removes.
The QGIS layer (`ui/setup/`) runs these steps in a QgsTask.
"""
