"""The model registry as users meet it: names, aliases, promotion, loading by alias.

The MLflow calls are in `digits.edges.tracking.models` (reached through the `TrackingStore`
handed to each function); this module holds the rules:

* names, versions and aliases are checked before MLflow sees them, so a mistake is one line
  (`latest` and `v3` are MLflow's own references, not aliases; a quote cannot be in a name);
* promotion compares like with like: a version's figures are compared with the champion's only
  when both were scored on the same test set under the same profile (the `profile` and `test_set`
  tags written at registration). A quick-profile model, scored on 2,000 test images, never takes
  `champion` from a full one; a full-profile model does take it from a quick one.
* every promotion records why on the version: the metric, both figures and the version it replaced.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from digits.edges.tracking import CHAMPION_ALIAS, AliasRace, TrackingStore, VersionFacts
from digits.errors import DigitsError

FULL_PROFILE = "full"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")
_VERSION_LIKE = re.compile(r"^[vV]\d+$")


def check_model_name(name: str) -> str:
    """`name` if it can name a registered model here.

    Raises:
        DigitsError: empty, or characters other than letters, digits, `.`, `_` and `-`.
    """
    if not _NAME.match(name):
        raise DigitsError(
            f"model name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
            "(e.g. mnist-mlp)"
        )
    return name


def check_alias(alias: str) -> str:
    """`alias` if MLflow can set it.

    Raises:
        DigitsError: empty, `latest`, `v<number>` (MLflow's references to versions), or other
            characters than letters, digits, `_` and `-`.
    """
    if alias.lower() == "latest" or _VERSION_LIKE.match(alias):
        raise DigitsError(
            f"alias {alias!r} is reserved by MLflow for versions; choose another "
            "(e.g. champion, challenger)"
        )
    if not _ALIAS.match(alias):
        raise DigitsError(
            f"alias {alias!r} is not valid: start with a letter or '_', then letters, digits, "
            "'_' or '-' (e.g. champion)"
        )
    return alias


def check_version(version: str) -> str:
    """`version` if it is a version number.

    Raises:
        DigitsError: anything but a positive whole number.
    """
    if not version.isdigit() or int(version) < 1:
        raise DigitsError(f"version {version!r} is not a version number (1, 2, …)")
    return str(int(version))


def parse_reference(reference: str) -> tuple[str, str]:
    """`name@alias`, `name/version` or `models:/…` -> (name, "@alias" or "/version").

    Raises:
        DigitsError: any other shape, or a bad name, alias or version in it.
    """
    body = reference.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        if alias.lower() == "latest":
            raise DigitsError(f"{reference}: give an alias (name@champion) or a version (name/3)")
        return check_model_name(name), f"@{check_alias(alias)}"
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return check_model_name(name), f"/{check_version(version)}"
    raise DigitsError(
        f"model {reference!r}: give it as name@alias (mnist-mlp@champion) or name/version "
        "(mnist-mlp/3)"
    )


def _versions(store: TrackingStore, name: str) -> list[VersionFacts]:
    versions = store.models.model_versions(check_model_name(name))
    if not versions:
        raise DigitsError(f"no registered model named {name!r} in this store")
    return versions


def _by_alias(versions: list[VersionFacts], alias: str) -> VersionFacts | None:
    return next((v for v in versions if alias in v.aliases), None)


def set_alias(store: TrackingStore, name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
    """Point `alias` of model `name` at `version` by hand (`digits promote NAME VERSION`).

    Raises:
        DigitsError: a bad name, version or alias, or a version that is not registered.
    """
    check_alias(alias)
    version = check_version(version)
    versions = _versions(store, name)
    if version not in {v.version for v in versions}:
        known = ", ".join(v.version for v in versions)
        raise DigitsError(
            f"model {name!r} version {version!r} is not registered; known versions: {known}"
        )
    store.models.set_alias(name, alias, version)
    store.models.set_version_tags(
        name,
        version,
        {"promotion_reason": f"alias {alias!r} set by hand", "promoted_at": _now()},
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def comparable_key(version: VersionFacts) -> tuple[str, str] | None:
    """(profile, test set) a version was scored under; None when it was registered without them."""
    profile, test_set = version.tags.get("profile"), version.tags.get("test_set")
    if not profile or not test_set:
        return None
    return profile, test_set


@dataclass(frozen=True)
class Decision:
    """What a promotion by metric decided.

    Attributes:
        promoted: Whether the alias moved.
        version: The version it points at now (None when there is still none).
        reason: One sentence, as recorded on the version and printed.
    """

    promoted: bool
    version: str | None
    reason: str


def _value(version: VersionFacts, metric: str) -> float | None:
    value = version.metrics.get(metric)
    return None if value is None else float(value)


def _beats(candidate: float, incumbent: float, lower_is_better: bool) -> bool:
    return candidate < incumbent if lower_is_better else candidate > incumbent


_Outcome = tuple[Decision, VersionFacts | None, VersionFacts | None]


def decide(
    versions: list[VersionFacts],
    metric: str,
    alias: str = CHAMPION_ALIAS,
    candidates: list[str] | None = None,
    lower_is_better: bool = False,
) -> _Outcome:
    """Which version should carry `alias`, by `metric`, comparing like with like (pure).

    The best of `candidates` (every version when None) that has `metric` and was scored like the
    current holder of `alias` (same `profile` and `test_set` tags) takes the alias when it beats
    the holder strictly. Without a holder, the best version of the full profile takes it (the best
    of the newest version's kind when none is full). A full-profile candidate takes the alias from
    a holder of another profile; never the reverse. Versions registered without `profile` and
    `test_set` tags are compared with nothing.

    Returns:
        (the decision, the chosen candidate or None, the current holder or None).
    """
    holder = _by_alias(versions, alias)
    pool = [
        v
        for v in versions
        if (candidates is None or v.version in candidates)
        and _value(v, metric) is not None
        and comparable_key(v) is not None
    ]
    best = _Best(metric, lower_is_better)
    if holder is None:
        return _decide_without_holder(pool, best, alias)
    return _decide_against_holder(holder, pool, best, alias)


@dataclass(frozen=True)
class _Best:
    """The best of a group of versions by one metric."""

    metric: str
    lower_is_better: bool

    def of(self, group: list[VersionFacts]) -> VersionFacts | None:
        # Ties go to the older version: a re-run with the same score does not move the alias.
        sign = 1.0 if self.lower_is_better else -1.0
        return min(
            group,
            key=lambda v: (sign * (_value(v, self.metric) or 0.0), int(v.version)),
            default=None,
        )


def _decide_without_holder(pool: list[VersionFacts], best: _Best, alias: str) -> _Outcome:
    metric = best.metric
    full = [v for v in pool if v.tags.get("profile") == FULL_PROFILE]
    if not full and pool:
        newest = max(pool, key=lambda v: int(v.version))
        full = [v for v in pool if comparable_key(v) == comparable_key(newest)]
    chosen = best.of(full)
    if chosen is None:
        return (
            Decision(False, None, f"no version has {metric!r} with profile and test_set tags"),
            None,
            None,
        )
    return (
        Decision(
            True,
            chosen.version,
            f"no {alias}: version {chosen.version} has the best {metric} "
            f"({_value(chosen, metric):.6g}) of its profile and test set",
        ),
        chosen,
        None,
    )


def _decide_against_holder(
    holder: VersionFacts, pool: list[VersionFacts], best: _Best, alias: str
) -> _Outcome:
    metric = best.metric
    key = comparable_key(holder)
    held = _value(holder, metric)
    if key is None or held is None:
        reason = (
            f"{alias} version {holder.version} has no {metric!r} or no profile and test_set "
            "tags to compare with; promote by hand"
        )
        return Decision(False, holder.version, reason), None, holder
    like = best.of([v for v in pool if comparable_key(v) == key])
    if holder.tags.get("profile") != FULL_PROFILE:
        best_full = best.of([v for v in pool if v.tags.get("profile") == FULL_PROFILE])
        if best_full is not None:
            reason = (
                f"version {best_full.version} ({metric} {_value(best_full, metric):.6g}, "
                "full profile) "
                f"replaces {alias} version {holder.version} ({metric} {held:.6g}, "
                f"{holder.tags.get('profile')} profile): a full-profile model is preferred"
            )
            return Decision(True, best_full.version, reason), best_full, holder
    if like is None or like.version == holder.version:
        reason = (
            f"{alias} version {holder.version} keeps it: no version scored on its test set "
            f"under its profile beats its {metric} ({held:.6g})"
        )
        return Decision(False, holder.version, reason), None, holder
    value = _value(like, metric)
    assert value is not None  # the pool holds only versions that have the metric
    if not _beats(value, held, best.lower_is_better):
        reason = (
            f"{alias} version {holder.version} keeps it: its {metric} ({held:.6g}) is not "
            f"beaten by version {like.version} ({value:.6g}) on the same test set"
        )
        return Decision(False, holder.version, reason), None, holder
    reason = (
        f"version {like.version} beats {alias} version {holder.version} on {metric} "
        f"({value:.6g} against {held:.6g}), same profile and test set"
    )
    return Decision(True, like.version, reason), like, holder


def promote_best(
    store: TrackingStore,
    name: str,
    metric: str,
    alias: str = CHAMPION_ALIAS,
    candidates: list[str] | None = None,
    lower_is_better: bool = False,
) -> Decision:
    """Move `alias` of model `name` to its best version by `metric` where `decide` says so.

    The promoted version gets tags: `promotion_reason`, `promotion_metric`, `promotion_value`,
    `promotion_previous_version`, `promotion_previous_value`, `promoted_at`.

    Another flow may name a champion between the decision and the alias (two sweeps registering
    one name at once): the decision is then made again against it.

    Raises:
        DigitsError: a bad name or alias, or no model of that name.
    """
    check_alias(alias)
    if not metric.strip():
        raise DigitsError("--best-by needs a metric name (e.g. accuracy)")
    for _ in range(3):
        versions = _versions(store, name)
        decision, chosen, holder = decide(versions, metric, alias, candidates, lower_is_better)
        if not decision.promoted or chosen is None:
            return decision
        try:
            store.models.set_alias(name, alias, chosen.version)
            break
        except AliasRace:  # another flow named a champion meanwhile: decide again against it
            continue
    else:
        raise DigitsError(f"the {alias!r} alias of {name!r} kept changing; try `digits promote`")
    if decision.promoted and chosen is not None:
        tags: dict[str, Any] = {
            "promotion_reason": decision.reason,
            "promotion_metric": metric,
            "promotion_value": _value(chosen, metric),
            "promoted_at": _now(),
        }
        if holder is not None:
            tags["promotion_previous_version"] = holder.version
            tags["promotion_previous_value"] = _value(holder, metric)
        store.models.set_version_tags(name, chosen.version, tags)
    return decision


def promote_if_better(
    store: TrackingStore, name: str, version: str, metric: str = "accuracy"
) -> Decision:
    """After registering `version`: make it `champion` where `decide` prefers it (the engine)."""
    return promote_best(store, name, metric, CHAMPION_ALIAS, candidates=[version])
