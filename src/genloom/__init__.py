"""genloom: a self-hosted job engine for AI media generation.

The public face: the lifecycle vocabulary, the error tree and the extension point
for registering job types. Everything else is reached through its own module.
"""

from genloom.errors import GenloomError
from genloom.lifecycle import EventType, Status

__all__ = ["EventType", "GenloomError", "Status", "__version__"]
__version__ = "0.1.0"
