"""The per-backend model cache in front of pgml.model_versions and pgml.model_estimators.

Versions are immutable, so a loaded model is kept by its id. What changes is which version a *name*
answers with: names are resolved through pgml.deployed_models and kept until a notification on
``pgml_models`` says a deployment changed (checking costs one non-blocking look at a socket).

The wrapper's connection cannot see the caller's uncommitted work, yet train-then-score in one
transaction must work. So models trained, and deployments made, by this backend are also kept
with the id of the transaction that made them, and used while that transaction is in progress;
once it has ended they are dropped (rolled back) or left to the ordinary path (committed).
"""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple, Union

from .connection import ServerConnection
from . import errors
from .errors import PgmlError
from .model import Model

CACHE_SIZE = 32
_VERSIONED = re.compile(r"^(.*)_(\d+)$")


class ModelStore:
    """Finds models by name or id for predictions, caching them per backend."""

    def __init__(self, server: ServerConnection) -> None:
        self.server = server
        self._names: Dict[str, str] = {}
        self._models: "OrderedDict[str, Model]" = OrderedDict()
        # Made by this backend in a transaction not yet known to have ended: id -> (model, txid),
        # name -> (id, txid).
        self._trained: Dict[str, Tuple[Union[bytes, Model], int]] = {}
        self._deployed: Dict[str, Tuple[str, int]] = {}

    def remember_trained(self, model_id: str, pickled: bytes, txid: int) -> None:
        """A model this backend just trained, in transaction txid (pickled: it is loaded only if
        this transaction scores it before committing)."""
        self._trained[model_id] = (pickled, txid)

    def note_deployment(self, name: str, model_id: str, txid: int) -> None:
        """A deployment this backend just made, in transaction txid: this session's own next
        queries use it at once, without waiting for the notification that follows the commit."""
        self._deployed[name] = (model_id, txid)
        self._names.pop(name, None)

    def get(self, ref: str) -> Model:
        """The model a name (its deployed version) or an id (name_version) stands for."""
        if self.server.changed():
            self._names.clear()
            self._models.clear()
        model_id = self._resolve(ref)
        model = self._load(model_id, ref)
        if ref not in self._trained and ref not in self._deployed:
            # Remembered until a deployment changes, like a name: an id must not cost a lookup
            # of a deployed model of that name at every prediction.
            self._names[ref] = model_id
        return model

    def _in_progress(self, txid: int) -> Optional[bool]:
        """True while txid runs, False once it committed, None if it rolled back."""
        status = self.server.fetch("SELECT txid_status(%s)", (txid,))[0][0]
        return True if status == "in progress" else (False if status == "committed" else None)

    def _resolve(self, ref: str) -> str:
        if ref in self._trained:
            return ref  # an id this backend trained: no lookup that could wait on the caller's locks
        if ref in self._deployed:
            model_id, txid = self._deployed[ref]
            if self._in_progress(txid):
                return model_id
            del self._deployed[ref]
        if ref in self._names:
            return self._names[ref]
        rows = self.server.fetch("SELECT id FROM pgml.deployed_models WHERE name = %s", (ref,))
        return rows[0][0] if rows else ref  # else an id, or nothing: _load tells

    def _load(self, model_id: str, ref: str) -> Model:
        if model_id in self._trained:
            model, txid = self._trained[model_id]
            if isinstance(model, bytes):
                model = pickle.loads(model)
                self._trained[model_id] = (model, txid)
            state = self._in_progress(txid)
            if state:
                return model
            del self._trained[model_id]
            if state is False:
                self._remember(model)
                return model
        if model_id in self._models:
            self._models.move_to_end(model_id)
            return self._models[model_id]
        rows = self.server.fetch("SELECT estimator FROM pgml.model_estimators WHERE model_id = %s", (model_id,))
        if not rows:
            raise _unknown(ref)
        model = pickle.loads(bytes(rows[0][0]))
        self._remember(model)
        return model

    def _remember(self, model: Model) -> None:
        self._models[model.model_id] = model
        while len(self._models) > CACHE_SIZE:
            self._models.popitem(last=False)


def _unknown(ref: str) -> PgmlError:
    versioned = _VERSIONED.match(ref)
    if versioned:
        return PgmlError(
            f'no model "{ref}": neither a deployed model of that name nor version {versioned.group(2)} '
            f'of a model "{versioned.group(1)}"',
            hint="List the models: SELECT id, deployed FROM pgml.models.", sqlstate=errors.UNDEFINED_OBJECT,
        )
    return PgmlError(f'no model named "{ref}"',
                     hint="Train one with pgml.train, or list them: SELECT id, deployed FROM pgml.models.",
                     sqlstate=errors.UNDEFINED_OBJECT)
