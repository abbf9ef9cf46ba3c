"""Where the Segment dock's accepted objects go: the output layer (the user's choice, or the store's
segments.gpkg), the prompts layer, the label and the colours per object (QGIS layer; one piece of the
Segment dock's controller). The writing itself is object_writer.py's.

Accepted objects arrive in the raster CRS and are written in the output layer's CRS; the store's own
layers (segments.gpkg, prompts.gpkg) are created in the raster CRS.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Tuple

from qgis.core import Qgis, QgsCoordinateReferenceSystem, QgsProject, QgsVectorLayer

from ...core.errors import QuickSamError
from ...core.store import FeatureStore
from ...interactive.session import AcceptedObject
from ..i18n import tr
from ..layers import FeatureBuilder, open_or_create_output_layer, store_output_path
from .object_writer import (
    CommitResult,
    WriteAccess,
    add_features,
    add_to_project_once,
    commit_object,
    open_or_create_prompts_layer,
    prompt_features,
    set_object_colours,
)


class ObjectOutput:
    """The layers accepted objects (and, when asked, their prompts) are written to, in `project`.

    The user's output layer is forgotten when it leaves the project; the store's own layers are created on
    first use and added to the project once.
    """

    def __init__(self, project: QgsProject) -> None:
        self.project = project
        #: The user's output layer; None: the store's segments.gpkg.
        self.choice: Optional[QgsVectorLayer] = None
        #: The class written to new objects' `label` attribute.
        self.label = ""
        #: Also write each object's prompts to the store's prompts.gpkg.
        self.keep_prompts = False
        #: A colour per object id on the store's output layer.
        self.random_colours = True
        self._store: Optional[FeatureStore] = None
        self._raster_crs = QgsCoordinateReferenceSystem()
        self._default_output_id: Optional[str] = None
        self._prompts_layer_id: Optional[str] = None
        #: The output and prompts layers' providers, kept in update mode between accepts.
        self._access = (WriteAccess(), WriteAccess())
        self.project.layerWillBeRemoved[str].connect(self._on_layer_removed)

    def bind(self, store: Optional[FeatureStore], raster_crs: QgsCoordinateReferenceSystem) -> None:
        """Objects come from `store` (raster CRS `raster_crs`) from now on; its own layers are looked up anew."""
        self._store = store
        self._raster_crs = raster_crs
        self._default_output_id = None
        self._prompts_layer_id = None
        self._release_access()

    def choose(self, layer: Optional[QgsVectorLayer]) -> None:
        """Write to `layer` (any polygon layer; objects are reprojected to its CRS), or with None to the
        store's own segments.gpkg."""
        self.choice = layer if isinstance(layer, QgsVectorLayer) else None
        self._access[0].release()

    def layer(self) -> QgsVectorLayer:
        """The layer accepted objects go to: the user's choice, or the store's segments.gpkg (created on
        first use and added to the project once). QuickSamError without a store; OSError when the
        GeoPackage cannot be opened or created."""
        if self.choice is not None and self.project.mapLayer(self.choice.id()) is not None:
            return self.choice
        existing = self.project.mapLayer(self._default_output_id) if self._default_output_id else None
        if isinstance(existing, QgsVectorLayer):
            return existing
        if self._store is None:
            raise QuickSamError(tr("choose a feature store first"))
        layer = open_or_create_output_layer(store_output_path(self._store), self._raster_crs,
                                            self.project.transformContext())
        layer = add_to_project_once(self.project, layer)
        if self.random_colours:
            set_object_colours(layer, True)
        self._default_output_id = layer.id()
        return layer

    def set_random_colours(self, enabled: bool) -> None:
        """Colour the store's output layer per object id, or stop doing so (a user's layer is left alone)."""
        self.random_colours = enabled
        layer = self.project.mapLayer(self._default_output_id) if self._default_output_id else None
        if isinstance(layer, QgsVectorLayer):
            set_object_colours(layer, enabled)

    def commit(self, accepted: AcceptedObject) -> CommitResult:
        """Write `accepted` (raster CRS) to the output layer, reprojected to its CRS, with the label;
        OSError or QuickSamError when it cannot be written (then nothing is)."""
        layer = self.layer()
        self._access[0].hold(layer)
        builder = FeatureBuilder(self._store, layer.crs(), self.project.transformContext())
        return commit_object(layer, accepted, builder, self.label)

    def write(self, accepted: AcceptedObject) -> Tuple[CommitResult, Optional[str]]:
        """Commit `accepted`, then write its prompts if `keep_prompts`; returns where it went and, if its
        prompts could not be written, why (the object is written anyway). Commit errors as `commit`'s."""
        result = self.commit(accepted)
        if not self.keep_prompts:
            return result, None
        try:
            self.write_prompts(accepted, result)
        except (OSError, QuickSamError) as exc:
            return result, str(exc)
        return result, None

    def write_prompts(self, accepted: AcceptedObject, result: CommitResult) -> None:
        """Write `accepted`'s prompts (raster CRS) to the store's prompts layer with the object's id, label and
        output layer name; OSError or QuickSamError when they cannot be written."""
        layer = self.project.mapLayer(self._prompts_layer_id) if self._prompts_layer_id else None
        if not isinstance(layer, QgsVectorLayer):
            layer = open_or_create_prompts_layer(self._store, self._raster_crs, self.project.transformContext())
            layer = add_to_project_once(self.project, layer)
            self._prompts_layer_id = layer.id()
        self._access[1].hold(layer)
        object_id = result.object_ids[0] if result.object_ids else 0
        add_features(layer, prompt_features(accepted, object_id, self.label, result.layer_name, layer.fields()),
                     "QuickSAM prompts")

    def _on_layer_removed(self, layer_id: str) -> None:
        for access in self._access:
            if access.layer_id == layer_id:
                access.release()
        if self.choice is not None and layer_id == self.choice.id():
            self.choice = None

    def _release_access(self) -> None:
        for access in self._access:
            access.release()

    def release(self) -> None:
        """Stop following the project (before the output is dropped); the layers' files are left read-only."""
        self._release_access()
        with contextlib.suppress(TypeError):  # already disconnected
            self.project.layerWillBeRemoved[str].disconnect(self._on_layer_removed)


def accepted_message(result: CommitResult, prompts_problem: Optional[str] = None) -> Tuple[str, int]:
    """The status line after an accept and its Qgis.MessageLevel: which object went where, and why its
    prompts could not be kept (`prompts_problem`: the error's text; None when they were, or were not asked for)."""
    ids = ", ".join(str(i) for i in result.object_ids)
    what = tr("object {}").format(ids) if ids else tr("the object")
    where = (tr("saved to '{}'") if result.saved else
             tr("added to '{}' (being edited: save the layer's edits to write it)")).format(result.layer_name)
    problem = "" if prompts_problem is None else tr(" (its prompts were not kept: {})").format(prompts_problem)
    level = (Qgis.MessageLevel.Warning if problem else
             Qgis.MessageLevel.Success if result.saved else Qgis.MessageLevel.Info)
    return tr("{} {}{}; click on the next one").format(what, where, problem), level
