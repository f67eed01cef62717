"""Type stubs for the Rust extension `model_opt._native`."""

from os import PathLike

__version__: str
PLACEMENT_METHODS: list[str]

class ModelOptError(Exception): ...
class InputError(ModelOptError): ...
class CapacityError(ModelOptError): ...

def plan_csv(
    path: str | PathLike[str],
    output: str | PathLike[str] | None = None,
    capacity: int | None = None,
    method: str = "greedy",
    time_limit: float = 5.0,
) -> dict[str, object]: ...
def validate_csv(path: str | PathLike[str], capacity: int | None = None) -> dict[str, object]: ...
