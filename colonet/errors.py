"""Errors that say who broke the rules and what to do about it.

Each error carries the exit code the CLI uses for it, so a script driving
colonet can tell bad input from a missing privilege from a dead peer.
"""


class ColonetError(Exception):
    """Base of every error colonet reports to a person."""

    exit_code = 1


class UsageError(ColonetError):
    """The caller asked for something that cannot be done as asked."""

    exit_code = 2


class UnknownNetdevError(UsageError):
    """A netdev named on the command line or in a request does not exist."""


class NetdevBusyError(UsageError):
    """Another live colonet already buffers this netdev."""


class PrivilegeError(ColonetError):
    """The process lacks a capability the operation needs."""

    exit_code = 3


class ControlSocketError(ColonetError):
    """The control socket cannot be created, reached or understood."""

    exit_code = 4


class RemoteRequestError(UsageError):
    """A control client sent a request that is malformed or not allowed."""


class KernelSetupError(ColonetError):
    """Installing or removing kernel state (rules, queues, links) failed."""

    exit_code = 5


class SteeringLostError(ColonetError):
    """Something outside colonet removed a filter's kernel steering while it
    ran: the filter releases nothing more (docs/DESIGN.md invariant 7)."""

    exit_code = 5
