"""Search spaces as Ray Tune sees them: domains, a Tuner's ``param_space``, and grids over whole configs."""

from __future__ import annotations

from ray import tune

from scssl.search_space import Domain, SearchSpace, nested

GRID_POINT = "grid_point"


def to_tune(domain: Domain):
    if domain.kind == "uniform":
        return tune.uniform(*domain.args)
    if domain.kind == "loguniform":
        return tune.loguniform(*domain.args)
    if domain.kind == "int":
        return tune.randint(domain.args[0], domain.args[1] + 1)  # randint's upper bound is exclusive
    return tune.choice(list(domain.args))


def param_space(space: SearchSpace) -> dict:
    """Nested dict of Ray Tune domains and fixed values, the ``param_space`` of a Tuner."""
    return nested({path: to_tune(v) if isinstance(v, Domain) else v for path, v in space.entries.items()})


def grid_param_space(points: list[dict]) -> dict:
    """A Tuner ``param_space`` with one trial per point: Tune's grid over whole configs (which lets a
    resumed grid leave out its finished points); ``unwrap`` gives a trial its config back."""
    return {GRID_POINT: tune.grid_search(points)}


def unwrap(config: dict) -> dict:
    return config.get(GRID_POINT, config)
