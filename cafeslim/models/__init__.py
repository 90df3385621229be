"""Model creation: from a name (timm, torchvision or ``module:callable``) to a module and its input.

Example:
    >>> from cafeslim.models import create
    >>> info = create("timm:test_resnet")
    >>> info.model(info.example_input()).shape
    torch.Size([1, 1000])
"""

from .create import create, resolve_name
from .info import KINDS, ModelInfo
from .weights import load_weights, read_state_dict

__all__ = ["KINDS", "ModelInfo", "create", "resolve_name", "load_weights", "read_state_dict"]
