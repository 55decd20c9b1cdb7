"""The per-backend model cache in front of pgml.model_versions and pgml.model_estimators.

Every version has a uid that no other model ever gets, so a loaded model is kept by its uid for as
long as the backend likes: it can never stand for another model. What a *name* or an id stands for
is decided in the caller's snapshot:

* the scoring functions resolve it in SQL (``pgml._resolve``) and hand over the uid;
* ``pgml.predictions`` hands over the caller's context (the view's ``WHERE context = ...``): the generation of
  the model store, which changes with every commit that changed a model or a deployment, and what
  the caller's own transaction changed and has not committed, already resolved. Names resolved
  through this backend's connection are kept until the generation changes.

So a savepoint rolled back, a deployment committed through another connection of a pooler, a
DROP and CREATE EXTENSION or a restore are seen by the very next statement, with no notification
and no transaction-id bookkeeping.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Optional, Set, Tuple, Union

from .connection import ServerConnection
from . import errors, model_format
from .errors import PgmlError
from .model import Model

CACHE_SIZE = 32
_PREFIX = 65536  # bytes of a stored model read at once when it is loaded
_VERSIONED = re.compile(r"^(.*)_(\d+)$")
UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EVERYTHING = "*"  # in a context: the caller's transaction truncated the model tables
_TOO_MANY = "!"    # in a context: the caller's transaction changed more models than it lists


class Context:
    """The context pgml.predictions hands over, parsed: ``"generation[ ref=uid ...]"``; an empty uid means the ref
    stands for nothing in the caller's snapshot."""

    def __init__(self, text: str) -> None:
        generation, *changed = text.split(" ")
        self.generation = generation
        self.changed: Dict[str, str] = dict(item.partition("=")[::2] for item in changed)


