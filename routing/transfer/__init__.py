"""Call transfer on a bridged call: REFER (RFC 3515) received by the B2BUA, which then acts for the other
party as RFC 5589's transferee — blind (§6, :mod:`~routing.transfer.blind`) or attended (§7, Refer-To with
``Replaces``, RFC 3891, :mod:`~routing.transfer.attended`). :mod:`~routing.transfer.refer` holds the pure
protocol, :mod:`~routing.transfer.transfers` the bridge's hook that runs them.
"""

from .refer import (
    ALLOW,
    SIPFRAG,
    SUBSCRIPTION_SECONDS,
    AttendedTarget,
    ReferRefused,
    ReferTarget,
    Replaces,
    parse_refer,
    parse_replaces,
    sipfrag,
)
from .transfers import Transfers

__all__ = [
    "ALLOW",
    "SIPFRAG",
    "SUBSCRIPTION_SECONDS",
    "AttendedTarget",
    "ReferRefused",
    "ReferTarget",
    "Replaces",
    "Transfers",
    "parse_refer",
    "parse_replaces",
    "sipfrag",
]
