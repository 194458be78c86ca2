"""A Google sandbox: Calendar v3 and OAuth token endpoints with Google's semantics.

It serves the tests, the `make run` demo and the bench. The service reaches it only through
configuration (CALSYNC_GOOGLE_API_URL, CALSYNC_GOOGLE_TOKEN_URL), never a special code path.
"""

from calsync_dev.sandbox.client import SandboxClient
from calsync_dev.sandbox.receiver import Notification, NotificationReceiver
from calsync_dev.sandbox.server import SandboxHTTPServer, start_in_thread

__all__ = [
    "Notification",
    "NotificationReceiver",
    "SandboxClient",
    "SandboxHTTPServer",
    "start_in_thread",
]
