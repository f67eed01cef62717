"""Type stubs for the Rust extension `model_opt._native`."""

from os import PathLike
from typing import Optional, Union

__version__: str
PLACEMENT_METHODS: list[str]

class ModelOptError(Exception): ...
class InputError(ModelOptError): ...
class CapacityError(ModelOptError): ...

def plan_csv(
    path: Union[str, PathLike[str]],
    output: Optional[Union[str, PathLike[str]]] = None,
    capacity: Optional[int] = None,
    method: str = "greedy",
    time_limit: float = 5.0,
) -> dict[str, object]: ...
def validate_csv(path: Union[str, PathLike[str]], capacity: Optional[int] = None) -> dict[str, object]: ...