class ModelStore:
    """Finds models by uid, name or id for predictions, caching them per backend."""

    def __init__(self, server: ServerConnection) -> None:
        self.server = server
        self._context: Tuple[str, Optional[Context]] = ("", None)
        self._generation = ""
        self._names: Dict[str, str] = {}  # ref -> uid, valid in self._generation
        self._uids: Dict[str, str] = {}  # uid -> its version's id ("" for none), valid in self._generation
        self._trained: Set[str] = set()  # uids trained by this backend in its open transaction
        # By uid: stored bytes (trained here, loaded only if scored) or loaded.
        self._models: "OrderedDict[str, Union[bytes, Model]]" = OrderedDict()

    def remember_trained(self, uid: str, stored: bytes) -> None:
        """A model this backend just trained: its transaction may score it before committing,
        when no other connection can read it yet. Kept like any other (if the transaction rolls
        back, its uid is never handed over again)."""
        self._trained.add(uid)
        self._remember(uid, stored)

    def forget_trained(self) -> None:
        """The transaction that trained models here committed or rolled back (or a savepoint of it
        did): from now on their uids are served only as committed ones."""
        self._trained.clear()

    def get(self, ref: str, context: Optional[str]) -> Model:
        """The model ``ref`` stands for: a uid, or a name (its deployed version) or an id
        (name_version) resolved in ``context`` (the caller's context, from the view pgml.predictions)."""
        if UID.match(ref):
            # A uid is what the extension's SQL hands over after resolving a name in the caller's
            # snapshot; one written by hand must still name a version the caller can see.
            if context is not None and not self._visible(ref, self._parse(context)):
                raise _unknown(ref)
            return self._load(ref, ref)
        if context is None:
            raise PgmlError("pgml.predictions was called without its context",
                            hint="Query the view pgml.predictions, not the internal table pgml._predictions.",
                            sqlstate=errors.INVALID_PARAMETER)
        seen = self._parse(context)
        if _TOO_MANY in seen.changed and ref not in seen.changed:
            raise PgmlError("this transaction changed too many models for pgml.predictions to tell what it sees",
                            hint="Commit first, or predict with pgml.score() or pgml.prediction(), which resolve the "
                            "model in SQL.", sqlstate=errors.INVALID_PARAMETER)
        if ref in seen.changed or _EVERYTHING in seen.changed:
            uid = seen.changed.get(ref, "")  # changed by the caller's own transaction, resolved as it sees it
        else:
            self._follow(seen.generation)
            uid = self._names.get(ref) or self._resolve(ref, seen.generation)
        if not uid:
            raise _unknown(ref)
        return self._load(uid, ref)

    def _parse(self, context: str) -> Context:
        if self._context[0] != context:  # the same text at almost every call
            self._context = (context, Context(context))
        parsed = self._context[1]
        assert parsed is not None
        return parsed

    def _follow(self, generation: str) -> None:
        """Forgets what names and uids stood for when the caller's generation is another."""
        if generation != self._generation:
            self._names.clear()
            self._uids.clear()
            self._generation = generation

    def _visible(self, uid: str, seen: Context) -> bool:
        """Whether ``uid`` names a version in the caller's view: one its own transaction made (its
        context lists it), or a committed one whose id the transaction did not change (delete)."""
        if uid in seen.changed.values():
            return True
        if _EVERYTHING in seen.changed:  # the caller truncated the models: none committed is seen
            return False
        if _TOO_MANY in seen.changed and uid in self._trained:
            # Too many changes to list (or a setting forged to say so): the scoring functions' SQL
            # resolved it, and only a model trained here in this transaction is not committed yet.
            return True
        self._follow(seen.generation)
        model_id = self._uids.get(uid)
        if model_id is None:
            found, now = self._committed("(SELECT m.id FROM pgml.model_versions m WHERE m.uid = %s::uuid)", uid)
            model_id = found or ""
            if now == seen.generation:
                self._uids[uid] = model_id
        return bool(model_id) and model_id not in seen.changed

    def _resolve(self, ref: str, generation: str) -> str:
        """The uid of ``ref`` as committed now, kept if the store's generation is the caller's."""
        uid, now = self._committed("pgml._find(%s)", ref)
        if uid is not None and now == generation:
            self._names[ref] = uid
        return uid or ""

    def _committed(self, expression: str, value: str) -> Tuple[Optional[str], str]:
        """``expression`` (with one ``%s``, for ``value``) as committed now, and the generation of
        the model store it was read in: a caller may keep it for that generation only."""
        (found, now), = self.server.fetch(
            f"SELECT {expression}, (SELECT generation::text FROM pgml._generation ORDER BY id DESC LIMIT 1)",
            (value,))
        return found, now

    def _load(self, uid: str, ref: str) -> Model:
        model = self._models.get(uid)
        if model is None:
            model = model_format.read(self._reader(uid, ref), ref)
        elif isinstance(model, bytes):
            model = model_format.load(model, ref)  # trained in this transaction: no other connection sees it
        self._remember(uid, model)
        return model

    def _reader(self, uid: str, ref: str) -> model_format.Reader:
        """Reads parts of a stored model. Its first bytes (usually the header, and all of a linear
        model) are fetched at once and kept with the model; anything further is read when a part
        needs it, so a model with a fast path never reads its pickled estimator unless a query
        needs it."""
        prefix: Optional[bytes] = None

        def part(offset: int, count: Optional[int]) -> bytes:
            nonlocal prefix
            if prefix is None:
                prefix = self._fetch(uid, ref, 0, _PREFIX)
            whole = len(prefix) < _PREFIX  # the model is shorter than the prefix: it is all here
            if whole or (count is not None and offset + count <= len(prefix)):
                return prefix[offset:] if count is None else prefix[offset:offset + count]
            return self._fetch(uid, ref, offset, count)

        return part

    def _fetch(self, uid: str, ref: str, offset: int, count: Optional[int]) -> bytes:
        rows = self.server.fetch(
            "SELECT substring(e.estimator FROM %s FOR coalesce(%s, length(e.estimator))) "
            "FROM pgml.model_versions m JOIN pgml.model_estimators e ON e.model_id = m.id WHERE m.uid = %s",
            (offset + 1, count, uid), binary=True)
        if not rows:
            # Resolved in the caller's snapshot, yet not committed: made by another session of
            # this transaction's own (a restore, an INSERT), which this connection cannot see.
            raise PgmlError(f'model "{ref}" is not committed yet', sqlstate=errors.UNDEFINED_OBJECT,
                            hint="Commit the transaction that stored it, then predict.")
        return bytes(rows[0][0])

    def _remember(self, uid: str, model: Union[bytes, Model]) -> None:
        self._models[uid] = model
        self._models.move_to_end(uid)
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
